"""Front end B — ACE: a frozen scene-agnostic dense encoder (XFeat by default, or ACE's own encoder) and a per-scene
MLP head regressing 3D scene coordinates per 8×8 cell, mapped in minutes (``reloc_ros.frontends.ace.train.train``),
localized with PnP inside RANSAC (``reloc_ros.frontends.ace.frontend.AceFrontEnd``).

Modules: ``encoders`` (XFeat / ACE encoders), ``head`` (the MLP), ``buffer`` (augmented feature buffer), ``train``
(``DEFAULT_CONF``, ``train(conf, dataset, out_path)``), ``frontend`` (``AceFrontEnd.from_map(...).localize(...)``).
"""
from __future__ import annotations

from ..registry import FrontEndSpec

__all__ = ["AceFrontEnd", "DEFAULT_CONF", "SPEC"]

SPEC = FrontEndSpec("ace", "reloc_ros.frontends.ace.frontend:AceFrontEnd", "reloc_ros.frontends.ace.train",
                    summary="scene coordinates from a frozen XFeat encoder + per-scene MLP head, PnP/RANSAC",
                    support="inliers",
                    backends=("torch", "onnxruntime"))


def __getattr__(name):  # lazy, so that importing the package stays cheap
    if name == "AceFrontEnd":
        from .frontend import AceFrontEnd
        return AceFrontEnd
    if name == "DEFAULT_CONF":
        from .train import DEFAULT_CONF
        return DEFAULT_CONF
    raise AttributeError(name)

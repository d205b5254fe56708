"""Front-end interface shared by the implicit-geometry and ACE front ends, and their registry."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..geometry.camera import Camera

__all__ = ["LocalizationResult", "RefinementInfo", "FrontEnd", "FRONT_ENDS", "front_end_class"]


@dataclass
class RefinementInfo:
    """What the featuremetric refinement did to a pose."""

    ran: bool
    accepted: bool
    iterations: int = 0
    cost_initial: float = float("nan")
    cost_final: float = float("nan")
    reason: str = "ok"
    init: str = "prior"   # where the kept LM run started: "prior" (the given pose) or "matches" (match_init)


@dataclass
class LocalizationResult:
    """Outcome of localizing one image.

    T_world_cam: (4, 4) float64 camera-to-world or None when ``success`` is False. covariance: (6, 6) over
    (x, y, z, rx, ry, rz) — camera position in the world frame (m) and a left rotation about world axes (rad).
    timings_ms: per stage ("preprocess", "network", "solver", "refinement", "total").
    dense_features: raw XFeat levels of the image that the front end computed for the refinement to reuse
    (``Localizer`` sets it up and clears it after use; None otherwise).
    """

    success: bool
    T_world_cam: np.ndarray | None
    covariance: np.ndarray | None
    confidence: float
    front_end: str
    reason: str = "ok"
    inlier_count: int = 0
    inlier_ratio: float = 0.0
    weight_mass: float = 0.0
    timings_ms: dict = field(default_factory=dict)
    refinement: RefinementInfo | None = None
    dense_features: dict | None = field(default=None, repr=False)


class FrontEnd(Protocol):
    name: str

    @classmethod
    def from_map(cls, tensors: dict, metadata: dict, device: str = "cpu", **options) -> "FrontEnd": ...

    def localize(self, image: np.ndarray, camera: Camera) -> LocalizationResult: ...


# name -> "module:Class"; imported lazily so that loading one front end does not import the other.
FRONT_ENDS = {
    "implicit": "reloc_ros.frontends.implicit.frontend:ImplicitFrontEnd",
    "ace": "reloc_ros.frontends.ace.frontend:AceFrontEnd",
}


def front_end_class(name: str):
    if name not in FRONT_ENDS:
        raise ValueError(f"unknown front end {name!r}; choose one of {sorted(FRONT_ENDS)}")
    module, cls = FRONT_ENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)

"""Front end C — the classical structure-based peer (the hloc recipe, written with pycolmap): SIFT features, 3D points
triangulated from the known mapping poses, image retrieval by a bag of visual words, matching of the query to the
retrieved images' 3D-point observations, PnP inside LO-RANSAC. It learns nothing; it is in the registry so that
``reloc-map`` / ``reloc-eval`` / the benchmarks run it with the same split, gate, calibration and JSON keys as the
learned front ends ("ours / peer" side by side).

Modules: ``features`` (SIFT extraction, bag of words), ``train`` (``DEFAULT_CONF``, ``train(conf, dataset, out)``),
``frontend`` (``SiftFrontEnd.from_map(...).localize(...)``).
"""
from __future__ import annotations

from ..registry import FrontEndSpec

__all__ = ["SPEC"]

SPEC = FrontEndSpec("sift", "reloc_ros.frontends.sift.frontend:SiftFrontEnd", "reloc_ros.frontends.sift.train",
                    summary="classical peer (hloc recipe with pycolmap): SIFT, triangulated points, bag-of-words "
                            "retrieval, PnP/LO-RANSAC",
                    support="inliers")

"""The classical peer at localization time: SIFT on the query → the ``num_retrieved`` mapping images nearest by
bag of words → mutual NN-ratio matches of the query's descriptors to each retrieved image's 3D-point observations →
2D-3D correspondences → PnP inside LO-RANSAC (pycolmap, as hloc's ``localize_sfm``)."""
from __future__ import annotations

import time

import numpy as np

from ...conf import merge_conf
from ...estimators.pnp import pnp_ransac
from ...geometry.camera import Camera
from ...images import check_rgb_image
from ...map_file import MapFileError, check_metadata
from ..base import LocalizationResult
from .features import BagOfWords, SiftExtractor, descriptors_to_float, mutual_ratio_matches

__all__ = ["SiftFrontEnd", "DEFAULT_OPTIONS", "SIFT_METADATA_SCHEMA"]

DEFAULT_OPTIONS = {
    "num_retrieved": 10,       # mapping images matched per query (hloc's 7-Scenes / Cambridge recipes: 10-20)
    "ratio": 0.8,              # Lowe's ratio test on descriptor distances
    "backend": "pycolmap",     # PnP LO-RANSAC + refinement (estimators/pnp.py BACKENDS)
    "threshold_px": 12.0,      # RANSAC inlier threshold (hloc's localize_sfm default)
    "max_iterations": 10000,
    "confidence": 0.9999,
    "min_inliers": 20,         # fewer -> success False, reason "too_few_inliers"
    "num_threads": -1,         # SIFT extraction threads (-1 = all cores)
}

_TENSORS = ("points_xyz", "obs_point", "obs_image", "obs_descriptors", "vocabulary", "idf", "image_bow")
SIFT_METADATA_SCHEMA = {
    "type": "object",
    "required": ["front_end", "sift"],
    "properties": {
        "front_end": {"const": "sift"},
        "sift": {"type": "object", "required": ["max_features", "first_octave"],
                 "properties": {"max_features": {"type": "integer", "minimum": 1},
                                "first_octave": {"type": "integer", "minimum": -1}}},
        "training": {"type": "object"},
    },
}


class SiftFrontEnd:
    """Structure-based localization with SIFT and triangulated points (front end "sift", the in-repo peer)."""

    name = "sift"
    METADATA_SCHEMA = SIFT_METADATA_SCHEMA
    RUNTIME_OPTIONS = ("num_threads",)   # options that change how fast, not what is estimated

    def __init__(self, points_xyz, obs_point, obs_image, obs_descriptors, bow: BagOfWords, image_bow,
                 max_features: int, first_octave: int, **options):
        self.options = merge_conf(DEFAULT_OPTIONS, options, "sift front-end")
        self.points_xyz = np.asarray(points_xyz, dtype=np.float64)
        order = np.argsort(obs_image, kind="stable")   # observations grouped by image
        self.obs_point = np.asarray(obs_point)[order]
        self.obs_desc = descriptors_to_float(np.asarray(obs_descriptors)[order])
        self.image_start = np.searchsorted(np.asarray(obs_image)[order], np.arange(len(image_bow) + 1))
        self.bow = bow
        self.image_bow = np.asarray(image_bow, dtype=np.float32)
        self.extractor = SiftExtractor(max_features, first_octave, int(self.options["num_threads"]))

    @classmethod
    def from_map(cls, tensors: dict, metadata: dict, device: str = "cpu", **options) -> "SiftFrontEnd":
        """Build from ``load_map`` output. ``device`` must be "cpu" (COLMAP's SIFT, NumPy matching)."""
        check_metadata(metadata, SIFT_METADATA_SCHEMA, "sift map")
        missing = [k for k in _TENSORS if k not in tensors]
        if missing:
            raise MapFileError(f"the sift map lacks the tensors {missing}")
        if str(device) != "cpu":
            raise ValueError(f"the sift front end runs on the CPU only, not {device!r}")
        t = {k: tensors[k].numpy() for k in _TENSORS}
        if not (len(t["obs_point"]) == len(t["obs_image"]) == len(t["obs_descriptors"])):
            raise MapFileError("the sift map's observation tensors differ in length")
        if t["obs_point"].max(initial=-1) >= len(t["points_xyz"]) or t["obs_image"].max(initial=-1) >= len(t["image_bow"]):
            raise MapFileError("the sift map's observations refer to points or images it does not hold")
        return cls(t["points_xyz"], t["obs_point"], t["obs_image"], t["obs_descriptors"],
                   BagOfWords(t["vocabulary"], t["idf"]), t["image_bow"], metadata["sift"]["max_features"],
                   metadata["sift"]["first_octave"], **options)

    def correspondences(self, uv: np.ndarray, desc_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """2D pixels (M, 2) and 3D points (M, 3) of the query's matches to the retrieved images, and those images."""
        q = descriptors_to_float(desc_u8)
        scores = self.image_bow @ self.bow.embed(q)
        retrieved = np.argsort(-scores, kind="stable")[:int(self.options["num_retrieved"])]
        p2, p3 = [], []
        for j in retrieved:
            a, b = self.image_start[j], self.image_start[j + 1]
            qi, di = mutual_ratio_matches(q, self.obs_desc[a:b], float(self.options["ratio"]))
            p2.append(uv[qi])
            p3.append(self.points_xyz[self.obs_point[a + di]])
        return np.concatenate(p2), np.concatenate(p3), retrieved.tolist()

    def localize(self, image: np.ndarray, camera: Camera) -> LocalizationResult:
        check_rgb_image(image, camera)
        o = self.options
        t0 = time.perf_counter()
        uv, desc = self.extractor.extract(image)
        t1 = time.perf_counter()
        p2, p3, _ = self.correspondences(uv, desc)
        t2 = time.perf_counter()
        pnp = pnp_ransac(p2, p3, camera, o["threshold_px"], o["max_iterations"], o["confidence"], o["min_inliers"],
                         backend=o["backend"])
        t3 = time.perf_counter()
        timings = {"network": (t1 - t0) * 1e3, "matching": (t2 - t1) * 1e3, "solver": (t3 - t2) * 1e3}
        return LocalizationResult(pnp.success, pnp.T_world_cam, pnp.covariance, 0.0, self.name, pnp.reason,
                                  pnp.num_inliers, pnp.inlier_ratio, timings_ms=timings)

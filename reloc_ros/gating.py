"""Accept / reject of a localization: the one decision the node and ``reloc-eval`` both apply.

The node publishes a pose only when ``gate_result`` says "ok"; ``reloc-eval`` applies the same gate to every query
(``accepted``, ``gate_reason`` per query, ``accepted_rate`` and ``false_accept_rate`` overall), so offline figures
are the robot's figures. The thresholds' defaults are the node's parameter defaults (``ros/params.py`` reads
``DEFAULT_THRESHOLDS``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

__all__ = ["GateThresholds", "DEFAULT_THRESHOLDS", "gate_result", "FALSE_ACCEPT_M", "FALSE_ACCEPT_DEG",
           "is_false_accept"]

# An accepted pose off by more than this is a false accept (the gating targets' definition).
FALSE_ACCEPT_M, FALSE_ACCEPT_DEG = 0.25, 10.0


@dataclass(frozen=True)
class GateThresholds:
    """min_confidence: [0, 1]; min_inliers: RANSAC inliers (ACE); min_inlier_ratio: [0, 1] (ACE); min_weight_mass:
    Kabsch weight mass (implicit); max_position_sigma: m, sqrt(trace(cov_xyz)), 0 = off; require_refinement:
    publish only refined poses."""

    min_confidence: float = 0.5
    min_inliers: int = 30
    min_inlier_ratio: float = 0.0
    min_weight_mass: float = 0.0
    max_position_sigma: float = 0.0
    require_refinement: bool = False

    def __post_init__(self):  # ROS parameters and YAML give ints for floats and the like: cast to the annotation
        for f in fields(self):
            object.__setattr__(self, f.name, _CASTS[f.type](getattr(self, f.name)))

    def as_dict(self) -> dict:
        return asdict(self)


_CASTS = {"float": float, "int": int, "bool": bool}   # annotations are strings (from __future__ import annotations)
DEFAULT_THRESHOLDS = GateThresholds()


def gate_result(res, th: GateThresholds = DEFAULT_THRESHOLDS) -> str:
    """'ok' when a ``LocalizationResult`` passes every gate, else the reason token (as on the node's ~/status)."""
    if not res.success or res.T_world_cam is None:
        return res.reason if res.reason and res.reason != "ok" else "localization_failed"
    if res.covariance is None or not np.all(np.isfinite(res.covariance)):
        return "no_covariance"
    if not np.all(np.isfinite(res.T_world_cam)):
        return "exception"
    if th.require_refinement and not (res.refinement is not None and res.refinement.accepted):
        return "refinement_rejected"
    support = _support(res.front_end)
    if support == "inliers":
        if res.inlier_count < th.min_inliers:
            return "too_few_inliers"
        if res.inlier_ratio < th.min_inlier_ratio:
            return "low_inlier_ratio"
    if support == "weight_mass" and res.weight_mass < th.min_weight_mass:
        return "low_weight_mass"
    if res.confidence < th.min_confidence:
        return "low_confidence"
    if th.max_position_sigma > 0 and math.sqrt(max(np.trace(res.covariance[:3, :3]), 0.0)) > th.max_position_sigma:
        return "high_uncertainty"
    return "ok"


def _support(front_end: str) -> str | None:
    """The support measure the registered front end's poses are gated on (None for a refined prior)."""
    from .frontends.registry import front_end_names, front_end_spec
    return front_end_spec(front_end).support if front_end in front_end_names() else None


def is_false_accept(t_err_m: float, r_err_deg: float) -> bool:
    """An accepted pose further than FALSE_ACCEPT_M or FALSE_ACCEPT_DEG from the ground truth."""
    return not (t_err_m <= FALSE_ACCEPT_M and r_err_deg <= FALSE_ACCEPT_DEG)

"""Pose accuracy metrics: translation error (m), rotation error (deg, angle of R_gt^T R_est), recalls, medians.

The summary keys are the ``reloc-eval`` JSON contract: ``n_queries``, ``median_translation_m``,
``median_rotation_deg``, ``recall_2cm_2deg``, ``recall_5cm_5deg``, ``recall_10cm_5deg``. A failed query counts
as an infinite error (it lowers recall and can raise the median).
"""
from __future__ import annotations

import numpy as np

from .geometry.pose import rotation_angle_deg

__all__ = ["pose_error", "summarize_errors", "RECALL_THRESHOLDS"]

# key -> (metres, degrees)
RECALL_THRESHOLDS = {"recall_2cm_2deg": (0.02, 2.0), "recall_5cm_5deg": (0.05, 5.0), "recall_10cm_5deg": (0.10, 5.0)}


def pose_error(T_est: np.ndarray | None, T_gt: np.ndarray) -> tuple[float, float]:
    """(translation error of the camera centre in metres, rotation error in degrees); (inf, inf) if T_est is None."""
    if T_est is None:
        return float("inf"), float("inf")
    dt = float(np.linalg.norm(np.asarray(T_est)[:3, 3] - np.asarray(T_gt)[:3, 3]))
    return dt, rotation_angle_deg(np.asarray(T_gt)[:3, :3], np.asarray(T_est)[:3, :3])


def summarize_errors(t_err_m, r_err_deg) -> dict:
    """Medians and recalls over all queries (failures as inf). Recalls are fractions in [0, 1]."""
    t = np.asarray(t_err_m, dtype=np.float64)
    r = np.asarray(r_err_deg, dtype=np.float64)
    if t.shape != r.shape:
        raise ValueError("translation and rotation error arrays differ in length")
    out = {"n_queries": int(t.size)}
    if t.size == 0:
        out.update({"median_translation_m": float("nan"), "median_rotation_deg": float("nan"),
                    **{k: float("nan") for k in RECALL_THRESHOLDS}, "n_failed": 0})
        return out
    out["median_translation_m"] = float(np.median(t))
    out["median_rotation_deg"] = float(np.median(r))
    for key, (tm, rd) in RECALL_THRESHOLDS.items():
        out[key] = float(np.mean((t <= tm) & (r <= rd)))
    out["n_failed"] = int(np.sum(~np.isfinite(t)))
    return out

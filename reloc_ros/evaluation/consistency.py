"""Covariance consistency: normalised estimation error squared (NEES) of poses against ground truth.

The error is expressed in the pose-covariance convention of docs/architecture.md: ``T_true = [Exp(δθ)·R̂ | ĉ + δc]``,
so ``δc = c_true − ĉ`` (world frame, m) and ``δθ = Log(R_true · R̂ᵀ)`` (about the world axes, rad). A consistent
covariance puts ~95 % of the errors inside its 95 % ellipsoid (``NEES ≤ χ²₀.₉₅(dof)``).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from ..geometry.pose import so3_log

__all__ = ["pose_error_vector", "nees", "nees_inside_fraction"]


def pose_error_vector(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """(6,) error ``(δc (m), δθ (rad))`` of ``T_est`` w.r.t. ``T_gt`` in the world-frame covariance convention."""
    T_est = np.asarray(T_est, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    dc = T_gt[:3, 3] - T_est[:3, 3]
    dtheta = so3_log(T_gt[:3, :3] @ T_est[:3, :3].T)
    return np.concatenate([dc, dtheta])


def nees(error: np.ndarray, covariance: np.ndarray, position_only: bool = False) -> float:
    """``eᵀ Σ⁻¹ e`` for a (6,) error and (6, 6) covariance; ``position_only`` uses the (3, 3) position block.

    Returns inf for a singular or non-finite covariance (it claims certainty it cannot have).
    """
    e = np.asarray(error, dtype=np.float64).reshape(6)
    S = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    if position_only:
        e, S = e[:3], S[:3, :3]
    if not np.all(np.isfinite(S)):
        return float("inf")
    S = 0.5 * (S + S.T)
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        return float("inf")
    z = np.linalg.solve(L, e)
    return float(z @ z)


def nees_inside_fraction(errors, covariances, position_only: bool = False, p: float = 0.95) -> float:
    """Share of errors inside the ``p`` ellipsoid of their covariance (χ² with 6 dof, or 3 on position only).

    ``errors``: (N, 6); ``covariances``: (N, 6, 6). NaN when N = 0.
    """
    E = np.asarray(errors, dtype=np.float64).reshape(-1, 6)
    C = np.asarray(covariances, dtype=np.float64).reshape(-1, 6, 6)
    if E.shape[0] != C.shape[0]:
        raise ValueError(f"{E.shape[0]} errors but {C.shape[0]} covariances")
    if E.shape[0] == 0:
        return float("nan")
    bound = chi2.ppf(p, 3 if position_only else 6)
    values = np.array([nees(e, c, position_only) for e, c in zip(E, C)])
    return float(np.mean(values <= bound))

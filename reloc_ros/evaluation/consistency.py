"""Covariance consistency: normalised estimation error squared (NEES) of poses against ground truth.

The error is expressed in the pose-covariance convention of docs/architecture.md: ``T_true = [Exp(δθ)·R̂ | ĉ + δc]``,
so ``δc = c_true − ĉ`` (world frame, m) and ``δθ = Log(R_true · R̂ᵀ)`` (about the world axes, rad). A consistent
covariance puts ~95 % of the errors inside its 95 % ellipsoid (``NEES ≤ χ²₀.₉₅(dof)``).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from ..geometry.pose import so3_log

__all__ = ["pose_error_vector", "nees", "nees_inside_fraction", "consistency_summary"]


def pose_error_vector(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """(6,) error ``(δc (m), δθ (rad))`` of ``T_est`` w.r.t. ``T_gt`` in the world-frame covariance convention."""
    T_est = np.asarray(T_est, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    dc = T_gt[:3, 3] - T_est[:3, 3]
    dtheta = so3_log(T_gt[:3, :3] @ T_est[:3, :3].T)
    return np.concatenate([dc, dtheta])


BLOCKS = {"all": slice(0, 6), "position": slice(0, 3), "rotation": slice(3, 6)}


def nees(error: np.ndarray, covariance: np.ndarray, position_only: bool = False, block: str = "all") -> float:
    """``eᵀ Σ⁻¹ e`` for a (6,) error and (6, 6) covariance over ``block`` ("all", "position": the (3, 3) position
    block, "rotation"; ``position_only`` = "position").

    Returns inf for a singular or non-finite covariance (it claims certainty it cannot have).
    """
    sl = BLOCKS["position" if position_only else block]
    e = np.asarray(error, dtype=np.float64).reshape(6)[sl]
    S = np.asarray(covariance, dtype=np.float64).reshape(6, 6)[sl, sl]
    if not np.all(np.isfinite(S)):
        return float("inf")
    S = 0.5 * (S + S.T)
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        return float("inf")
    z = np.linalg.solve(L, e)
    return float(z @ z)


def nees_inside_fraction(errors, covariances, position_only: bool = False, p: float = 0.95, block: str = "all"
                         ) -> float:
    """Share of errors inside the ``p`` ellipsoid of their covariance (χ² with 6 dof, or 3 on one block).

    ``errors``: (N, 6); ``covariances``: (N, 6, 6). NaN when N = 0.
    """
    E = np.asarray(errors, dtype=np.float64).reshape(-1, 6)
    C = np.asarray(covariances, dtype=np.float64).reshape(-1, 6, 6)
    if E.shape[0] != C.shape[0]:
        raise ValueError(f"{E.shape[0]} errors but {C.shape[0]} covariances")
    if E.shape[0] == 0:
        return float("nan")
    block = "position" if position_only else block
    bound = chi2.ppf(p, 6 if block == "all" else 3)
    values = np.array([nees(e, c, block=block) for e, c in zip(E, C)])
    return float(np.mean(values <= bound))


def consistency_summary(errors, covariances, block_size: int = 100) -> dict:
    """The covariance-consistency figures of (N, 6) errors and (N, 6, 6) covariances in query order:
    ``nees_inside_95`` (6 dof), ``nees_position_inside_95``, ``nees_rotation_inside_95``, ``nees_mean`` (mean of
    eᵀΣ⁻¹e, 6 dof: 6 when calibrated), ``nees_position_mean`` / ``nees_rotation_mean`` (3 when calibrated),
    ``nees_inside_95_block_min`` (the worst ``block_size``-query block) and ``nees_values`` (6 dof, per query)."""
    E = np.asarray(errors, dtype=np.float64).reshape(-1, 6)
    C = np.asarray(covariances, dtype=np.float64).reshape(-1, 6, 6)
    if len(E) == 0:
        return {k: float("nan") for k in ("nees_inside_95", "nees_position_inside_95", "nees_rotation_inside_95",
                                          "nees_mean", "nees_position_mean", "nees_rotation_mean",
                                          "nees_inside_95_block_min")} | {"nees_values": []}
    out = {}
    for block, dof in (("all", 6), ("position", 3), ("rotation", 3)):
        v = np.array([nees(e, c, block=block) for e, c in zip(E, C)])
        key = "" if block == "all" else f"_{block}"
        out[f"nees{key}_inside_95"] = float(np.mean(v <= chi2.ppf(0.95, dof)))
        out[f"nees{key}_mean"] = float(np.mean(v)) if np.all(np.isfinite(v)) else float("inf")
        if block == "all":
            out["nees_values"] = [float(x) for x in v]
            inside = v <= chi2.ppf(0.95, 6)
            # blocks of block_size queries; a last block under half that size is too small to judge alone
            shares = [inside[i:i + block_size].mean() for i in range(0, len(v), block_size)
                      if len(inside[i:i + block_size]) >= block_size // 2]
            out["nees_inside_95_block_min"] = float(min(shares)) if shares else float(inside.mean())
    return out

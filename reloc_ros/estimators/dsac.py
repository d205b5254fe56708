"""DSAC*-style RANSAC for PnP on dense scene-coordinate predictions (test-time half of DSAC*, Brachmann & Rother,
TPAMI 2021, as in ACE's ``dsacstar`` module).

1. Hypotheses: minimal sets of 4 correspondences drawn at random; P3P (poselib's Lambda Twist) on the first 3, the
   4th picks among the up-to-4 solutions; a set whose 4 points do not all reproject within ``threshold_px`` (in front
   of the camera, depth ≥ ``min_depth``) is rejected and redrawn, until ``num_hypotheses`` are accepted or
   ``max_tries`` sets were drawn.
2. Scoring, vectorised over hypotheses × points: soft inlier count ``Σ_i sigmoid(β (τ − r_i))`` with ``r_i`` the
   reprojection error (px) capped at ``max_reproj_px`` (points closer than ``min_depth`` or behind the camera get the
   cap), τ = ``threshold_px`` and β = ``beta`` (DSAC*: 5 / τ). The best-scoring hypothesis wins (DSAC* at test time
   takes the argmax; the softmax of training is irrelevant there).
3. Refinement (DSAC*'s ``refineHyp``): up to ``refine_rounds`` times, take the hard inliers (r < τ), re-solve the pose
   on them with OpenCV's iterative PnP (Levenberg–Marquardt from the current pose) and recompute the errors; stop
   when the inlier count no longer grows (DSAC*'s criterion; the pose of the last fit is kept).

Inputs are undistorted pixels of a pinhole camera ``K`` and world points (m); ``pnp.pnp_ransac(backend="dsac")``
wraps this into a ``PnPResult`` with the covariance the other backends get.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..geometry.pose import invert_T, make_T, project_to_so3

__all__ = ["DSAC_DEFAULTS", "dsac_pnp", "soft_inlier_score", "reprojection_errors", "sample_hypotheses"]

DSAC_DEFAULTS = {
    "num_hypotheses": 64,     # accepted minimal-set hypotheses (DSAC* / ACE test time: 64)
    "beta": None,             # sigmoid sharpness (1/px) of the soft inlier count; None = 5 / threshold_px (DSAC*)
    "max_reproj_px": 100.0,   # reprojection errors are capped at this (px) (ACE: 100)
    "min_depth": 0.1,         # points closer than this (m, camera z) count as outliers at the cap (ACE: 0.1)
    "refine_rounds": 100,     # max inlier → PnP → re-classify rounds (DSAC*: MAX_REF_STEPS = 100)
    "max_tries": 10000,       # minimal sets drawn at most (DSAC* redraws up to 10⁶ times; bounded here for latency)
    "seed": None,             # RNG seed (int) for the minimal sets; None = fresh randomness on every call
}


def soft_inlier_score(errors_px, threshold_px: float, beta: float) -> np.ndarray:
    """Soft inlier count over the last axis: ``Σ sigmoid(β (τ − r))`` (r = 0 → ≈1, r = τ → 0.5, r ≫ τ → 0)."""
    r = np.asarray(errors_px)
    r = r if r.dtype in (np.float32, np.float64) else r.astype(np.float64)
    # sigmoid(z) = 0.5 (1 + tanh(z / 2)): overflow-free for any z; accumulated in float64
    s = np.tanh((0.5 * beta) * (threshold_px - r))
    return 0.5 * (s.shape[-1] + s.sum(axis=-1, dtype=np.float64))


def reprojection_errors(R_cw: np.ndarray, t_cw: np.ndarray, K: np.ndarray, uv: np.ndarray, X: np.ndarray,
                        max_reproj_px: float, min_depth: float, dtype=np.float64) -> np.ndarray:
    """Capped reprojection errors (px) for hypotheses ``R_cw`` (H, 3, 3), ``t_cw`` (H, 3) (world → camera) and
    correspondences ``uv`` (N, 2), ``X`` (N, 3): (H, N) of ``dtype``. Depth < ``min_depth`` → ``max_reproj_px``."""
    H = len(R_cw)
    # one BLAS call for all hypotheses: (3H, 3) @ (3, N), row i·H + h = camera coordinate i under hypothesis h
    P = np.asarray(R_cw, dtype).transpose(1, 0, 2).reshape(3 * H, 3) @ np.asarray(X, dtype).T
    P += np.asarray(t_cw, dtype).T.reshape(3 * H, 1)
    x, y, z = P[:H], P[H:2 * H], P[2 * H:]
    behind = z < min_depth
    inv_z = 1.0 / np.where(behind, 1.0, z)
    du = x * inv_z
    du *= K[0, 0]
    du += (K[0, 2] - uv[:, 0]).astype(dtype)
    dv = y * inv_z
    dv *= K[1, 1]
    dv += (K[1, 2] - uv[:, 1]).astype(dtype)
    du *= du
    dv *= dv
    du += dv
    err = np.sqrt(du, out=du)
    np.minimum(err, max_reproj_px, out=err)
    err[behind] = max_reproj_px
    return err


def _bearings(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    b = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], -1)
    return b / np.linalg.norm(b, axis=1, keepdims=True)


def sample_hypotheses(uv: np.ndarray, X: np.ndarray, K: np.ndarray, threshold_px: float, num_hypotheses: int,
                      max_tries: int, min_depth: float, rng: np.random.Generator, batch: int = 256):
    """Draw minimal sets of 4 distinct correspondences, P3P on 3, keep the solution that best reprojects the 4th,
    accept if all 4 reproject within ``threshold_px`` at depth ≥ ``min_depth``.

    Returns (R_cw (H, 3, 3), t_cw (H, 3), sets (H, 4) indices, tries), H ≤ ``num_hypotheses``.
    """
    import poselib

    n = len(uv)
    bear = _bearings(uv, K)
    Rs, ts, sets = [], [], []
    tries = 0
    while len(sets) < num_hypotheses and tries < max_tries:
        m = min(batch, max_tries - tries)
        idx = rng.integers(0, n, size=(m, 4))
        tries += m
        s = np.sort(idx, axis=1)
        idx = idx[np.all(s[:, 1:] != s[:, :-1], axis=1)]  # 4 distinct points
        B3, X3 = bear[idx[:, :3]], X[idx[:, :3]]
        cand, owner = [], []
        for j in range(len(idx)):
            for pose in poselib.p3p(B3[j], X3[j]):
                cand.append(pose.Rt)
                owner.append(j)
        if not owner:
            continue
        cand, owner = np.asarray(cand), np.asarray(owner)
        cR, ct = cand[:, :, :3], cand[:, :, 3]
        q4 = idx[owner]                                           # (C, 4)
        Xc = np.matmul(X[q4], cR.transpose(0, 2, 1)) + ct[:, None]  # (C, 4, 3) camera-frame points
        z = Xc[..., 2]
        zs = np.where(z < min_depth, 1.0, z)
        proj = np.stack([K[0, 0] * Xc[..., 0] / zs + K[0, 2], K[1, 1] * Xc[..., 1] / zs + K[1, 2]], -1)
        err = np.linalg.norm(proj - uv[q4], axis=-1)
        err = np.where(z < min_depth, np.inf, err)
        # per minimal set: the solution with the smallest error on the 4th point (ties: first)
        order = np.lexsort((np.arange(len(owner)), err[:, 3], owner))
        first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        ok = first[np.all(err[first] < threshold_px, axis=1)]
        ok = ok[np.argsort(owner[ok])]  # keep the draw order (determinism)
        for c in ok[: num_hypotheses - len(sets)]:
            Rs.append(cR[c])
            ts.append(ct[c])
            sets.append(q4[c])
    if not sets:
        return np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros((0, 4), int), tries
    return np.asarray(Rs), np.asarray(ts), np.asarray(sets), tries


def dsac_pnp(uv: np.ndarray, X: np.ndarray, K: np.ndarray, threshold_px: float, refine: bool = True,
             num_hypotheses: int = 64, beta: float | None = None, max_reproj_px: float = 100.0,
             min_depth: float = 0.1, refine_rounds: int = 100, max_tries: int = 10000, seed: int | None = None):
    """DSAC*-style robust PnP (see the module docstring).

    uv: (N, 2) undistorted pixels of the pinhole camera ``K``; X: (N, 3) world points (m). threshold_px: τ, the
    inlier threshold (px) of the soft count and of the refinement. refine: False skips step 3.
    Returns (T_world_cam (4, 4) or None when no hypothesis was accepted, inlier mask (N,), info dict).
    """
    if not (num_hypotheses >= 1 and refine_rounds >= 0 and max_tries >= 1 and max_reproj_px > threshold_px
            and min_depth >= 0):
        raise ValueError(f"bad DSAC options: num_hypotheses={num_hypotheses}, refine_rounds={refine_rounds}, "
                         f"max_tries={max_tries}, max_reproj_px={max_reproj_px} (must exceed threshold_px="
                         f"{threshold_px}), min_depth={min_depth}")
    beta = 5.0 / threshold_px if beta is None else float(beta)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rng = np.random.default_rng(seed)
    R, t, sets, tries = sample_hypotheses(uv, X, K, threshold_px, int(num_hypotheses), int(max_tries), min_depth,
                                          rng)
    info = {"hypotheses": int(len(sets)), "tries": int(tries), "refine_rounds": 0}
    if len(sets) == 0:
        return None, np.zeros(len(uv), bool), info
    # scoring in float32 (errors ≤ max_reproj_px; 1e-4 px precision is plenty), ~3× faster than float64 here
    err = reprojection_errors(R, t, K, uv, X, max_reproj_px, min_depth, np.float32)
    scores = soft_inlier_score(err, threshold_px, beta)
    best = int(np.argmax(scores))
    info["soft_inliers"] = float(scores[best])
    R_cw, t_cw = R[best], t[best]
    e = reprojection_errors(R_cw[None], t_cw[None], K, uv, X, max_reproj_px, min_depth)[0]
    if refine:
        rvec, tvec = cv2.Rodrigues(R_cw)[0], t_cw.reshape(3, 1).copy()
        prev = 4
        for _ in range(int(refine_rounds)):
            inl = e < threshold_px
            k = int(inl.sum())
            if k <= prev:  # converged (DSAC*'s refineHyp: refine as long as the inlier count grows, from 4)
                break
            prev = k
            ok, rv, tv = cv2.solvePnP(X[inl], uv[inl], K, None, rvec.copy(), tvec.copy(), useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
            if not ok or not (np.all(np.isfinite(rv)) and np.all(np.isfinite(tv))):
                break
            rvec, tvec = rv, tv
            R_cw, t_cw = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
            e = reprojection_errors(R_cw[None], t_cw[None], K, uv, X, max_reproj_px, min_depth)[0]
            info["refine_rounds"] += 1
    T = invert_T(make_T(project_to_so3(R_cw), t_cw))
    return T, e < threshold_px, info

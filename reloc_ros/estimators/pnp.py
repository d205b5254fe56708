"""PnP inside RANSAC over poselib / pycolmap / OpenCV, with a pose covariance from the reprojection Jacobian.

Inputs are 2D pixels of the (possibly distorted) image and 3D world points (metres). Distorted pixels are first
mapped to the ideal pinhole camera with the same ``K`` (``Camera.undistort_points``), so every backend solves the
same undistorted pinhole problem and ``threshold_px`` is measured in undistorted pixels (≈ distorted pixels for
moderate lens distortion).

Covariance (see ``pose_covariance``): with the inlier residuals ``r`` (2 per point, pixels) and their Jacobian ``J``
(2N × 6) with respect to a right (camera-frame) perturbation ``T_world_cam·Exp(ρ, φ)`` (``geometry.pose.se3_exp_right``),
the sandwich ``Σ_right = H⁻¹ (Σᵢ Jᵢᵀrᵢ rᵢᵀJᵢ) H⁻¹``, ``H = JᵀJ`` (``uncertainty.sandwich_covariance``, per point i); it is converted to the world convention of
docs/architecture.md (position in the world frame, left rotation about world axes) by
``geometry.pose.covariance_right_to_world``. It assumes independent, isotropic pixel noise at the inliers, so it
describes the precision of the estimate given the correspondences, not the risk that the inliers are wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..conf import merge_conf
from ..geometry.camera import Camera
from ..geometry.pose import covariance_right_to_world, invert_T, make_T, project_to_so3
from ..uncertainty import sandwich_covariance
from .dsac import DSAC_DEFAULTS, dsac_pnp

__all__ = ["PnPResult", "pnp_ransac", "pose_covariance", "reprojection_residuals", "BACKENDS"]

BACKENDS = ("poselib", "pycolmap", "opencv", "dsac")
OPENCV_DEFAULTS = {"local_optimization": True}


@dataclass
class PnPResult:
    """Outcome of ``pnp_ransac``.

    T_world_cam: (4, 4) float64 camera-to-world (None on failure). inlier_mask: (N,) bool over the input points.
    covariance: (6, 6) over (x, y, z, rx, ry, rz), world convention (m², rad²), None on failure.
    reprojection_rmse_px: RMS of the 2D inlier residuals (undistorted pixels). reason: "ok" or a short token
    ("too_few_points", "ransac_failed", "too_few_inliers").
    """

    success: bool
    T_world_cam: np.ndarray | None
    inlier_mask: np.ndarray
    num_inliers: int = 0
    inlier_ratio: float = 0.0
    covariance: np.ndarray | None = None
    reprojection_rmse_px: float = float("nan")
    reason: str = "ok"
    extra: dict = field(default_factory=dict)


def _check_inputs(points2d, points3d) -> tuple[np.ndarray, np.ndarray]:
    p2 = np.asarray(points2d, dtype=np.float64)
    p3 = np.asarray(points3d, dtype=np.float64)
    if p2.ndim != 2 or p2.shape[1] != 2:
        raise ValueError(f"points2d must have shape (N, 2), got {p2.shape}")
    if p3.ndim != 2 or p3.shape[1] != 3:
        raise ValueError(f"points3d must have shape (N, 3), got {p3.shape}")
    if len(p2) != len(p3):
        raise ValueError(f"points2d and points3d differ in length: {len(p2)} vs {len(p3)}")
    if not (np.all(np.isfinite(p2)) and np.all(np.isfinite(p3))):
        raise ValueError("points2d / points3d contain NaN or inf (filter invalid correspondences first)")
    return np.ascontiguousarray(p2), np.ascontiguousarray(p3)


def reprojection_residuals(T_world_cam: np.ndarray, K: np.ndarray, uv: np.ndarray, X: np.ndarray):
    """Undistorted-pixel residuals ``π(K·X_cam) − uv`` (N, 2) and camera-frame points (N, 3)."""
    T_cw = invert_T(T_world_cam)
    Xc = X @ T_cw[:3, :3].T + T_cw[:3, 3]
    z = np.where(np.abs(Xc[:, 2]) < 1e-9, 1e-9, Xc[:, 2])
    proj = np.stack([K[0, 0] * Xc[:, 0] / z + K[0, 2], K[1, 1] * Xc[:, 1] / z + K[1, 2]], -1)
    return proj - uv, Xc


def pose_covariance(T_world_cam: np.ndarray, K: np.ndarray, uv: np.ndarray, X: np.ndarray) -> np.ndarray | None:
    """6×6 world-convention covariance of ``T_world_cam`` from inlier correspondences (undistorted pixels).

    Right perturbation ``R' = R·Exp(φ)``, ``c' = c + R·ρ`` gives ``X_cam' ≈ X_cam − ρ + [X_cam]ₓ φ``; chained with the
    pinhole projection Jacobian this is ``J`` (2N × 6, columns ρ then φ). ``Σ = H⁻¹(Σᵢ Jᵢᵀrᵢ rᵢᵀJᵢ)H⁻¹`` (sandwich,
    ``uncertainty.sandwich_covariance``), then ``covariance_right_to_world``. Returns None with fewer than 4 points or a singular ``JᵀJ``.
    """
    n = len(uv)
    if n < 4:
        return None
    r, Xc = reprojection_residuals(T_world_cam, K, uv, X)
    x, y, z = Xc[:, 0], Xc[:, 1], Xc[:, 2]
    fx, fy = K[0, 0], K[1, 1]
    Jp = np.zeros((n, 2, 3))
    Jp[:, 0, 0] = fx / z
    Jp[:, 0, 2] = -fx * x / z ** 2
    Jp[:, 1, 1] = fy / z
    Jp[:, 1, 2] = -fy * y / z ** 2
    S = np.zeros((n, 3, 3))  # [X_cam]_x
    S[:, 0, 1], S[:, 0, 2] = -z, y
    S[:, 1, 0], S[:, 1, 2] = z, -x
    S[:, 2, 0], S[:, 2, 1] = -y, x
    J = np.concatenate([-Jp, Jp @ S], axis=2)                      # (N, 2, 6)
    scores = np.einsum("nki,nk->ni", J, r)                          # Jᵢᵀ rᵢ per point
    cov_right = sandwich_covariance(np.einsum("nki,nkj->ij", J, J), scores.T @ scores, n)
    if cov_right is None:
        return None
    cov = covariance_right_to_world(T_world_cam, cov_right)
    return 0.5 * (cov + cov.T)


def _T_from_Rt_cw(R_cw: np.ndarray, t_cw: np.ndarray) -> np.ndarray:
    return invert_T(make_T(project_to_so3(R_cw), t_cw))


def _solve_poselib(uv, X, K, w, h, thr, max_it, conf, refine):
    import poselib

    cam = {"model": "PINHOLE", "width": int(w), "height": int(h), "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}
    ransac = {"max_reproj_error": float(thr), "max_iterations": int(max_it), "min_iterations": min(100, int(max_it)),
              "success_prob": float(conf)}
    bundle = {"max_iterations": 100 if refine else 0, "loss_type": "TRUNCATED", "loss_scale": float(thr)}
    pose, info = poselib.estimate_absolute_pose(uv, X, cam, ransac, bundle)
    mask = np.asarray(info.get("inliers", []), dtype=bool)
    if mask.size != len(uv) or not np.all(np.isfinite(pose.t)):
        return None, np.zeros(len(uv), bool)
    return _T_from_Rt_cw(np.asarray(pose.R), np.asarray(pose.t)), mask


def _solve_pycolmap(uv, X, K, w, h, thr, max_it, conf, refine):
    import pycolmap

    # COLMAP's pixel grid starts at the corner of the top-left pixel: shift the principal point by +0.5 px.
    cam = pycolmap.Camera(model="PINHOLE", width=int(w), height=int(h),
                          params=[K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = float(thr)
    est.ransac.max_num_trials = int(max_it)
    est.ransac.min_num_trials = min(100, int(max_it))
    est.ransac.confidence = float(conf)
    ref = pycolmap.AbsolutePoseRefinementOptions()
    if not refine:
        ref.max_num_iterations = 0
    out = pycolmap.estimate_and_refine_absolute_pose(uv + 0.5, X, cam, est, ref)
    if out is None:
        return None, np.zeros(len(uv), bool)
    cfw = out["cam_from_world"]
    M = np.asarray(cfw.matrix())
    return _T_from_Rt_cw(M[:, :3], M[:, 3]), np.asarray(out["inlier_mask"], dtype=bool)


def _solve_opencv(uv, X, K, w, h, thr, max_it, conf, refine, local_optimization):
    # OpenCV's USAC_FAST preset: interleaved on 100 7-Scenes queries (4800 ACE cells each) 20.9 ms p50 vs 30.7 ms
    # for the MSAC + inner-LO configuration used before, same accuracy (benchmarks/RESULTS.md).
    # local_optimization=False: USAC without local optimisation (MSAC score; the LM on the inliers below still
    # polishes the pose), about half the time of USAC_FAST on 2400 ACE cells (benchmarks/RESULTS_refinement.md).
    try:
        if local_optimization:
            ok, rvec, tvec, inl = cv2.solvePnPRansac(X[:, None], uv[:, None], K.copy(), None, flags=cv2.USAC_FAST,
                                                     reprojectionError=float(thr), confidence=float(conf),
                                                     iterationsCount=int(max_it))
        else:
            p = cv2.UsacParams()
            p.threshold, p.confidence, p.maxIterations = float(thr), float(conf), int(max_it)
            p.loMethod = cv2.LOCAL_OPTIM_NULL
            ok, _, rvec, tvec, inl = cv2.solvePnPRansac(X[:, None], uv[:, None], K.copy(), None, params=p)
    except cv2.error:
        return None, np.zeros(len(uv), bool)
    mask = np.zeros(len(uv), bool)
    if not ok or inl is None or len(inl) < 4:
        return None, mask
    mask[np.asarray(inl).reshape(-1)] = True
    if refine:
        rvec, tvec = cv2.solvePnPRefineLM(X[mask][:, None], uv[mask][:, None], K, None, rvec, tvec)
        # re-classify inliers with the refined pose
        T = _T_from_Rt_cw(cv2.Rodrigues(rvec)[0], tvec.reshape(3))
        r, Xc = reprojection_residuals(T, K, uv, X)
        mask = (np.linalg.norm(r, axis=1) < thr) & (Xc[:, 2] > 0)
        return T, mask
    return _T_from_Rt_cw(cv2.Rodrigues(rvec)[0], tvec.reshape(3)), mask


_SOLVERS = {"poselib": _solve_poselib, "pycolmap": _solve_pycolmap, "opencv": _solve_opencv}


def pnp_ransac(points2d, points3d, camera: Camera, threshold_px: float = 10.0, max_iterations: int = 10000,
               confidence: float = 0.9999, min_inliers: int = 20, backend: str = "poselib",
               refine: bool = True, backend_options: dict | None = None) -> PnPResult:
    """Robust camera pose from 2D–3D correspondences.

    points2d: (N, 2) pixels of the (possibly distorted) image of ``camera``. points3d: (N, 3) world points (m).
    threshold_px: RANSAC inlier threshold (undistorted pixels). min_inliers: fewer inliers → ``success=False``,
    reason "too_few_inliers" (the pose is still returned in ``extra["T_world_cam"]`` for diagnostics).
    backend: "poselib" (LO-RANSAC + bundle), "pycolmap" (LO-RANSAC + refinement), "opencv" (USAC + LM), "dsac"
    (DSAC*-style: soft inlier count over a fixed number of hypotheses + iterative refinement, ``estimators/dsac.py``;
    it ignores ``max_iterations`` / ``confidence``). backend_options: options of the "dsac" backend (keys of
    ``dsac.DSAC_DEFAULTS``: num_hypotheses, beta, max_reproj_px, min_depth, refine_rounds, max_tries, seed) or of
    the "opencv" backend (``OPENCV_DEFAULTS``: local_optimization, False = USAC without local optimisation); the
    other backends take none. The dsac backend's diagnostics (hypotheses, tries, soft_inliers, refine_rounds) are in
    ``extra``.
    Returns a ``PnPResult`` (camera-to-world pose, inlier mask, covariance in the world convention).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown PnP backend {backend!r}; choose one of {BACKENDS}")
    if not (threshold_px > 0 and max_iterations >= 1 and 0 < confidence < 1):
        raise ValueError(f"bad RANSAC options: threshold_px={threshold_px}, max_iterations={max_iterations}, "
                         f"confidence={confidence}")
    backend_options = dict(backend_options or {})
    known = {"dsac": DSAC_DEFAULTS, "opencv": OPENCV_DEFAULTS}.get(backend, {})
    if backend_options and not known:
        raise ValueError(f"backend {backend!r} takes no backend_options (got {sorted(backend_options)})")
    options = merge_conf(known, backend_options, backend)
    uv, X = _check_inputs(points2d, points3d)
    n = len(uv)
    empty = np.zeros(n, dtype=bool)
    if n < max(4, min_inliers):
        return PnPResult(False, None, empty, reason="too_few_points")
    if camera.is_distorted:
        uv = camera.undistort_points(uv)
    K = camera.K
    info = {}
    if backend == "dsac":
        T, mask, info = dsac_pnp(uv, X, K, threshold_px, refine, **options)
    else:
        T, mask = _SOLVERS[backend](uv, X, K, camera.width, camera.height, threshold_px, max_iterations, confidence,
                                    refine, **options)
    if T is None or not np.all(np.isfinite(T)):
        return PnPResult(False, None, empty, reason="ransac_failed", extra=info)
    k = int(mask.sum())
    r, _ = reprojection_residuals(T, K, uv[mask], X[mask])
    rmse = float(np.sqrt((r ** 2).sum(1).mean())) if k else float("nan")
    if k < min_inliers:
        return PnPResult(False, None, mask, k, k / n, None, rmse, "too_few_inliers", {"T_world_cam": T, **info})
    cov = pose_covariance(T, K, uv[mask], X[mask])
    return PnPResult(True, T, mask, k, k / n, cov, rmse, "ok", info)

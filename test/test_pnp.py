"""PnP + RANSAC wrapper: known poses with outliers (each backend), distortion, covariance vs empirical scatter,
failures and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from reloc_ros.estimators.pnp import BACKENDS, pnp_ransac
from reloc_ros.geometry.camera import Camera
from reloc_ros.geometry.pose import invert_T, make_T, rotation_angle_deg, so3_exp, so3_log, transform_points

CAM = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480)


def _scene(rng, n, camera=CAM, outlier_frac=0.5, noise_px=0.5):
    """A random camera pose, n world points in view; returns (T_world_cam, uv, X, is_inlier)."""
    T = make_T(so3_exp(rng.normal(size=3) * 0.5), rng.normal(size=3))
    uv_true = np.stack([rng.uniform(0, camera.width - 1, n), rng.uniform(0, camera.height - 1, n)], -1)
    depth = rng.uniform(1.0, 4.0, n)
    Xc = camera.backproject(uv_true, depth)
    X = transform_points(T, Xc)
    uv = uv_true + rng.normal(scale=noise_px, size=uv_true.shape)
    is_out = rng.random(n) < outlier_frac
    uv[is_out] = np.stack([rng.uniform(0, camera.width - 1, is_out.sum()),
                           rng.uniform(0, camera.height - 1, is_out.sum())], -1)
    return T, uv, X, ~is_out


def _err(T_a, T_b):
    return np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]), rotation_angle_deg(T_a[:3, :3], T_b[:3, :3])


@pytest.mark.parametrize("backend, options", [(b, None) for b in BACKENDS] +
                         [("opencv", {"local_optimization": False})])
def test_recovers_pose_with_half_outliers(backend, options):
    rng = np.random.default_rng(0)
    T, uv, X, inl = _scene(rng, 600)
    res = pnp_ransac(uv, X, CAM, threshold_px=4.0, backend=backend, backend_options=options)
    assert res.success and res.reason == "ok"
    dt, dr = _err(res.T_world_cam, T)
    assert dt < 0.02 and dr < 0.3
    # inliers found ≈ true inliers (a few outliers fall within the threshold by chance)
    assert (res.inlier_mask & inl).sum() >= 0.95 * inl.sum()
    assert (res.inlier_mask & ~inl).sum() <= 0.05 * (~inl).sum()
    assert 0.4 < res.inlier_ratio < 0.6 and res.num_inliers == res.inlier_mask.sum()
    assert 0.3 < res.reprojection_rmse_px < 1.2
    assert res.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(res.covariance) > 0)


def test_distorted_camera():
    cam = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480, dist=[-0.25, 0.08, 0.001, -0.001, 0.0])
    rng = np.random.default_rng(1)
    T = make_T(so3_exp([0.1, -0.2, 0.05]), [0.3, -0.1, 0.2])
    uv = np.stack([rng.uniform(20, 620, 400), rng.uniform(20, 460, 400)], -1)
    X = transform_points(T, cam.backproject(uv, rng.uniform(1, 3, 400)))  # uv are distorted pixels
    res = pnp_ransac(uv, X, cam, threshold_px=2.0)
    assert res.success
    dt, dr = _err(res.T_world_cam, T)
    assert dt < 1e-4 and dr < 1e-3
    # ignoring the distortion gives a visibly worse pose
    res_pin = pnp_ransac(uv, X, Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480), threshold_px=50.0)
    assert _err(res_pin.T_world_cam, T)[0] > 100 * dt


def test_covariance_matches_empirical_scatter():
    """Σ from the reprojection Jacobian vs the scatter of poses over pixel-noise draws (world convention)."""
    rng = np.random.default_rng(2)
    T, _, X, _ = _scene(rng, 150, outlier_frac=0.0, noise_px=0.0)
    uv0, _ = CAM.project(transform_points(invert_T(T), X))
    errs, covs = [], []
    for _ in range(150):
        uv = uv0 + rng.normal(scale=1.0, size=uv0.shape)
        res = pnp_ransac(uv, X, CAM, threshold_px=6.0, backend="poselib")
        assert res.success
        dc = res.T_world_cam[:3, 3] - T[:3, 3]
        dth = so3_log(res.T_world_cam[:3, :3] @ T[:3, :3].T)  # left rotation about world axes
        errs.append(np.r_[dc, dth])
        covs.append(res.covariance)
    emp = np.cov(np.array(errs).T)
    pred = np.mean(covs, axis=0)
    ratio = np.diag(pred) / np.diag(emp)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    # correlations too: the whitened empirical covariance is close to identity
    L = np.linalg.cholesky(pred)
    W = np.linalg.solve(L, np.linalg.solve(L, emp).T)
    assert np.all(np.abs(np.linalg.eigvalsh(W) - 1) < 0.6), np.linalg.eigvalsh(W)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_points_and_inliers(backend):
    rng = np.random.default_rng(3)
    T, uv, X, _ = _scene(rng, 10, outlier_frac=0.0)
    res = pnp_ransac(uv, X, CAM, min_inliers=20, backend=backend)
    assert not res.success and res.reason == "too_few_points" and res.T_world_cam is None
    # 300 pure outliers + 12 inliers: never 50 inliers
    T, uv, X, _ = _scene(rng, 300, outlier_frac=1.0)
    uv[:12], _ = CAM.project(transform_points(invert_T(T), X[:12]))
    res = pnp_ransac(uv, X, CAM, threshold_px=2.0, min_inliers=50, backend=backend)
    assert not res.success and res.T_world_cam is None and res.covariance is None
    assert res.reason in ("too_few_inliers", "ransac_failed")


def test_bad_input_raises():
    X = np.zeros((10, 3))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        pnp_ransac(np.zeros((10, 3)), X, CAM)
    with pytest.raises(ValueError, match="differ in length"):
        pnp_ransac(np.zeros((9, 2)), X, CAM)
    uv = np.zeros((10, 2))
    uv[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pnp_ransac(uv, X, CAM)
    with pytest.raises(ValueError, match="unknown PnP backend"):
        pnp_ransac(np.zeros((10, 2)), X, CAM, backend="magic")

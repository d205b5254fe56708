"""DSAC*-style PnP (``estimators/dsac.py``, ``pnp_ransac(backend="dsac")``): soft inlier score on hand-made residuals,
minimal-set hypotheses, determinism with a seed, refinement, failures and bad options. The pose-with-50 %-outliers
and too-few-inliers cases run for every backend in test_pnp.py (``BACKENDS`` includes "dsac")."""
from __future__ import annotations

import numpy as np
import pytest
from test_pnp import CAM, _err, _scene

from reloc_ros.estimators.dsac import dsac_pnp, reprojection_errors, sample_hypotheses, soft_inlier_score
from reloc_ros.estimators.pnp import pnp_ransac
from reloc_ros.geometry.pose import invert_T, make_T, so3_exp, transform_points


def test_soft_inlier_score_hand_made_residuals():
    tau = 10.0
    beta = 5.0 / tau
    # r = 0 → sigmoid(5) ≈ 0.9933, r = τ → 0.5, r = 2τ → sigmoid(−5) ≈ 0.0067, r = 100 → ≈ 0
    vals = [soft_inlier_score([r], tau, beta) for r in (0.0, tau, 2 * tau, 100.0)]
    np.testing.assert_allclose(vals, [1 / (1 + np.exp(-5)), 0.5, 1 / (1 + np.exp(5)), 1 / (1 + np.exp(45))],
                               rtol=1e-9, atol=1e-15)
    # sums over the last axis, one score per hypothesis; more / closer inliers score higher
    errs = np.array([[0.5, 1.0, 2.0, 80.0, 90.0],      # 3 tight inliers
                     [9.0, 9.5, 11.0, 12.0, 100.0],    # 4 points near the threshold
                     [0.0, 0.0, 0.0, 0.0, 0.0]])       # 5 perfect
    s = soft_inlier_score(errs, tau, beta)
    assert s.shape == (3,)
    # 3 tight inliers outscore 4 borderline points (soft count ≈ 2.96 vs ≈ 1.83)
    assert s[2] > s[0] > s[1] and 2.9 < s[0] < 3.0 and 1.8 < s[1] < 1.9
    assert abs(s[2] - 5 / (1 + np.exp(-5))) < 1e-9
    # a sharper sigmoid approaches the hard count; no overflow for huge residuals
    assert abs(soft_inlier_score(errs[1], tau, 100.0) - 2.0) < 1e-6
    assert np.isfinite(soft_inlier_score([1e12, -1e12], tau, 1e6))
    # float32 residuals (the vectorised scoring path) give the float64 score
    big = np.random.default_rng(0).uniform(0, 30, (4, 10 ** 5))
    np.testing.assert_allclose(soft_inlier_score(big.astype(np.float32), tau, beta), soft_inlier_score(big, tau, beta),
                               rtol=1e-6)


def test_reprojection_errors_cap_and_min_depth():
    T_cw = make_T(so3_exp([0.1, -0.2, 0.3]), [0.2, 0.1, -0.3])
    K = CAM.K
    Xc = np.array([[0.0, 0.0, 2.0], [0.5, -0.2, 3.0], [0.1, 0.1, 0.05], [0.0, 0.0, -1.0], [3.0, 0.0, 1.0]])
    X = transform_points(invert_T(T_cw), Xc)
    uv = CAM.project(Xc)[0] + [[3.0, 4.0], [0, 0], [0, 0], [0, 0], [0, 0]]
    uv[4] = [319.5, 239.5]  # far from its projection (1819.5, 239.5)
    e = reprojection_errors(T_cw[None, :3, :3], T_cw[None, :3, 3], K, uv, X, 100.0, 0.1)
    np.testing.assert_allclose(e[0], [5.0, 0.0, 100.0, 100.0, 100.0], atol=1e-9)
    e32 = reprojection_errors(T_cw[None, :3, :3], T_cw[None, :3, 3], K, uv, X, 100.0, 0.1, np.float32)
    assert e32.dtype == np.float32 and np.allclose(e32, e, atol=1e-3)


def test_hypotheses_reproject_their_minimal_sets():
    rng = np.random.default_rng(5)
    T, uv, X, inl = _scene(rng, 400, outlier_frac=0.5)
    R, t, sets, tries = sample_hypotheses(uv, X, CAM.K, 4.0, 32, 5000, 0.1, np.random.default_rng(0))
    assert len(sets) == 32 and tries >= 32 and sets.shape == (32, 4)
    assert np.all(np.diff(np.sort(sets, 1), axis=1) > 0)  # 4 distinct points each
    e = reprojection_errors(R, t, CAM.K, uv, X, 100.0, 0.1)
    assert np.all(np.take_along_axis(e, sets, 1) < 4.0)
    # with random outliers, an accepted minimal set is (almost always) all inliers
    assert np.mean(np.all(inl[sets], axis=1)) > 0.9


def test_seed_makes_it_deterministic():
    rng = np.random.default_rng(6)
    T, uv, X, _ = _scene(rng, 500, outlier_frac=0.6)
    a = pnp_ransac(uv, X, CAM, threshold_px=4.0, backend="dsac", backend_options={"seed": 7})
    b = pnp_ransac(uv, X, CAM, threshold_px=4.0, backend="dsac", backend_options={"seed": 7})
    assert a.success and np.array_equal(a.T_world_cam, b.T_world_cam) and a.extra == b.extra
    assert np.array_equal(a.inlier_mask, b.inlier_mask)
    s1 = sample_hypotheses(uv, X, CAM.K, 4.0, 16, 5000, 0.1, np.random.default_rng(1))[2]
    s2 = sample_hypotheses(uv, X, CAM.K, 4.0, 16, 5000, 0.1, np.random.default_rng(2))[2]
    assert not np.array_equal(s1, s2)  # another seed draws other minimal sets


def test_refinement_improves_the_hypothesis():
    rng = np.random.default_rng(8)
    T, uv, X, inl = _scene(rng, 800, outlier_frac=0.5, noise_px=1.5)
    T0, m0, i0 = dsac_pnp(uv, X, CAM.K, 6.0, refine=False, seed=3)
    T1, m1, i1 = dsac_pnp(uv, X, CAM.K, 6.0, refine=True, seed=3)
    assert i0["refine_rounds"] == 0 and 1 <= i1["refine_rounds"] <= 100
    assert i0["soft_inliers"] == i1["soft_inliers"]  # same winning hypothesis
    assert _err(T1, T)[0] < _err(T0, T)[0] and _err(T1, T)[0] < 0.02
    assert (m1 & inl).sum() >= 0.95 * inl.sum() and (m1 & ~inl).sum() <= 0.05 * (~inl).sum()


def test_no_consistent_hypothesis_fails():
    rng = np.random.default_rng(9)
    _, uv, X, _ = _scene(rng, 200, outlier_frac=1.0)
    res = pnp_ransac(uv, X, CAM, threshold_px=0.5, min_inliers=20, backend="dsac",
                     backend_options={"max_tries": 300, "seed": 0})
    assert not res.success and res.T_world_cam is None and res.covariance is None
    assert res.reason in ("ransac_failed", "too_few_inliers") and res.extra["tries"] <= 300


def test_bad_options_raise():
    uv, X = np.zeros((30, 2)), np.zeros((30, 3))
    with pytest.raises(ValueError, match="unknown dsac option"):
        pnp_ransac(uv, X, CAM, backend="dsac", backend_options={"hypotheses": 64})
    with pytest.raises(ValueError, match="takes no backend_options"):
        pnp_ransac(uv, X, CAM, backend="poselib", backend_options={"seed": 1})
    with pytest.raises(ValueError, match="unknown opencv option"):
        pnp_ransac(uv, X, CAM, backend="opencv", backend_options={"seed": 1})
    with pytest.raises(ValueError, match="bad DSAC options"):
        pnp_ransac(uv + np.arange(30)[:, None], X + np.arange(30)[:, None], CAM, backend="dsac",
                   backend_options={"num_hypotheses": 0})
    with pytest.raises(ValueError, match="max_reproj_px"):
        dsac_pnp(uv, X, CAM.K, 10.0, max_reproj_px=5.0)
    with pytest.raises(ValueError, match="beta"):
        dsac_pnp(uv, X, CAM.K, 10.0, beta=-1.0)

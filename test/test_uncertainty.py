"""The uncertainty model (reloc_ros/uncertainty.py): the sandwich covariance (against Monte Carlo in
test_pnp.py and test_implicit.py), the calibration fit
recovering a known model, the confidence's probability, the ECE, the mapping-time hold-out split."""
import math

import numpy as np
import pytest
from scipy.stats import chi2

from reloc_ros.evaluation.consistency import consistency_summary
from reloc_ros.mapping.calibrate import split_holdout
from reloc_ros.uncertainty import (CHI2_95_6, Calibration, CalibrationSample, expected_calibration_error,
                                   fit_calibration, gaussian_within, nearest_view_distance, sandwich_covariance)


def test_chi2_constant():
    assert CHI2_95_6 == pytest.approx(chi2.ppf(0.95, 6), rel=1e-12)


def test_sandwich_is_sigma2_inverse_hessian_for_gaussian_least_squares():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((20000, 6))
    r = 0.3 * rng.standard_normal(20000)
    S = J * r[:, None]
    cov = sandwich_covariance(J.T @ J, S.T @ S)
    expected = 0.09 * np.linalg.inv(J.T @ J)
    np.testing.assert_allclose(cov, expected, rtol=0, atol=0.05 * expected.diagonal().max())
    assert sandwich_covariance(np.zeros((6, 6)), np.eye(6)) is None


def _synthetic_samples(rng, n, k=(400.0, 100.0), floor=(0.02, 0.004)):
    """Samples whose true covariance is k·raw + floor² (per block), as fit_calibration models it."""
    out = []
    for _ in range(n):
        A = rng.standard_normal((6, 6)) * 1e-3
        raw = A @ A.T * 10 ** rng.uniform(-2.5, 0.5) + 1e-12 * np.eye(6)   # some floor-dominated
        true = Calibration(k[0], k[1], floor[0], floor[1]).covariance(raw)
        e = rng.multivariate_normal(np.zeros(6), true)
        out.append(CalibrationSample(e, raw, np.array([5.0, 0.5, 5.0, math.log(1e-3), 0.0]) + rng.normal(0, .1, 5)))
    return out


def test_calibration_fit_recovers_the_model_and_covers_95_percent():
    rng = np.random.default_rng(3)
    cal = fit_calibration(_synthetic_samples(rng, 400))
    assert cal.k_position == pytest.approx(400, rel=0.3) and cal.k_rotation == pytest.approx(100, rel=0.3)
    assert cal.floor_m == pytest.approx(0.02, rel=0.3) and cal.floor_rad == pytest.approx(0.004, rel=0.3)
    fresh = _synthetic_samples(rng, 400)
    summary = consistency_summary([s.error for s in fresh], [cal.covariance(s.raw) for s in fresh])
    assert 0.92 <= summary["nees_inside_95"] <= 0.98
    assert 0.8 <= summary["nees_mean"] / 6 <= 1.2


def _growing_samples(rng, n, growth, d_max):
    """Samples whose true covariance is 200·raw · (1 + growth·d)², d uniform in [0, d_max] m."""
    out = []
    for _ in range(n):
        A = rng.standard_normal((6, 6)) * 1e-3
        raw = A @ A.T * 10 ** rng.uniform(-1, 0.5) + 1e-12 * np.eye(6)
        d = float(rng.uniform(0, d_max))
        true = Calibration(200.0, 200.0, growth_per_m=growth).covariance(raw, d)
        out.append(CalibrationSample(rng.multivariate_normal(np.zeros(6), true), raw,
                                     np.array([5.0, 0.5, 5.0, -7.0, 0.0]) + rng.normal(0, .1, 5), d))
    return out


def test_calibration_fits_the_growth_with_the_distance_to_the_mapped_views():
    """Fitted on samples 0-20 cm from the mapped views (as held-out mapping frames are), the growth carries the
    coverage to samples 20-50 cm away (as query frames are); without the distances, the far samples are
    overconfident (the refined stage's problem on 7-Scenes)."""
    rng = np.random.default_rng(11)
    near = _growing_samples(rng, 300, growth=10.0, d_max=0.2)
    cal = fit_calibration(near)
    assert cal.growth_per_m == pytest.approx(10.0, rel=0.35)
    far = [s for s in _growing_samples(rng, 1500, growth=10.0, d_max=0.5) if s.view_distance_m > 0.2]
    inside = consistency_summary([s.error for s in far], [cal.covariance(s.raw, s.view_distance_m) for s in far])
    assert 0.9 <= inside["nees_inside_95"] <= 0.99
    blind = fit_calibration([CalibrationSample(s.error, s.raw, s.features) for s in near])
    assert blind.growth_per_m == 0.0
    assert consistency_summary([s.error for s in far], [blind.covariance(s.raw) for s in far])["nees_inside_95"] < 0.85


def test_calibration_growth_scales_the_covariance_and_old_calibrations_have_none():
    raw = np.diag([1e-4] * 3 + [1e-6] * 3)
    cal = Calibration(4.0, 9.0, growth_per_m=5.0)
    np.testing.assert_allclose(cal.covariance(raw, 0.2), cal.covariance(raw) * 4.0)    # (1 + 5·0.2)² = 4
    np.testing.assert_allclose(cal.covariance(raw, None), cal.covariance(raw, 0.0))
    stack = cal.covariance(np.stack([raw, raw]), np.array([0.0, 0.2]))
    np.testing.assert_allclose(stack[1], 4.0 * stack[0])
    old = {k: v for k, v in cal.as_dict().items() if k != "growth_per_m"}
    assert Calibration.from_dict(old).growth_per_m == 0.0


def test_nearest_view_distance():
    T = np.eye(4)
    T[:3, 3] = [1.0, 2.0, 3.0]
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.5], [1.0, 5.0, 3.0]])
    assert nearest_view_distance(T, centres) == pytest.approx(0.5)
    assert nearest_view_distance(T, None) is None and nearest_view_distance(T, np.zeros((0, 3))) is None


def test_calibration_needs_enough_good_samples():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="only 5 calibration frames"):
        fit_calibration(_synthetic_samples(rng, 5))


def test_gaussian_within_matches_the_chi_distribution():
    s_m, s_r = 0.05, math.radians(2.0)
    cov = np.diag([s_m ** 2] * 3 + [s_r ** 2] * 3)
    expected = chi2.cdf((0.10 / s_m) ** 2, 3) * chi2.cdf((math.radians(5.0) / s_r) ** 2, 3)
    assert gaussian_within(cov) == pytest.approx(expected, abs=0.02)
    assert gaussian_within(np.diag([1.0] * 6)) < 0.01
    assert gaussian_within(np.diag([1e-8] * 6)) > 0.99


def test_gaussian_within_takes_a_semi_definite_covariance_and_stays_a_probability():
    """A calibrated PnP covariance on thousands of inliers next to a weak direction (eigenvalues 1e-17 .. 1.4, as
    the sift front end gave on the demo scene) fails Cholesky: it used to return 0, whose logit raised "math domain
    error" inside Localizer.localize; it is now drawn from through its eigenvectors."""
    rng = np.random.default_rng(7)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    w = np.array([-1.4e-17, 2.4e-11, 1.3e-8, 2.0e-3, 7.7e-3, 1.39])
    cov = (Q * w) @ Q.T
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-18 * np.eye(6))
    p = gaussian_within(cov)
    assert 0 < p < 1 and p == pytest.approx(gaussian_within((Q * np.clip(w, 1e-12, None)) @ Q.T), abs=0.02)
    assert math.isfinite(Calibration().confidence(cov, np.zeros(5)))
    lowest = gaussian_within(np.full((6, 6), np.nan))
    assert 0 < lowest == gaussian_within(np.diag([1e6] * 6)) < 1e-3


def test_confidence_learns_support_and_is_a_probability():
    """Negatives (no true pose) with low support: the fitted confidence is low for them, high for the good ones,
    and its ECE on fresh samples is small."""
    rng = np.random.default_rng(5)
    good = _synthetic_samples(rng, 200, k=(1.0, 1.0), floor=(0.01, 0.002))
    bad = [CalibrationSample(None, s.raw, s.features - [3.0, 0.4, 3.0, 0, 0]) for s in _synthetic_samples(rng, 60)]
    cal = fit_calibration(good + bad)
    conf_good = [cal.confidence(cal.covariance(s.raw), s.features) for s in good]
    conf_bad = [cal.confidence(cal.covariance(s.raw), s.features) for s in bad]
    assert np.median(conf_good) > 0.9 and np.median(conf_bad) < 0.1
    ece = expected_calibration_error(conf_good + conf_bad, [s.correct for s in good] + [False] * len(bad))
    assert ece < 0.05


def test_expected_calibration_error():
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, 20000)
    y = rng.uniform(0, 1, 20000) < p
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000, bool)) == pytest.approx(0.9)
    assert math.isnan(expected_calibration_error([], []))


def test_calibration_round_trips_through_a_dict():
    cal = fit_calibration(_synthetic_samples(np.random.default_rng(7), 50))
    back = Calibration.from_dict(cal.as_dict())
    raw = np.eye(6) * 1e-6
    np.testing.assert_array_equal(back.covariance(raw), cal.covariance(raw))


@pytest.mark.parametrize("n, fraction, block, held, size", [(500, 0.2, 50, 100, 50), (200, 0.2, 50, 40, 20),
                                                            (120, 0.2, 50, 24, 12), (6, 0.2, 50, 0, 0),
                                                            (100, 0.0, 10, 0, 0), (500, 0.1, 25, 50, 25)])
def test_split_holdout_blocks(n, fraction, block, held, size):
    kept, out = split_holdout(n, fraction, block)
    assert len(out) == held and sorted(kept + out) == list(range(n)) and not set(kept) & set(out)
    starts = [i for i in out if i - 1 not in out]
    assert all(all(s + j in out for j in range(size)) and s + size not in out for s in starts)   # whole blocks
    if len(starts) >= 2:
        assert min(np.diff(starts)) >= 2 * size                            # spread, never adjacent


def test_split_holdout_refuses_bad_fractions():
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_holdout(100, 1.0, 10)

"""Evaluation core: stamp matching, metrics of hand-made trajectories with known errors, NEES, plots, JSON/TUM."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chi2

from reloc_ros.evaluation.consistency import nees, nees_inside_fraction, pose_error_vector
from reloc_ros.evaluation.matching import match_by_stamp
from reloc_ros.evaluation.plots import plot_all
from reloc_ros.evaluation.replay_metrics import replay_metrics
from reloc_ros.evaluation.report import (format_table, latency_stats, read_tum, refinement_summary, write_json,
                                        write_tum)
from reloc_ros.geometry.pose import make_T, perturb_T, so3_exp


def _trajectory(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A walk at 10 Hz: stamps (ns) from t=1000 s and camera-to-world poses."""
    stamps = 1_000_000_000_000 + np.arange(n, dtype=np.int64) * 100_000_000
    poses = np.array([make_T(so3_exp(rng.normal(size=3) * 0.5), [0.05 * i, np.sin(0.1 * i), 1.0])
                      for i in range(n)])
    return stamps, poses


def _est_from_error(T_gt: np.ndarray, e: np.ndarray) -> np.ndarray:
    """The estimate whose error in the covariance convention is ``e``: T_gt = [Exp(δθ)·R̂ | ĉ + δc]."""
    return make_T(so3_exp(-e[3:]) @ T_gt[:3, :3], T_gt[:3, 3] - e[:3])


# ---- stamp matching ----------------------------------------------------------------------------------------------
def test_match_by_stamp_tolerance_missing_and_duplicates():
    gt = np.array([0, 100, 200, 300, 400], dtype=np.int64) * 1_000_000      # 10 Hz in ns
    est = np.array([100_000_300, 299_999_000, 305_000_000, 900_000_000, -5_000_000])  # jitter, duplicate near 300, strays
    g, e = match_by_stamp(gt, est, tol_ns=1_000_000)
    assert g.tolist() == [1, 3] and e.tolist() == [0, 1]
    # the closer of two estimates near the same ground truth wins, whatever their order
    g, e = match_by_stamp(gt, est[[2, 1]], tol_ns=10_000_000)
    assert g.tolist() == [3] and e.tolist() == [1]
    # unsorted ground truth: indices refer to the input order
    g, e = match_by_stamp(gt[::-1], [0, 400_000_000], tol_ns=0)
    assert g.tolist() == [4, 0] and e.tolist() == [0, 1]
    assert match_by_stamp([], [1, 2])[0].size == 0
    with pytest.raises(ValueError):
        match_by_stamp(gt, est, tol_ns=-1)


# ---- replay metrics on hand-made trajectories ----------------------------------------------------------------------
def test_replay_metrics_known_errors():
    rng = np.random.default_rng(0)
    n = 20
    stamps, gt = _trajectory(n, rng)
    # errors by frame: 10 frames at 1 cm / 1 deg, 4 at 3 cm / 3 deg, 2 at 8 cm / 4 deg, 1 false accept (1 m),
    # 3 frames rejected (status but no pose); frames 18, 19 never answered (dropped)
    plan = [(0.01, 1.0)] * 10 + [(0.03, 3.0)] * 4 + [(0.08, 4.0)] * 2 + [(1.0, 20.0)] + [None] * 3
    reasons = {17: "stale_frame"}  # the one rejected frame was replaced by a newer one before processing
    poses, statuses = [], []
    for i, err in enumerate(plan):
        if i >= 18:
            continue
        accepted = err is not None
        if accepted:
            T = perturb_T(gt[i], err[0], err[1], rng)
            poses.append({"stamp_ns": int(stamps[i]) + 200, "T": T, "covariance": None})
        reason = "ok" if accepted else reasons.get(i, "low_confidence")
        statuses.append({"stamp_ns": int(stamps[i]), "accepted": accepted, "reason": reason,
                         "latency_since_stamp_ms": 40.0 + i, "latency_total_ms": 30.0, "frames_dropped": 0})
    sent = stamps.tolist() + [stamps[-1] + 10**9]  # one frame without ground truth
    m = replay_metrics(stamps, gt, sent, poses, statuses)
    assert m["n_queries"] == n and m["n_sent"] == n + 1 and m["n_sent_without_gt"] == 1
    assert m["n_accepted"] == 17 and m["availability"] == pytest.approx(17 / 20)
    assert m["recall_2cm_2deg"] == pytest.approx(10 / 20)
    assert m["recall_5cm_5deg"] == pytest.approx(14 / 20)
    assert m["recall_10cm_5deg"] == pytest.approx(16 / 20)
    assert m["false_accepts"] == 1 and m["false_accept_rate"] == pytest.approx(1 / 17)
    assert m["dropped_frames"] == 4  # frames 18, 19 and the extra frame got no status; 17 was stale
    assert m["median_translation_m"] == pytest.approx(0.02, abs=1e-9)  # mean of the 10th (1 cm) and 11th (3 cm)
    assert m["median_rotation_deg"] == pytest.approx(2.0, abs=1e-6)
    assert m["latency_ms_median"] == pytest.approx(np.median(40.0 + np.arange(17)))
    assert m["reasons"] == {"ok": 17, "stale_frame": 1}
    assert np.isnan(m["nees_inside_95"])  # no covariance was published


# ---- NEES ----------------------------------------------------------------------------------------------------------
def test_pose_error_vector_round_trip():
    rng = np.random.default_rng(1)
    T_gt = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    e = np.array([0.01, -0.02, 0.03, 0.004, -0.002, 0.001])
    np.testing.assert_allclose(pose_error_vector(_est_from_error(T_gt, e), T_gt), e, atol=1e-12)


def test_nees_on_synthetic_gaussian_errors():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(6, 6)) * np.array([0.01] * 3 + [0.003] * 3)[:, None]
    cov = A @ A.T + np.diag([1e-6] * 3 + [1e-7] * 3)  # correlated, metres / radians scale
    n = 2000
    E, C = [], []
    for _ in range(n):
        T_gt = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
        e = rng.multivariate_normal(np.zeros(6), cov)
        E.append(pose_error_vector(_est_from_error(T_gt, e), T_gt))
        C.append(cov)
    inside = nees_inside_fraction(E, C)
    assert 0.93 <= inside <= 0.97
    assert 0.93 <= nees_inside_fraction(E, C, position_only=True) <= 0.97
    too_small = nees_inside_fraction(E, np.array(C) / 10)
    assert too_small < 0.2  # ≈ P(χ²₆ ≤ 1.26) ≈ 3 %
    assert too_small == pytest.approx(chi2.cdf(chi2.ppf(0.95, 6) / 10, 6), abs=0.02)
    assert nees(E[0], np.zeros((6, 6))) == np.inf  # a singular covariance claims impossible certainty


def test_replay_metrics_nees_uses_published_covariance():
    rng = np.random.default_rng(3)
    stamps, gt = _trajectory(400, rng)
    cov = np.diag([0.02**2] * 3 + [np.deg2rad(1.0) ** 2] * 3)
    poses = [{"stamp_ns": int(s), "T": _est_from_error(T, rng.multivariate_normal(np.zeros(6), cov)),
              "covariance": cov} for s, T in zip(stamps, gt)]
    statuses = [{"stamp_ns": int(s), "accepted": True, "reason": "ok", "latency_since_stamp_ms": 10.0}
                for s in stamps]
    m = replay_metrics(stamps, gt, stamps, poses, statuses)
    assert 0.91 <= m["nees_inside_95"] <= 0.99
    assert m["availability"] == 1.0 and m["dropped_frames"] == 0
    poses_small = [dict(p, covariance=cov / 10) for p in poses]
    assert replay_metrics(stamps, gt, stamps, poses_small, statuses)["nees_inside_95"] < 0.2


# ---- reports, JSON, TUM, plots -------------------------------------------------------------------------------------
def test_json_table_and_tum_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    stamps, gt = _trajectory(7, rng)
    p = write_tum(tmp_path / "gt.tum", stamps, gt)
    s2, T2 = read_tum(p)
    np.testing.assert_array_equal(s2, stamps)
    np.testing.assert_allclose(T2, gt, atol=1e-8)
    res = {"n_queries": 3, "median_translation_m": 0.0123, "recall_5cm_5deg": 2 / 3, "latency_ms_p95": float("nan"),
           "nested": {"a": np.float32(1.5), "b": [np.inf, np.int64(2)]}}
    write_json(tmp_path / "r.json", res)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["latency_ms_p95"] is None and back["nested"] == {"a": 1.5, "b": [None, 2]}
    table = format_table(res)
    assert "1.2" in table and "66.7" in table and "-" in table
    assert latency_stats([1.0, 2.0, 3.0, None, np.nan]) == {"latency_ms_median": 2.0,
                                                            "latency_ms_p95": pytest.approx(2.9)}


def test_refinement_summary_counts_outcomes_of_the_frames_it_ran_on():
    rows = [{"refinement_ran": True, "refinement_accepted": True, "refinement_reason": "ok",
             "refinement_init": "prior"},
            {"refinement_ran": True, "refinement_accepted": True, "refinement_reason": "ok",
             "refinement_init": "matches"},
            {"refinement_ran": True, "refinement_accepted": False, "refinement_reason": "poor_alignment",
             "refinement_init": "prior"},
            {"refinement_ran": False, "refinement_accepted": False, "refinement_reason": "", "refinement_init": ""},
            {"accepted": False, "reason": "bad_encoding"}]   # a status of a frame that never reached a front end
    s = refinement_summary(rows)
    assert s == {"refinement_ran": 3, "refinement_accepted": 2, "refinement_rejected": {"poor_alignment": 1},
                 "refinement_started_from": {"prior": 1, "matches": 1}}
    assert "refinement accepted  2" in format_table({**s, "n_queries": 5})


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(5)
    stamps, gt = _trajectory(30, rng)
    est = np.array([perturb_T(T, 0.02, 1.0, rng) for T in gt[::2]])
    t = np.where(np.arange(30) % 2 == 0, 0.02, np.inf)
    r = np.where(np.arange(30) % 2 == 0, 1.0, np.inf)
    paths = plot_all(tmp_path / "plots", stamps, gt, stamps[::2], est, stamps, t, r, rng.gamma(5, 10, 30),
                     title="test")
    assert set(paths) == {"trajectory", "errors_over_time", "error_cdf", "latency_hist"}
    from reloc_ros.evaluation.plots import plot_nees_vs_view_distance
    paths["nees_vs_view_distance"] = plot_nees_vs_view_distance(tmp_path / "plots" / "nd.png", rng.uniform(0, .5, 30),
                                                                rng.chisquare(6, 30), title="test")
    for p in paths.values():
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

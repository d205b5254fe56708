"""Metrics against hand-computed errors."""
import numpy as np
import pytest

from reloc_ros.geometry.pose import make_T, so3_exp
from reloc_ros.metrics import pose_error, summarize_errors


def test_pose_error_known_offsets():
    T = make_T(so3_exp([0.1, 0.2, 0.3]), [1, 2, 3])
    E = make_T(so3_exp([0, 0, np.deg2rad(3)]) @ T[:3, :3], T[:3, 3] + [0.03, 0.04, 0])
    t, r = pose_error(E, T)
    assert t == pytest.approx(0.05)
    assert r == pytest.approx(3.0)
    assert pose_error(None, T) == (float("inf"), float("inf"))


def test_summary_recalls_and_failures():
    t = [0.01, 0.03, 0.07, 0.5, float("inf")]
    r = [1.0, 4.0, 4.0, 1.0, float("inf")]
    s = summarize_errors(t, r)
    assert s["n_queries"] == 5 and s["n_failed"] == 1
    assert s["recall_2cm_2deg"] == pytest.approx(0.2)
    assert s["recall_5cm_5deg"] == pytest.approx(0.4)
    assert s["recall_10cm_5deg"] == pytest.approx(0.6)
    assert s["median_translation_m"] == pytest.approx(0.07)
    assert s["median_rotation_deg"] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        summarize_errors([1, 2], [1])

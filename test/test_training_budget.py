"""Training budgeted by work (reloc_ros/training_budget.py): the plan within a time cap, the schedule's progress,
the expected accuracy of a shortened schedule, and the under-trained map warning."""
from __future__ import annotations

import math

import pytest

from reloc_ros.training_budget import (WARMUP_ITERATIONS, check_minutes, expected_recall, plan_training,
                                       schedule_progress, undertrained_warning)


def test_plan_keeps_the_schedule_when_the_cap_buys_it_and_shortens_it_otherwise():
    full = plan_training(9600, 0.05, cap_s=600.0)          # 600 s buy 11640 iterations
    assert full.planned == 9600 and not full.shortened and full.eta_s == pytest.approx(480.0)
    short = plan_training(9600, 0.13, cap_s=570.0)          # an AVX2 CPU in fp32: ~4250
    assert short.shortened and short.planned == int(570 * 0.97 / 0.13)
    assert plan_training(9600, 0.13, cap_s=None).planned == 9600        # no cap: the whole schedule
    assert plan_training(9600, 10.0, cap_s=5.0).planned == 100          # never below min_iterations
    assert plan_training(50, 10.0, cap_s=5.0).planned == 50             # ... nor above the schedule
    resumed = plan_training(9600, 0.1, cap_s=100.0, done=4000)          # iterations done count in
    assert resumed.planned == 4000 + 970 and resumed.eta_s == pytest.approx(97.0)


def test_schedule_progress_follows_iterations_unless_the_run_falls_behind_its_cap():
    assert schedule_progress(10, 40, 1e6, None) == 0.25                # no cap: iterations only
    # iterations drive it, whatever the clock says early on (a paused process) or while on course
    assert schedule_progress(0, 800, 0.5, 300.0) == 0.0
    assert schedule_progress(WARMUP_ITERATIONS - 1, 800, 200.0, 300.0) == (WARMUP_ITERATIONS - 1) / 800
    assert schedule_progress(400, 800, 30.0, 300.0) == 0.5
    # behind schedule after the warm-up: the time share takes over so that the run still anneals before the cap
    assert schedule_progress(WARMUP_ITERATIONS, 800, 150.0, 300.0) == 0.5
    assert schedule_progress(10, 800, 301.0, 300.0) > 1.0


def test_expected_recall_interpolates_in_log_iterations_within_the_measured_range():
    pts = [(1000, 60.0), (10000, 90.0)]
    assert expected_recall(1000, pts) == 60.0 and expected_recall(10000, pts) == 90.0
    assert expected_recall(int(math.sqrt(1000 * 10000)), pts) == pytest.approx(75.0, abs=0.01)
    assert expected_recall(500, pts) is None and expected_recall(20000, pts) == 90.0


def test_undertrained_warning_only_below_half_the_schedule():
    meta = {"front_end": "ace", "training": {"iterations": 137, "iterations_scheduled": 9600, "precision": "bf16"}}
    w = undertrained_warning(meta)
    assert "137 of its 9600" in w and "bf16" in w
    assert undertrained_warning({"training": {"iterations": 4800, "iterations_scheduled": 9600}}) is None
    assert undertrained_warning({"training": {"iterations": 800}}) is None    # maps from before the schedule
    assert undertrained_warning({}) is None


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), float("inf"), "ten", [1]])
def test_check_minutes_refuses_what_is_not_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="cap"):
        check_minutes(bad, "cap")


def test_check_minutes_passes_numbers_and_none():
    assert check_minutes(None) is None and check_minutes("2.5") == 2.5 and check_minutes(10) == 10.0

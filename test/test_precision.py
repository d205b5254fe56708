"""Precision chosen by measured capability (reloc_ros/precision.py): the decision both ways, the probe with
workloads whose bf16 cost is known, the cache, RELOC_ROS_PRECISION, and what a loaded map reports."""
from __future__ import annotations

import time

import pytest
import torch

from reloc_ros import precision as P


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache dir and no forcing from the environment (CI sets RELOC_ROS_PRECISION)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(P.ENV_VAR, raising=False)


@pytest.fixture
def bf16_capable(monkeypatch):
    """Pretend the CPU lists bf16 instructions, so that the timing probe runs whatever this CPU is."""
    monkeypatch.setattr(P, "cpu_has_bf16_instructions", lambda: True)


def _costed(fp32_s: float, bf16_s: float):
    """A workload that sleeps ``bf16_s`` under bf16 autocast and ``fp32_s`` otherwise."""
    def run():
        time.sleep(bf16_s if torch.is_autocast_enabled("cpu") else fp32_s)
    return run


def test_decide_takes_bf16_only_when_it_is_faster_by_the_margin():
    assert P.decide(10.0, 5.0) == "bf16"
    assert P.decide(10.0, 10.0 / P.BF16_MARGIN) == "bf16"
    assert P.decide(10.0, 9.5) == "fp32"          # within the margin: noise, keep fp32
    assert P.decide(37.0, 2948.0) == "fp32"       # an AVX2-only CPU


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(0.04, 0.002, "bf16"), (0.002, 0.04, "fp32")])
def test_probe_measures_both_precisions_and_picks_the_faster(monkeypatch, bf16_capable, fp32_s, bf16_s, expected):
    monkeypatch.setattr(P, "_matmul_workload", lambda: _costed(fp32_s, bf16_s))
    choice = P.resolve_precision("auto", "cpu", "stage", _costed(fp32_s, bf16_s), "shape")
    assert choice.precision == expected and choice.source in ("probe", "precheck")
    assert choice.fp32_ms > 0 and choice.bf16_ms > 0
    assert P.decide(choice.fp32_ms, choice.bf16_ms) == expected


def test_probe_result_is_cached_per_stage_and_shape(monkeypatch, bf16_capable):
    monkeypatch.setattr(P, "_matmul_workload", lambda: _costed(0.02, 0.001))
    first = P.resolve_precision("auto", "cpu", "stage", _costed(0.02, 0.001), "a")

    def must_not_run():
        raise AssertionError("the cached choice must not probe again")

    again = P.resolve_precision("auto", "cpu", "stage", must_not_run, "a")
    assert again.source == "cache" and again.precision == first.precision == "bf16"
    other = P.resolve_precision("auto", "cpu", "stage", _costed(0.001, 0.02), "b")   # another shape: probed
    assert other.source in ("probe", "precheck") and other.precision == "fp32"
    assert P.cache_path().is_file()


def test_a_cpu_without_bf16_instructions_stays_fp32_without_timing(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_bf16_instructions", lambda: False)

    def must_not_run():
        raise AssertionError("no timing on a CPU without bf16 instructions")

    choice = P.resolve_precision("auto", "cpu", "stage", must_not_run)
    assert choice.precision == "fp32" and choice.source == "cpu_flags"


def test_real_probe_on_this_cpu_is_consistent_with_its_flags_and_timings():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    choice = P.resolve_precision("auto", "cpu", "matmul256", lambda: a @ b)
    assert choice.precision in ("fp32", "bf16")
    if P.cpu_has_bf16_instructions() is False:
        assert choice.source == "cpu_flags" and choice.precision == "fp32"
    elif choice.source == "probe":
        assert choice.precision == P.decide(choice.fp32_ms, choice.bf16_ms)
    assert "matmul256" in choice.describe()


def test_environment_forces_every_auto_but_no_explicit_choice(monkeypatch):
    monkeypatch.setenv(P.ENV_VAR, "fp32")
    assert P.resolve_precision("auto", "cpu", "s").as_dict()["precision"] == "fp32"
    assert P.resolve_precision("auto", "cpu", "s").source == "env"
    assert P.resolve_precision("bf16", "cpu", "s").precision == "bf16"      # explicit wins
    monkeypatch.setenv(P.ENV_VAR, "bf16")
    assert P.resolve_precision("auto", "cpu", "s").precision == "bf16"
    monkeypatch.setenv(P.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="RELOC_ROS_PRECISION"):
        P.resolve_precision("auto", "cpu", "s")


def test_bad_requests_are_refused_with_the_stage_named():
    with pytest.raises(ValueError, match="ace_head precision"):
        P.resolve_precision("half", "cpu", "ace_head")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        P.resolve_precision("fp16", "cpu", "ace_head")
    with pytest.raises(ValueError, match="needs a probe workload"):
        P.resolve_precision("auto", "cpu", "ace_head")
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        P.autocast_context("cpu", "auto")


def test_a_loaded_map_reports_the_precision_of_every_stage(demo_map_ace, monkeypatch):
    from reloc_ros.localizer import Localizer

    monkeypatch.setenv(P.ENV_VAR, "fp32")
    loc = Localizer.from_map(demo_map_ace[0])
    assert loc.precision == {"ace_encoder": "fp32", "ace_head": "fp32"}
    assert all(c.source == "env" for c in loc.precision_choices.values())
    monkeypatch.delenv(P.ENV_VAR)
    explicit = Localizer.from_map(demo_map_ace[0], front_end_options={"encoder_precision": "bf16"})
    assert explicit.precision["ace_encoder"] == "bf16" and explicit.precision["ace_head"] in ("fp32", "bf16")


def test_a_choice_made_with_other_instruction_sets_is_probed_again(monkeypatch, bf16_capable):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(P, "_matmul_workload", lambda: _costed(0.02, 0.001))
    assert P.resolve_precision("auto", "cpu", "stage", _costed(0.02, 0.001), "a").precision == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")        # the key changes with the cap: not a cache hit
    assert "onednn AVX2" in P.instruction_sets()
    monkeypatch.setattr(P, "_matmul_workload", lambda: _costed(0.001, 0.02))
    choice = P.resolve_precision("auto", "cpu", "stage", _costed(0.001, 0.02), "a")
    assert choice.source in ("probe", "precheck") and choice.precision == "fp32"


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="the AVX2 cap exists on x86 only")
def test_auto_picks_fp32_when_the_kernels_are_capped_at_avx2(tmp_path):
    """What .ci/run's second pass relies on: an AVX-512 / AMX CPU capped at AVX2 runs bf16 as an AVX2-only CPU does
    (emulated, far slower), and the real probe then picks fp32."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop(P.ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-m", "reloc_ros.precision", "--exit-bf16"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr       # 1: fp32
    assert "aten AVX2, onednn AVX2" in proc.stdout and "ace_train: fp32" in proc.stdout

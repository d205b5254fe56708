"""Numeric precision of each network stage: ``"fp32"``, ``"bf16"`` (CPU and CUDA autocast), ``"fp16"`` (CUDA
only), or ``"auto"`` (the default of every stage), chosen by a measured probe.

bf16 is ~6x faster than fp32 on CPUs with AMX / AVX-512 BF16, but ~40-80x *slower* on AVX2-only CPUs (AMD EPYC
here: a 1024³ matmul takes 37 ms in fp32 and 2948 ms in bf16), and most robot PCs, laptops, VMs and Jetsons are of
the second kind. So ``"auto"`` measures instead of assuming:

- CUDA: ``"bf16"`` where the GPU supports it, else ``"fp16"`` (no probe).
- CPU: a CPU whose ``/proc/cpuinfo`` flags show no bf16 instructions (x86: ``avx512_bf16`` / ``amx_bf16``; Arm:
  ``bf16``) stays fp32 without timing anything (source "cpu_flags": microseconds; timing bf16 there costs seconds,
  since it is emulated). Otherwise a 256³ matmul pre-check, then the stage's own workload (its real shapes: the
  head's batch and width, the network at the map's image size) timed in both precisions, interleaved. bf16 is
  chosen only when it is at least ``BF16_MARGIN`` times faster (``decide``).
- The choice is cached per CPU model, instruction sets in use, torch version, thread count and stage key in
  ``$XDG_CACHE_HOME/reloc_ros/precision.json`` (``~/.cache`` by default), so a node starts without probing again.
- ``RELOC_ROS_PRECISION=fp32|bf16`` makes every ``"auto"`` resolve to that value (CI forces the fp32 branch with it
  on a CPU where auto would pick bf16); explicitly requested precisions are never overridden.

Every resolution returns a ``PrecisionChoice`` (what was asked, what was chosen, why, the probe's timings) that the
callers log, write into the map metadata, the ``reloc-eval`` JSON and the node's ``/diagnostics``.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "ENV_VAR", "BF16_MARGIN", "PrecisionChoice", "autocast_context",
           "check_precision", "decide", "resolve_precision", "cache_path", "cpu_model", "cpu_has_bf16_instructions",
           "instruction_sets"]

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto",) + PRECISIONS
ENV_VAR = "RELOC_ROS_PRECISION"
BF16_MARGIN = 1.15          # bf16 must be at least this many times faster than fp32 to be chosen
PRECHECK_SLOWDOWN = 2.0     # bf16 this many times slower on the matmul pre-check: fp32 without timing the stage
PROBE_REPEATS = 3           # timed runs per precision (after one warm-up run each), interleaved


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a stage runs in. ``source``: "explicit" (asked for), "env" (``RELOC_ROS_PRECISION``),
    "cuda", "cpu_flags" (the CPU has no bf16 instructions), "probe" (measured now), "cache" (measured earlier on
    this CPU), "precheck" (bf16 far slower on a matmul). ``fp32_ms`` / ``bf16_ms``: the probe's medians (None when not measured)."""

    stage: str
    requested: str
    precision: str
    source: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One log line, e.g. ``ace_encoder: fp32 (auto, probe: fp32 21.0 ms vs bf16 812.0 ms)``."""
        why = self.source
        if self.fp32_ms is not None and self.bf16_ms is not None:
            why += f": fp32 {self.fp32_ms:.1f} ms vs bf16 {self.bf16_ms:.1f} ms"
        return f"{self.stage}: {self.precision} ({self.requested}, {why})"


def check_precision(precision: str, name: str = "precision") -> str:
    """``precision`` if it is one of ``PRECISION_CHOICES``, else a ValueError naming the option."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"{name} must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    return precision


def autocast_context(device: str, precision: str):
    """torch.autocast for "bf16" / "fp16" (fp16 only on CUDA); a null context for "fp32". Takes resolved
    precisions only (``resolve_precision`` turns "auto" into one of these)."""
    dev = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=dev, dtype=torch.bfloat16)
    if precision == "fp16":
        if dev != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        return torch.autocast(device_type=dev, dtype=torch.float16)
    raise ValueError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16 (resolve 'auto' first)")


def decide(fp32_ms: float, bf16_ms: float, margin: float = BF16_MARGIN) -> str:
    """"bf16" when it is at least ``margin`` times faster than fp32, else "fp32" (ties and noise stay fp32)."""
    return "bf16" if bf16_ms * margin <= fp32_ms else "fp32"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_has_bf16_instructions() -> bool | None:
    """Whether the CPU's flags list bf16 instructions (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``); None
    where ``/proc/cpuinfo`` has no flags line (then only timing tells)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return None


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/reloc_ros/precision.json`` (``~/.cache/reloc_ros/precision.json``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reloc_ros" / "precision.json"


def instruction_sets() -> str:
    """The instruction sets torch's kernels use here: ATen's CPU capability (``ATEN_CPU_CAPABILITY`` caps it) and
    oneDNN's cap (``ONEDNN_MAX_CPU_ISA``; e.g. ``AVX2`` makes an AVX-512 BF16 CPU run bf16 as an AVX2-only one
    does: what CI's AVX2 pass sets). Part of the cache key, so a capped run never reuses an uncapped choice."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "all"
    return f"aten {torch.backends.cpu.get_cpu_capability()}, onednn {onednn}"


def _cache_key(stage_key: str) -> str:
    return (f"{cpu_model()}|{platform.machine()}|{instruction_sets()}|torch {torch.__version__}|"
            f"threads {torch.get_num_threads()}|{stage_key}")


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    """Add one entry, atomically (a half-written cache is never read); an unwritable cache is skipped."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def _time_interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each callable: one warm-up each, then ``repeats`` rounds in alternating order."""
    for fn in runs.values():
        fn()
    times: dict[str, list] = {k: [] for k in runs}
    for r in range(repeats):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _under(precision: str, workload: Callable[[], None]) -> Callable[[], None]:
    def run():
        with autocast_context("cpu", precision):
            workload()
    return run


def _matmul_workload() -> Callable[[], None]:
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    return lambda: torch.mm(a, b)


def _probe(workload: Callable[[], None]) -> tuple[str, str, float, float]:
    """(precision, source, fp32 ms, bf16 ms) on the CPU: matmul pre-check, then the stage's workload."""
    mm = _matmul_workload()
    pre = _time_interleaved({"fp32": _under("fp32", mm), "bf16": _under("bf16", mm)}, PROBE_REPEATS)
    if pre["bf16"] > PRECHECK_SLOWDOWN * pre["fp32"]:
        return "fp32", "precheck", pre["fp32"], pre["bf16"]
    with torch.inference_mode(False):
        t = _time_interleaved({"fp32": _under("fp32", workload), "bf16": _under("bf16", workload)}, PROBE_REPEATS)
    return decide(t["fp32"], t["bf16"]), "probe", t["fp32"], t["bf16"]


def resolve_precision(requested: str, device, stage: str, workload: Callable[[], None] | None = None,
                      shape_key: str = "") -> PrecisionChoice:
    """The precision ``stage`` runs in on ``device`` (see the module docstring).

    ``workload``: runs the stage once on its real shapes (fp32 code; the probe wraps it in each autocast); needed
    for "auto" on a CPU. ``shape_key`` names those shapes in the cache key (e.g. ``"w256_b5120"``)."""
    check_precision(requested, f"{stage} precision")
    dev = torch.device(device).type
    if requested != "auto":
        if requested == "fp16" and dev != "cuda":
            raise ValueError(f"{stage} precision 'fp16' needs a CUDA device; use 'auto', 'bf16' or 'fp32' on CPU")
        return PrecisionChoice(stage, requested, requested, "explicit")
    forced = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if forced not in ("auto", "fp32", "bf16"):
        raise ValueError(f"{ENV_VAR} must be auto, fp32 or bf16, got {forced!r}")
    if forced != "auto":
        return PrecisionChoice(stage, requested, forced, "env")
    if dev == "cuda":
        return PrecisionChoice(stage, requested, "bf16" if torch.cuda.is_bf16_supported() else "fp16", "cuda")
    if workload is None:
        raise ValueError(f"{stage}: precision 'auto' on {dev} needs a probe workload")
    if cpu_has_bf16_instructions() is False:
        return PrecisionChoice(stage, requested, "fp32", "cpu_flags")
    key = _cache_key(f"{stage}:{shape_key}")
    hit = _read_cache().get(key)
    if isinstance(hit, dict) and hit.get("precision") in ("fp32", "bf16"):
        return PrecisionChoice(stage, requested, hit["precision"], "cache", hit.get("fp32_ms"), hit.get("bf16_ms"))
    precision, source, t32, t16 = _probe(workload)
    _write_cache(key, {"precision": precision, "source": source, "fp32_ms": round(t32, 3),
                       "bf16_ms": round(t16, 3), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return PrecisionChoice(stage, requested, precision, source, round(t32, 3), round(t16, 3))


def _standard_stage_probe() -> PrecisionChoice:
    """"auto" for the ACE head's default training step (256 wide, batch 5120): the stage where bf16 matters most."""
    from .frontends.ace.head import SceneCoordinateHead

    head = SceneCoordinateHead(64, 256, 1, True)
    x = torch.randn(5120, 64)

    def step():
        head(x).float().square().mean().backward()

    return resolve_precision("auto", "cpu", "ace_train", step, "w256_nb1_b5120")


def main(argv=None) -> int:
    """``python -m reloc_ros.precision [--exit-bf16]``: print what "auto" picks on this CPU (the ACE training
    step, the heaviest stage). ``--exit-bf16``: exit 0 when it picks bf16, 1 otherwise (.ci/run uses it to decide
    whether a second, forced-fp32 test pass covers a branch the first did not)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m reloc_ros.precision", description=main.__doc__.split("\n")[0])
    p.add_argument("--exit-bf16", action="store_true", help="exit status 0 when auto picks bf16, else 1")
    args = p.parse_args(argv)
    choice = _standard_stage_probe()
    print(f"{cpu_model()} ({instruction_sets()}; torch {torch.__version__}, {torch.get_num_threads()} threads): "
          f"{choice.describe()}")
    if args.exit_bf16:
        return 0 if choice.precision == "bf16" else 1
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())

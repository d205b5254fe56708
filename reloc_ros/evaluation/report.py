"""Reporting helpers shared by ``reloc-eval`` and ``reloc-eval-bag``: latency statistics, machine description,
JSON (NaN/inf written as null), a printed table and TUM trajectory files (evo-compatible)."""
from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from pathlib import Path

import numpy as np

from ..geometry.pose import pos_quat_from_T
from ..map_file import atomic_write_bytes, reference_path

__all__ = ["latency_stats", "refinement_summary", "machine_info", "map_bytes", "to_jsonable", "write_json",
           "format_table", "print_summary", "write_tum", "read_tum"]


def latency_stats(ms, prefix: str = "latency_ms") -> dict:
    """``{prefix}_median`` and ``{prefix}_p95`` of finite values in milliseconds (NaN when there are none)."""
    x = np.asarray([v for v in ms if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {f"{prefix}_median": float("nan"), f"{prefix}_p95": float("nan")}
    return {f"{prefix}_median": float(np.median(x)), f"{prefix}_p95": float(np.percentile(x, 95))}


def refinement_summary(rows) -> dict:
    """What the refinement did over the frames where it ran: ``refinement_ran`` / ``refinement_accepted`` counts,
    ``refinement_rejected`` (count per reason) and ``refinement_started_from`` (count per start of the kept run,
    "prior" or "matches"). ``rows``: dicts with the status message's ``refinement_ran``, ``refinement_accepted``,
    ``refinement_reason`` and ``refinement_init`` (frames without them did not run it)."""
    ran = [r for r in rows if r.get("refinement_ran")]
    return {"refinement_ran": len(ran), "refinement_accepted": sum(bool(r["refinement_accepted"]) for r in ran),
            "refinement_rejected": dict(Counter(r["refinement_reason"] for r in ran if not r["refinement_accepted"])),
            "refinement_started_from": dict(Counter(r["refinement_init"] for r in ran if r["refinement_accepted"]))}


def machine_info() -> dict:
    """CPU model, core counts, torch version and threads, Python and OS, for benchmark records."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    info["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    return info


def map_bytes(map_path) -> int:
    """Size in bytes of a map plus its refinement reference model (when present)."""
    p = Path(map_path)
    ref = reference_path(p)
    return p.stat().st_size + (ref.stat().st_size if ref.is_file() else 0)


def to_jsonable(obj):
    """Recursively convert numpy scalars/arrays and Paths; NaN and inf become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, data: dict) -> Path:
    """Write ``data`` atomically as indented strict JSON."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"

    def _write(tmp):
        Path(tmp).write_text(text)
    return atomic_write_bytes(path, _write)


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


# (label, key, format, scale)
_COLUMNS = [
    ("queries", "n_queries", "d", 1), ("failed", "n_failed", "d", 1),
    ("median t (cm)", "median_translation_m", ".1f", 100), ("median R (deg)", "median_rotation_deg", ".2f", 1),
    ("2cm/2deg %", "recall_2cm_2deg", ".1f", 100), ("5cm/5deg %", "recall_5cm_5deg", ".1f", 100),
    ("10cm/5deg %", "recall_10cm_5deg", ".1f", 100),
    ("latency p50 (ms)", "latency_ms_median", ".1f", 1), ("latency p95 (ms)", "latency_ms_p95", ".1f", 1),
    ("availability %", "availability", ".1f", 100), ("accepted by the gate %", "accepted_rate", ".1f", 100),
    ("false accepts %", "false_accept_rate", ".1f", 100),
    ("dropped", "dropped_frames", "d", 1), ("NEES in 95% %", "nees_inside_95", ".1f", 100),
    ("node CPU %", "node_cpu_percent", ".0f", 1), ("node RSS (MB)", "node_rss_mb", ".0f", 1),
    ("refinement ran", "refinement_ran", "d", 1), ("refinement accepted", "refinement_accepted", "d", 1),
    ("map (MB)", "map_bytes", ".2f", 1e-6),
]


def format_table(results: dict, title: str | None = None) -> str:
    """Two-column text table of the metrics present in ``results`` (a reloc-eval / reloc-eval-bag dict)."""
    rows = []
    for label, key, spec, scale in _COLUMNS:
        if key not in results:
            continue
        v = results[key]
        if isinstance(v, (int, float)) and v is not None and not isinstance(v, bool):
            v = v * scale if scale != 1 else v
            if spec == "d":
                v = int(v)
        rows.append((label, _fmt(v, spec)))
    width = max((len(r[0]) for r in rows), default=10)
    lines = [title] if title else []
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def print_summary(prog: str, results: dict, where: str, json_path, plots_dir=None) -> None:
    """What the evaluation CLIs print at the end: ``format_table`` titled "<prog>: <front end>[ + refinement]
    <where>", and where the JSON (and plots) went."""
    pipeline = results["front_end"] + (" + refinement" if results["refine"] else "")
    print(format_table(results, title=f"{prog}: {pipeline} {where}"))
    print(f"results: {json_path}" + (f"  plots: {plots_dir}" if plots_dir else ""))


def write_tum(path, stamps_ns, poses) -> Path:
    """TUM trajectory file (``t x y z qx qy qz qw`` per line, t in seconds) for evo (``evo_ape tum gt est``)."""
    lines = []
    for s, T in zip(stamps_ns, poses):
        p, q = pos_quat_from_T(np.asarray(T, dtype=np.float64))
        lines.append(f"{int(s) / 1e9:.9f} " + " ".join(f"{v:.9f}" for v in (*p, *q)))
    text = "\n".join(lines) + ("\n" if lines else "")

    def _write(tmp):
        Path(tmp).write_text(text)
    return atomic_write_bytes(path, _write)


def read_tum(path) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``write_tum``: ``(stamps_ns (N,), poses (N, 4, 4))``."""
    from ..geometry.pose import T_from_pos_quat
    stamps, poses = [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        v = [float(x) for x in line.split()]
        if len(v) != 8:
            raise ValueError(f"{path}: TUM lines have 8 values (t x y z qx qy qz qw), got {len(v)}")
        stamps.append(round(v[0] * 1e9))
        poses.append(T_from_pos_quat(np.array(v[1:4]), np.array(v[4:8])))
    return np.array(stamps, dtype=np.int64), np.array(poses).reshape(-1, 4, 4)

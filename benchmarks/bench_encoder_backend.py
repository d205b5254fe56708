"""ACE encoder backend A/B: torch vs onnxruntime for the XFeat encoder, side by side in one run (the two localizers
alternate frame by frame, so drift on a shared machine hits both), with and without the featuremetric refinement.

    HOME=/tmp .venv/bin/python benchmarks/bench_encoder_backend.py [--map out/demo/ace.map.safetensors]
        [--dataset out/demo/scene] [--frames query.txt] [--limit 60] [--json benchmarks/results/encoder_backend.json]

Prints per configuration: median / p95 per-query latency (ms), the encoder's median (ms) and the recall within
5 cm / 5° against the dataset's poses (both backends must agree). Needs a map with a reference model for --refine
rows (``make demo`` writes both).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.evaluation.report import machine_info, write_json  # noqa: E402
from reloc_ros.localizer import Localizer  # noqa: E402
from reloc_ros.metrics import pose_error  # noqa: E402


def run(args) -> dict:
    frames = open_dataset(args.dataset, frames=str(Path(args.dataset) / args.frames))
    frames = [frames[i] for i in range(min(args.limit, len(frames)))]
    out = {}
    for refine in (False, True):
        locs = {b: Localizer.from_map(args.map, refine=refine, front_end_options={"encoder_backend": b})
                for b in ("torch", "onnxruntime")}
        for loc in locs.values():  # warm-up (first-call allocations, the ONNX export / session)
            loc.localize(frames[0].image, frames[0].camera)
        rows = {b: {"total": [], "encoder": [], "ok": 0} for b in locs}
        for f in frames:
            for b, loc in locs.items():
                t0 = time.perf_counter()
                r = loc.localize(f.image, f.camera)
                rows[b]["total"].append((time.perf_counter() - t0) * 1e3)
                rows[b]["encoder"].append(r.timings_ms.get("encoder", float("nan")))
                if r.success:
                    dt, dr = pose_error(r.T_world_cam, f.T_world_cam)
                    rows[b]["ok"] += int(dt < 0.05 and dr < 5.0)
        for b, v in rows.items():
            key = f"{b}{'+refine' if refine else ''}"
            out[key] = {"ms_median": float(np.median(v["total"])), "ms_p95": float(np.percentile(v["total"], 95)),
                        "encoder_ms_median": float(np.nanmedian(v["encoder"])),
                        "recall_5cm_5deg": v["ok"] / len(frames), "n": len(frames),
                        "precision": locs[b].precision, "backends": locs[b].backends}
            print(f"{key:22s} {out[key]['ms_median']:6.1f} ms median  {out[key]['ms_p95']:6.1f} p95   encoder "
                  f"{out[key]['encoder_ms_median']:5.1f} ms   5cm/5deg {100 * out[key]['recall_5cm_5deg']:.1f} %",
                  flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--map", type=Path, default=REPO / "out" / "demo" / "ace.map.safetensors")
    p.add_argument("--dataset", type=Path, default=REPO / "out" / "demo" / "scene")
    p.add_argument("--frames", default="query.txt")
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "encoder_backend.json")
    args = p.parse_args(argv)
    res = {"results": run(args), "map": str(args.map), "dataset": str(args.dataset), "machine": machine_info(),
           "command": "benchmarks/bench_encoder_backend.py " + " ".join(argv or sys.argv[1:])}
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

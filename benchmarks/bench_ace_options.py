"""A/B of ACE front-end options (and of the refinement) on real queries, interleaved per query (load swings hit
every configuration alike).

For each query every configuration localizes the same image in turn; prints and writes median error, recalls and
median per-stage latency (wall, ms) per configuration.

  .venv/bin/python benchmarks/bench_ace_options.py --map out/bench7/ace10.map.safetensors \
      --dataset ../shared/data/7scenes-redkitchen --threads 2 --json benchmarks/results/ace_options.json \
      --configs '{"fp32_all": {"encoder_precision": "fp32", "cell_stride": 1}, "default": {}}'

A configuration may also hold ``"refine": true`` and ``"refiner_options": {...}`` (the map's reference model is
then loaded and the pose refined, as ``reloc-eval --refine``); its other keys are ACE front-end options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.evaluation.report import machine_info, write_json  # noqa: E402
from reloc_ros.localizer import Localizer  # noqa: E402
from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--map", required=True, type=Path)
    ap.add_argument("--dataset", required=True, type=Path)
    ap.add_argument("--frames", help="frame list (default: query.txt of the dataset)")
    ap.add_argument("--configs", required=True, help="JSON object: name -> ACE front-end options (+ refine, "
                    "refiner_options)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--stride", type=int, default=1, help="every k-th query")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = json.loads(args.configs)
    ds = open_dataset(args.dataset, frames=args.frames or args.dataset / "query.txt")
    locs = {}
    for n, c in configs.items():
        c = dict(c)
        refine, refiner_options = bool(c.pop("refine", False)), c.pop("refiner_options", None)
        locs[n] = Localizer.from_map(args.map, refine=refine, refiner_options=refiner_options, front_end_options=c)
    rec = {n: {"t": [], "r": [], "stages": {}} for n in configs}
    for i in tqdm(range(0, len(ds), args.stride), desc="queries"):
        f = ds[i]
        for n, loc in locs.items():
            r = loc.localize(f.image, f.camera)
            t, rot = pose_error(r.T_world_cam if r.success else None, f.T_world_cam)
            rec[n]["t"].append(t)
            rec[n]["r"].append(rot)
            for k, v in r.timings_ms.items():
                rec[n]["stages"].setdefault(k, []).append(v)
    out = {"map": str(args.map), "threads": args.threads, "stride": args.stride, "machine": machine_info(),
           "configs": {}}
    for n, d in rec.items():
        s = summarize_errors(d["t"], d["r"])
        s["stage_ms_median"] = {k: float(np.median(v)) for k, v in d["stages"].items()}
        s["total_ms_p95"] = float(np.percentile(d["stages"]["total"], 95))
        s["options"] = locs[n].front_end.options
        s["refiner_options"] = locs[n].refiner.conf if locs[n].refine else None
        out["configs"][n] = s
        print(f"{n:12s} {100 * s['median_translation_m']:.2f} cm / {s['median_rotation_deg']:.2f} deg  "
              f"2cm2° {100 * s['recall_2cm_2deg']:.1f}  5cm5° {100 * s['recall_5cm_5deg']:.1f}  "
              f"10cm5° {100 * s['recall_10cm_5deg']:.1f}  ms " +
              " ".join(f"{k} {v:.1f}" for k, v in s["stage_ms_median"].items()))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does per-channel standardisation of XFeat features help the ACE head? One shared buffer, two heads trained for the
same number of iterations (with / without standardisation), evaluated on every n-th query of 7-Scenes redkitchen.

    nice -n 10 .venv/bin/python benchmarks/bench_ace_standardize.py --iterations 500 --stride 4 --threads 1

Prints the two summaries and merges them into --json (default benchmarks/bench_ace.json) under "standardize".
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_ace import DEFAULT_DATA, _merge_json  # noqa: E402
from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.frontends.ace.buffer import fill_buffer  # noqa: E402
from reloc_ros.frontends.ace.encoders import make_encoder  # noqa: E402
from reloc_ros.frontends.ace.frontend import AceFrontEnd  # noqa: E402
from reloc_ros.frontends.ace.train import DEFAULT_CONF, train  # noqa: E402
from reloc_ros.map_file import load_map  # noqa: E402
from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "bench_ace.json")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--buffer-size", type=int, default=600_000)
    p.add_argument("--cells-per-view", type=int, default=2000)
    p.add_argument("--head-width", type=int, default=256)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/ace_std"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = open_dataset(args.data, frames=str(args.data / "mapping.txt"))
    qs = open_dataset(args.data, frames=str(args.data / "query.txt"))
    conf = {**DEFAULT_CONF, "buffer_size": args.buffer_size, "cells_per_view": args.cells_per_view,
            "head_width": args.head_width, "iterations": args.iterations, "minutes": 60.0,
            "checkpoint_every_s": 0, "num_threads": args.threads}
    t0 = time.perf_counter()
    buf = fill_buffer(ds, make_encoder("xfeat"), conf, np.random.default_rng(0))
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "buffer_s": round(time.perf_counter() - t0, 1),
           "conf": {k: conf[k] for k in ("buffer_size", "cells_per_view", "head_width", "iterations")},
           "stride": args.stride}
    args.out.mkdir(parents=True, exist_ok=True)
    for std in (True, False):
        path = args.out / f"std_{std}.map.safetensors"
        t1 = time.perf_counter()
        train({**conf, "standardize_features": std}, ds, path, buffer=buf)
        train_s = time.perf_counter() - t1
        tensors, meta = load_map(path)
        fe = AceFrontEnd.from_map(tensors, meta, num_cells=None)
        errs = [pose_error(r.T_world_cam if r.success else None, qs[i].T_world_cam)
                for i in range(0, len(qs), args.stride) for r in [fe.localize(qs[i].image, qs[i].camera)]]
        e = np.array(errs)
        s = summarize_errors(e[:, 0], e[:, 1])
        s.update(train_s=round(train_s, 1), final_loss=meta["training"]["final_loss"])
        out[f"standardize_{std}"] = s
        print(f"standardize={std}: median {100 * s['median_translation_m']:.1f} cm / {s['median_rotation_deg']:.2f} "
              f"deg, 5cm5 {100 * s['recall_5cm_5deg']:.1f} %, 10cm5 {100 * s['recall_10cm_5deg']:.1f} %, "
              f"final loss {s['final_loss']:.2f}, {s['train_s']} s", flush=True)
    _merge_json(args.json, "standardize", None, out)


if __name__ == "__main__":
    main()

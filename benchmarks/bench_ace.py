"""ACE front end benchmark: map 7-Scenes redkitchen (mapping.txt) under a time budget, localize query.txt with
several RANSAC variants, and measure per-stage latency at 480×640.

    nice -n 10 .venv/bin/python benchmarks/bench_ace.py map  --minutes 10 --threads 1 --map /tmp/ace_kitchen.map.safetensors
    nice -n 10 .venv/bin/python benchmarks/bench_ace.py eval --map /tmp/ace_kitchen.map.safetensors
    nice -n 10 .venv/bin/python benchmarks/bench_ace.py latency --threads 2

Every mode prints its numbers and merges them into the JSON file given by --json (default benchmarks/bench_ace.json)
under the mode's key (``map``/``eval`` results keyed by the map file name).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.estimators.pnp import pnp_ransac  # noqa: E402
from reloc_ros.frontends.ace.encoders import AceEncoderNet, make_encoder, rgb_to_gray_tensor  # noqa: E402
from reloc_ros.frontends.ace.frontend import AceFrontEnd  # noqa: E402
from reloc_ros.frontends.ace.head import SceneCoordinateHead  # noqa: E402
from reloc_ros.frontends.ace.train import train  # noqa: E402
from reloc_ros.precision import autocast_context  # noqa: E402
from reloc_ros.geometry.camera import Camera  # noqa: E402
from reloc_ros.map_file import load_map  # noqa: E402
from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("RELOC_ROS_7SCENES", REPO.parent / "shared" / "data" / "7scenes-redkitchen"))

# (name, backend, num_cells, threshold_px)
EVAL_CONFIGS = [
    ("opencv_usac_2000", "opencv", 2000, 10.0),
    ("opencv_usac_all", "opencv", None, 10.0),
    ("poselib_2000", "poselib", 2000, 10.0),
    ("poselib_all", "poselib", None, 10.0),
    ("pycolmap_2000", "pycolmap", 2000, 10.0),
]


def _merge_json(path: Path, key: str, sub: str | None, value: dict):
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("machine", {"cpu_threads": os.cpu_count(), "platform": platform.platform(),
                                "torch": torch.__version__, "note": "2 shared CPU cores; timings are noisy"})
    if sub is None:
        data[key] = value
    else:
        data.setdefault(key, {})[sub] = value
    path.write_text(json.dumps(data, indent=2))


def cmd_map(args):
    ds = open_dataset(args.data, frames=str(Path(args.data) / "mapping.txt"))
    conf = {"minutes": args.minutes, "num_threads": args.threads, "precision": args.precision,
            "standardize_features": not args.no_standardize, "checkpoint_every_s": 120.0}
    for key in ("buffer_size", "head_width", "cells_per_view"):  # None: the front end's DEFAULT_CONF
        if getattr(args, key) is not None:
            conf[key] = getattr(args, key)
    if args.encoder:
        conf["encoder"] = args.encoder
    t0 = time.perf_counter()
    train(conf, ds, args.map)
    wall = time.perf_counter() - t0
    _, meta = load_map(args.map)
    tr = meta["training"]
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "wall_s": round(wall, 1),
           "iterations": tr["iterations"], "train_s": tr["train_seconds"], "buffer_s": tr["buffer_seconds"],
           "buffer_size": tr["buffer_size"], "final_loss": tr["final_loss"], "conf": conf,
           "map_bytes": Path(args.map).stat().st_size}
    print(json.dumps(out, indent=2))
    _merge_json(args.json, "map", Path(args.map).name, out)


def cmd_eval(args):
    torch.set_num_threads(args.threads)
    tensors, meta = load_map(args.map)
    fe = AceFrontEnd.from_map(tensors, meta, head_precision=args.precision, min_inliers=args.min_inliers)
    qs = open_dataset(args.data, frames=str(Path(args.data) / "query.txt"))
    idx = list(range(0, len(qs), args.stride))
    errs = {c[0]: [] for c in EVAL_CONFIGS}
    solver_ms = {c[0]: [] for c in EVAL_CONFIGS}
    net_ms = {"preprocess": [], "encoder": [], "head_all": []}
    from tqdm import tqdm
    for i in tqdm(idx, desc="queries", mininterval=5):
        f = qs[i]
        tm = {}
        uv, X, score, cam = fe.predict(f.image, f.camera, tm, num_cells=None)
        net_ms["preprocess"].append(tm["preprocess"])
        net_ms["encoder"].append(tm["encoder"])
        net_ms["head_all"].append(tm["head"])
        order = np.argsort(-score) if score is not None else np.arange(len(uv))
        for name, backend, k, thr in EVAL_CONFIGS:
            sel = order[:k] if k is not None else order
            t0 = time.perf_counter()
            res = fe.solve(uv[sel], X[sel], cam, backend=backend, threshold_px=thr)
            solver_ms[name].append((time.perf_counter() - t0) * 1e3)
            errs[name].append(pose_error(res.T_world_cam if res.success else None, f.T_world_cam))
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "n_queries": len(idx),
           "training": {k: meta["training"][k] for k in ("iterations", "train_seconds", "buffer_seconds")},
           "median_ms": {k: round(float(np.median(v)), 1) for k, v in net_ms.items()}, "configs": {}}
    for name, *_ in EVAL_CONFIGS:
        e = np.array(errs[name])
        s = summarize_errors(e[:, 0], e[:, 1])
        s["median_solver_ms"] = round(float(np.median(solver_ms[name])), 1)
        out["configs"][name] = s
        print(f"{name:18s} median {100 * s['median_translation_m']:.1f} cm / {s['median_rotation_deg']:.2f} deg  "
              f"2cm2: {100 * s['recall_2cm_2deg']:.1f}%  5cm5: {100 * s['recall_5cm_5deg']:.1f}%  "
              f"10cm5: {100 * s['recall_10cm_5deg']:.1f}%  failed {s['n_failed']}  solver {s['median_solver_ms']} ms")
    print("median ms:", out["median_ms"])
    _merge_json(args.json, "eval", Path(args.map).name, out)


def _time(fn, n):
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(ts)), 1)


@torch.inference_mode()
def cmd_latency(args):
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "threads": args.threads, "repeats": args.n}
    gray = rgb_to_gray_tensor(img)
    out["preprocess_ms"] = _time(lambda: rgb_to_gray_tensor(img), args.n)
    xf = make_encoder("xfeat")
    ace = AceEncoderNet(512).eval()  # random weights: the architecture's cost, not its accuracy
    for prec in ("fp32", "bf16"):
        with autocast_context("cpu", prec):
            out[f"xfeat_encoder_{prec}_ms"] = _time(lambda: xf(gray), args.n)
            out[f"ace_encoder_{prec}_ms"] = _time(lambda: ace((gray - 0.4) / 0.25), max(3, args.n // 3))
    for dim, width in ((64, 256), (64, 512), (512, 512)):
        head = SceneCoordinateHead(dim, width, 1, True).eval()
        for cells in (2000, 4800):
            x = torch.randn(cells, dim)
            for prec in ("fp32", "bf16"):
                with autocast_context("cpu", prec):
                    out[f"head_in{dim}_w{width}_{cells}cells_{prec}_ms"] = _time(lambda: head(x), args.n)
    cam = Camera.from_pinhole(525, 525, 319.5, 239.5, 640, 480)
    for cells in (2000, 4800):
        uv = np.stack([rng.uniform(0, 639, cells), rng.uniform(0, 479, cells)], -1)
        Xc = cam.backproject(uv, rng.uniform(0.8, 3.5, cells))
        uvn = uv + rng.normal(scale=2.0, size=uv.shape)
        out_mask = rng.random(cells) < 0.6
        uvn[out_mask] = np.stack([rng.uniform(0, 639, out_mask.sum()), rng.uniform(0, 479, out_mask.sum())], -1)
        for backend in ("opencv", "poselib", "pycolmap"):
            out[f"ransac_{backend}_{cells}pts_40pct_inliers_ms"] = _time(
                lambda: pnp_ransac(uvn, Xc, cam, threshold_px=10.0, backend=backend), args.n)
    print(json.dumps(out, indent=2))
    _merge_json(args.json, f"latency_{args.threads}threads", None, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["map", "eval", "latency"])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--map", type=Path, default=Path("/tmp/ace_kitchen.map.safetensors"))
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "bench_ace.json")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--buffer-size", type=int, default=None)
    p.add_argument("--head-width", type=int, default=None)
    p.add_argument("--cells-per-view", type=int, default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--encoder", default=None)
    p.add_argument("--no-standardize", action="store_true")
    p.add_argument("--stride", type=int, default=1, help="evaluate every n-th query")
    p.add_argument("--min-inliers", type=int, default=30)
    p.add_argument("--n", type=int, default=15, help="latency repeats (median)")
    args = p.parse_args(argv)
    {"map": cmd_map, "eval": cmd_eval, "latency": cmd_latency}[args.mode](args)


if __name__ == "__main__":
    main()

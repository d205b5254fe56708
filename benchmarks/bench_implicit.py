"""Benchmarks of the implicit front end: accuracy vs mapping time on 7-Scenes redkitchen, and latency.

  accuracy: map on mapping.txt for --minutes (snapshots at --snapshots minutes), localize every query.txt frame
            with each snapshot; median translation / rotation error, recalls, ms per query, covariance calibration.
  latency:  network + Kabsch at --height x --width on --threads threads, fp32 and bf16 (random weights: timing
            does not depend on them), median over --runs.

Run with nice and the allocator fix, e.g.:
  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296 \\
  nice -n 10 .venv/bin/python benchmarks/bench_implicit.py latency --out benchmarks/implicit_latency.json
  nice -n 10 .venv/bin/python benchmarks/bench_implicit.py accuracy --minutes 20 --snapshots 5 10 \\
      --out benchmarks/implicit_accuracy.json
"""
from __future__ import annotations

import argparse
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

from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402

DATA = Path(os.environ.get("RELOC_ROS_7SCENES", REPO.parent / "shared" / "data" / "7scenes-redkitchen"))


def evaluate(map_path: Path, data: Path, threads: int, bf16: bool = False, limit: int | None = None) -> dict:
    from reloc_ros.datasets import open_dataset
    from reloc_ros.frontends.implicit.frontend import load_implicit_map

    torch.set_num_threads(threads)
    fe = load_implicit_map(map_path, "cpu", precision="bf16" if bf16 else "fp32")
    ds = open_dataset(data, frames=data / "query.txt", load_depth=False)
    idx = range(len(ds)) if limit is None else np.linspace(0, len(ds) - 1, limit).astype(int)
    t_err, r_err, ms, z2, conf = [], [], [], [], []
    for i in idx:
        fr = ds[int(i)]
        res = fe.localize(fr.image, fr.camera)
        te, re = pose_error(res.T_world_cam if res.success else None, fr.T_world_cam)
        t_err.append(te)
        r_err.append(re)
        conf.append(res.confidence)
        if res.success:
            ms.append(res.timings_ms["total"])
            # squared position error normalised by the predicted position variance (≈ 3 if calibrated)
            d = res.T_world_cam[:3, 3] - fr.T_world_cam[:3, 3]
            z2.append(float(d @ np.linalg.solve(res.covariance[:3, :3], d)))
    out = summarize_errors(t_err, r_err)
    out["ms_per_query_median"] = float(np.median(ms)) if ms else float("nan")
    out["position_nees_median"] = float(np.median(z2)) if z2 else float("nan")
    out["confidence_median"] = float(np.median(conf))
    te = np.asarray(t_err)
    c = np.asarray(conf)
    if np.isfinite(te).sum() > 10:
        out["spearman_conf_vs_terr"] = float(np.corrcoef(np.argsort(np.argsort(c)), np.argsort(np.argsort(te)))[0, 1])
    return out


def cmd_accuracy(args) -> dict:
    from reloc_ros.datasets import open_dataset
    from reloc_ros.frontends.implicit.train import train

    ds = open_dataset(args.data, frames=args.data / "mapping.txt", load_depth=False)
    out_path = Path(args.map)
    conf = {"minutes": args.minutes, "snapshot_minutes": args.snapshots, "threads": args.threads,
            **json.loads(args.conf)}
    t0 = time.time()
    if not args.eval_only:
        train(conf, ds, out_path)
    wall = time.time() - t0
    results = {"conf": conf, "mapping_wall_s": wall, "snapshots": {}}
    stem = out_path.name.split(".")[0]
    for m in args.snapshots:
        p = out_path.with_name(f"{stem}.{m:g}min.safetensors")
        if p.is_file():
            results["snapshots"][f"{m:g}min"] = evaluate(p, args.data, args.threads, limit=args.limit)
            print(f"{m:g} min:", json.dumps(results["snapshots"][f"{m:g}min"]), flush=True)
    results["snapshots"][f"{args.minutes:g}min(final)"] = r = evaluate(out_path, args.data, args.threads,
                                                                        limit=args.limit)
    print("final:", json.dumps(r), flush=True)
    return results


def _median_ms(fn, runs: int) -> tuple[float, float]:
    """(median wall ms, median process CPU ms). On a shared machine the wall time includes waiting for a core;
    with 1 thread the CPU time is what the call costs on an idle core (a floor for the wall time)."""
    for _ in range(3):
        fn()
    ts, cs = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(1e3 * (time.perf_counter() - t))
        cs.append(1e3 * (time.process_time() - c))
    return float(np.median(ts)), float(np.median(cs))


def cmd_latency(args) -> dict:
    from reloc_ros.frontends.implicit.frontend import ImplicitFrontEnd
    from reloc_ros.frontends.implicit.train import DEFAULT_CONF, map_metadata
    from reloc_ros.frontends.implicit.model import ImplicitPoseNet
    from reloc_ros.geometry.camera import Camera

    torch.set_num_threads(args.threads)
    conf = {**DEFAULT_CONF, "image_width": args.width, "image_height": args.height, **json.loads(args.conf)}
    net = ImplicitPoseNet(conf["arch"], conf["output_stride"], conf["dilated"], conf["head_channels"],
                          conf["head_layers"])
    meta = map_metadata(conf, np.eye(3), [0, 0, 0], 1.0, {})
    meta["implicit_version"] = 1
    cam = Camera.from_pinhole(525 * args.width / 640, 525 * args.width / 640, args.width / 2 - 0.5,
                              args.height / 2 - 0.5, args.width, args.height)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    res = {"conf": {k: conf[k] for k in ("arch", "output_stride", "head_channels", "head_layers")},
           "load_average_before": os.getloadavg(),
           "size": [args.height, args.width], "threads": args.threads}
    for bf16 in (False, True):
        fe = ImplicitFrontEnd.from_map(net.state_dict(), meta, "cpu", precision="bf16" if bf16 else "fp32",
                                       min_weight_mass=0.0)
        x, cin = fe.preprocess(img, cam)
        rays = fe._rays_for(cin)

        @torch.inference_mode()
        def net_kabsch():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                o = fe.model(x)
            return ImplicitPoseNet.solve(ImplicitPoseNet.camera_points(o["depth"], rays), o["scene"], o["weight"])

        @torch.inference_mode()
        def net_only():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return fe.model(x)

        key = "bf16" if bf16 else "fp32"
        for name, fn in (("network", net_only), ("network_kabsch", net_kabsch),
                         ("localize_total", lambda: fe.localize(img, cam))):
            res[f"{key}_{name}_ms"], res[f"{key}_{name}_cpu_ms"] = _median_ms(fn, args.runs)
        stages = [fe.localize(img, cam).timings_ms for _ in range(args.runs)]
        for st in ("preprocess", "network", "solver", "total"):
            res[f"{key}_stage_{st}_ms"] = float(np.median([s_[st] for s_ in stages]))
        print(key, {k: round(v, 2) for k, v in res.items() if k.startswith(key)}, flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["accuracy", "latency"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--map", default="/tmp/implicit_bench/redkitchen.map.safetensors")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--snapshots", type=float, nargs="*", default=[5.0, 10.0])
    ap.add_argument("--limit", type=int, default=None, help="evaluate on this many evenly spaced queries")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--conf", default="{}", help="JSON overrides of the mapping options (DEFAULT_CONF)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = cmd_accuracy(args) if args.mode == "accuracy" else cmd_latency(args)
    res.update(mode=args.mode, date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.machine(),
               cpu_count=os.cpu_count(), torch=torch.__version__,
               glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

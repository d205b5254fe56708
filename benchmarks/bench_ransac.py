"""RANSAC backends on the same ACE predictions: OpenCV USAC_FAST, poselib / pycolmap LO-RANSAC, DSAC*-style.

    nice -n 10 .venv/bin/python benchmarks/bench_ransac.py --map out/bench7/ace10.map.safetensors [--stride 1]

Step 1 runs ``AceFrontEnd.predict`` (all cells, the front end's default) once per query of ``query.txt`` and caches
(uv, X, camera, ground truth) to an .npz under out/ (reused when present). Step 2 solves every query with every
configuration, the configurations in a fresh random order per query (interleaved: load changes on this shared
machine hit all of them alike), with the front end's RANSAC options (threshold 10 px, 10⁴ iterations, confidence
0.9999, 30 inliers minimum). Prints a markdown table and writes JSON (accuracy via ``reloc_ros.metrics``, solver ms
p50 / p95).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.estimators.pnp import pnp_ransac  # noqa: E402
from reloc_ros.frontends.ace.frontend import DEFAULT_OPTIONS  # noqa: E402
from reloc_ros.geometry.camera import Camera  # noqa: E402
from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("RELOC_ROS_7SCENES", REPO.parent / "shared" / "data" / "7scenes-redkitchen"))

# name -> (backend, backend_options or None)
CONFIGS = {
    "opencv": ("opencv", None),
    "poselib": ("poselib", None),
    "pycolmap": ("pycolmap", None),
    "dsac64": ("dsac", {"num_hypotheses": 64}),
    "dsac256": ("dsac", {"num_hypotheses": 256}),
}


def predict_cache(map_path: Path, data: Path, stride: int, cache: Path, threads: int) -> dict:
    """ACE predictions for every ``stride``-th query, cached as .npz (X float32 is lossless: the head is ≤ fp32)."""
    if cache.exists():
        z = np.load(cache)
        print(f"using cached predictions {cache} ({len(z['names'])} queries)")
        return dict(z)
    import torch
    from tqdm import tqdm

    from reloc_ros.datasets import open_dataset
    from reloc_ros.frontends.ace.frontend import AceFrontEnd
    from reloc_ros.map_file import load_map

    torch.set_num_threads(threads)
    fe = AceFrontEnd.from_map(*load_map(map_path))
    qs = open_dataset(data, frames=str(data / "query.txt"))
    idx = list(range(0, len(qs), stride))
    uvs, Xs, Ks, dists, sizes, Ts, names, head_ms = [], [], [], [], [], [], [], []
    for i in tqdm(idx, desc="predict", mininterval=5):
        f = qs[i]
        tm = {}
        uv, X, _, cam = fe.predict(f.image, f.camera, tm, num_cells=None)
        uvs.append(uv.astype(np.float32))
        Xs.append(X.astype(np.float32))
        Ks.append(cam.K)
        dists.append(cam.dist)
        sizes.append((cam.width, cam.height))
        Ts.append(f.T_world_cam)
        names.append(f.name)
        head_ms.append(tm["encoder"] + tm["head"])
    if len({len(u) for u in uvs}) != 1:
        raise RuntimeError("queries gave different numbers of cells; the cache expects one image size")
    out = {"uv": np.stack(uvs), "X": np.stack(Xs), "K": np.stack(Ks), "dist": np.stack(dists),
           "size": np.array(sizes), "T_world_cam": np.stack(Ts), "names": np.array(names),
           "network_ms": np.array(head_ms), "map": np.array(str(map_path))}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(cache)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", type=Path, default=REPO / "out" / "bench7" / "ace10.map.safetensors")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--stride", type=int, default=1, help="every n-th query of query.txt")
    ap.add_argument("--cache", type=Path, default=None, help="default out/bench_ransac/<map stem>_s<stride>.npz")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the predictions")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "bench_ransac.json")
    args = ap.parse_args(argv)
    cache = args.cache or REPO / "out" / "bench_ransac" / f"{args.map.name.split('.')[0]}_s{args.stride}.npz"
    P = predict_cache(args.map, args.data, args.stride, cache, args.threads)
    o = DEFAULT_OPTIONS
    rng = np.random.default_rng(0)
    errs = {c: [] for c in args.configs}
    ms = {c: [] for c in args.configs}
    inl = {c: [] for c in args.configs}
    from tqdm import tqdm
    n = len(P["names"])
    for q in tqdm(range(n), desc="solve", mininterval=5):
        w, h = (int(v) for v in P["size"][q])
        K = P["K"][q]
        cam = Camera.from_pinhole(K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h, P["dist"][q])
        uv, X = P["uv"][q].astype(np.float64), P["X"][q].astype(np.float64)
        finite = np.all(np.isfinite(X), 1)
        uv, X = uv[finite], X[finite]
        for c in rng.permutation(args.configs):
            backend, bo = CONFIGS[c]
            if backend == "dsac":
                bo = {**bo, "seed": q}
            t0 = time.perf_counter()
            res = pnp_ransac(uv, X, cam, threshold_px=o["threshold_px"], max_iterations=o["max_iterations"],
                             confidence=o["confidence"], min_inliers=o["min_inliers"], backend=backend,
                             backend_options=bo)
            ms[c].append((time.perf_counter() - t0) * 1e3)
            errs[c].append(pose_error(res.T_world_cam if res.success else None, P["T_world_cam"][q]))
            inl[c].append(res.num_inliers)
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
           "cpu_count": os.cpu_count(), "loadavg_end": os.getloadavg(), "map": str(args.map), "stride": args.stride,
           "n_queries": n, "threshold_px": o["threshold_px"], "configs": {}}
    print(f"\n{n} queries (stride {args.stride}), map {args.map}")
    print("| backend | median t / R | 2cm/2° | 5cm/5° | 10cm/5° | failed | inliers (median) | solver ms p50 / p95 |")
    print("|---|---|---|---|---|---|---|---|")
    for c in args.configs:
        e = np.array(errs[c])
        s = summarize_errors(e[:, 0], e[:, 1])
        s.update(backend=CONFIGS[c][0], backend_options=CONFIGS[c][1],
                 solver_ms_p50=round(float(np.percentile(ms[c], 50)), 2),
                 solver_ms_p95=round(float(np.percentile(ms[c], 95)), 2),
                 median_inliers=float(np.median(inl[c])))
        out["configs"][c] = s
        print(f"| {c} | {100 * s['median_translation_m']:.1f} cm / {s['median_rotation_deg']:.2f}° | "
              f"{100 * s['recall_2cm_2deg']:.1f} % | {100 * s['recall_5cm_5deg']:.1f} % | "
              f"{100 * s['recall_10cm_5deg']:.1f} % | {s['n_failed']} | {s['median_inliers']:.0f} | "
              f"{s['solver_ms_p50']:.1f} / {s['solver_ms_p95']:.1f} |")
    # paired view against the first configuration: queries within 10 cm/5° for one and not the other
    ref = args.configs[0]
    ok = {c: np.array([(t <= 0.10) and (r <= 5.0) for t, r in errs[c]]) for c in args.configs}
    for c in args.configs[1:]:
        gained, lost = int(np.sum(ok[c] & ~ok[ref])), int(np.sum(~ok[c] & ok[ref]))
        out["configs"][c][f"vs_{ref}_10cm5deg_gained_lost"] = [gained, lost]
        print(f"{c} vs {ref} at 10 cm/5°: {gained} queries gained, {lost} lost")
    out["per_query"] = {"names": [str(x) for x in P["names"]],
                        **{c: [[round(t, 5), round(r, 4)] for t, r in errs[c]] for c in args.configs},
                        **{f"{c}_solver_ms": [round(v, 2) for v in ms[c]] for c in args.configs}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Triangulated reference model (pycolmap, known poses) vs the depth back-projection.

    # build a triangulated reference of a dataset's mapping frames (prints time, size, statistics; writes JSON)
    python benchmarks/bench_triangulation.py build --data /work/shared/data/7scenes-redkitchen \
        --out out/bench7/ace10_tri.ref.safetensors --json benchmarks/results_triangulation_build.json \
        [--conf '{"gray": "mean"}'] [--tri-conf '{"max_features": 4096}'] [--tri-cache out/bench7/tri.pkl]
    # triangulated points vs the dataset's depth (registered, or identity-registered with --unregistered-depth)
    python benchmarks/bench_triangulation.py depth-check --data DATA --ref REF [--unregistered-depth identity]

The refinement itself is measured with ``reloc-eval --refine --reference REF`` (see RESULTS_refinement.md).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.map_file import load_map  # noqa: E402
from reloc_ros.refinement.reference import build_reference, registered_depth  # noqa: E402
from reloc_ros.refinement.triangulation import triangulate_dataset  # noqa: E402


def _frames(data: Path, frames):
    if frames is None and (data / "mapping.txt").is_file():
        frames = data / "mapping.txt"
    return open_dataset(data, frames=frames)


def cmd_build(a) -> dict:
    ds = _frames(a.data, a.frames)
    conf = {"points": "triangulate", **json.loads(a.conf), "triangulation": json.loads(a.tri_conf)}
    t0 = time.perf_counter()
    tri, tri_secs = None, None
    if a.tri_cache is not None and a.tri_cache.is_file():  # reuse a saved triangulation (rebuilding references)
        tri = pickle.loads(a.tri_cache.read_bytes())
        if a.filter:
            tri = tri.filtered(**json.loads(a.filter))
    elif a.tri_cache is not None:
        from reloc_ros.refinement.reference import _Indexed
        indices = list(range(0, len(ds), int(conf.get("image_stride", 1))))
        tri = triangulate_dataset(_Indexed(ds, indices), conf["triangulation"])
        tri_secs = time.perf_counter() - t0
        a.tri_cache.parent.mkdir(parents=True, exist_ok=True)
        a.tri_cache.write_bytes(pickle.dumps(tri))
    out = build_reference(ds, a.out, conf, device=a.device, triangulation=tri)
    secs = time.perf_counter() - t0
    _, meta = load_map(out, kind="reference")
    res = {"data": str(a.data), "out": str(out), "n_frames": len(ds), "seconds": round(secs, 1), "filter": a.filter,
           "bytes": out.stat().st_size, "num_points": meta["num_points"], "triangulation": meta["triangulation"],
           "conf": conf, "triangulation_seconds": tri_secs, "tri_cache": str(a.tri_cache)}
    return res


def cmd_depth_check(a) -> dict:
    """Per stored entry: its 3D point in its reference image's camera vs the depth at its pixel (depth ray)."""
    ds = _frames(a.data, a.frames)
    tensors, meta = load_map(a.ref, kind="reference")
    names = meta["image_names"]
    offs = tensors["image_offsets"].numpy()
    xyz = tensors["points_xyz"].double().numpy()
    uv_all = tensors["points_uv"].double().numpy()
    errs, dz, smooth = [], [], []
    for j in np.linspace(0, len(names) - 1, min(a.n, len(names))).round().astype(int):
        fr = ds[ds.names.index(names[j])]
        depth = registered_depth(fr, a.unregistered_depth)
        s, e = offs[j], offs[j + 1]
        T = np.linalg.inv(fr.T_world_cam)
        Xc = xyz[s:e] @ T[:3, :3].T + T[:3, 3]
        px = np.round(uv_all[s:e]).astype(int)
        d = depth[px[:, 1], px[:, 0]]
        ok = d > 0
        # depth-smooth neighbourhood: the 5x5 window spans < 5 cm (away from occlusion edges / registration holes)
        valid = depth > 0
        k = np.ones((5, 5), np.uint8)
        span = cv2.dilate(np.where(valid, depth, 0), k) - cv2.erode(np.where(valid, depth, 1e6).astype(np.float32), k)
        smooth.append(span[px[ok, 1], px[ok, 0]] < 0.05)
        Xd = fr.camera.backproject(uv_all[s:e][ok], d[ok])
        errs.append(np.linalg.norm(Xd - Xc[ok], axis=1))
        dz.append(Xc[ok, 2] - d[ok])
    errs, dz, smooth = np.concatenate(errs), np.concatenate(dz), np.concatenate(smooth)
    return {"ref": str(a.ref), "n_entries": int(len(errs)), "median_3d_m": float(np.median(errs)),
            "p90_3d_m": float(np.percentile(errs, 90)), "median_dz_m": float(np.median(dz)),
            "within_5cm": float((errs < 0.05).mean()), "unregistered_depth": a.unregistered_depth,
            "smooth_share": float(smooth.mean()), "smooth_median_3d_m": float(np.median(errs[smooth])),
            "smooth_within_5cm": float((errs[smooth] < 0.05).mean()),
            "smooth_median_dz_m": float(np.median(dz[smooth]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--data", type=Path, required=True)
    b.add_argument("--frames")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--conf", default="{}", help="JSON overrides of reference.DEFAULT_CONF")
    b.add_argument("--tri-conf", default="{}", help="JSON overrides of triangulation.DEFAULT_TRIANGULATION_CONF")
    b.add_argument("--device", default="cpu")
    b.add_argument("--tri-cache", type=Path, help="pickle of the triangulation: written, or read when it exists")
    b.add_argument("--filter", help="JSON args of Triangulation.filtered applied to a cached triangulation")
    b.add_argument("--json", type=Path, required=True)
    d = sub.add_parser("depth-check")
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--frames")
    d.add_argument("--ref", type=Path, required=True)
    d.add_argument("--unregistered-depth", default="error")
    d.add_argument("--n", type=int, default=50, help="reference images checked (evenly spaced)")
    d.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    res = cmd_build(a) if a.cmd == "build" else cmd_depth_check(a)
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

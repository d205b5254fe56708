"""How consistent is a dataset's pseudo ground truth with its own images? Two checks behind the refinement results.

  sift       SIFT matches between each sampled mapping frame and its nearest views (at least ``--min-gap`` frames
             apart; Lowe ratio 0.75 + fundamental-matrix RANSAC, 2 px), each keypoint lifted with the frame's depth
             (registered to the colour camera with the extrinsic under test) and the pseudo-GT pose, and reprojected
             into the partner with its pseudo-GT pose. Reports the median reprojection error, the per-pair median
             2D shift (a pose disagreement moves all matches of a pair alike) and the residual once that shift is
             removed; ``--grid`` repeats it over depth-to-colour x offsets and depth scales (7-Scenes' depth is not
             registered: is the identity registration biased?).
  agreement  per 100-frame block of ``reloc-eval`` JSONs (their ``per_query`` poses): median error from the pseudo
             GT, median world-frame offset from it, and the median distance between the estimates of the runs.

Examples (results in benchmarks/RESULTS_refinement.md, sixth session):
  .venv/bin/python benchmarks/pgt_consistency.py sift --data ../shared/data/7scenes-redkitchen --grid \
      --json benchmarks/results/pgt_consistency_sift.json
  .venv/bin/python benchmarks/pgt_consistency.py agreement --data ../shared/data/7scenes-redkitchen \
      --evals benchmarks/results/redkitchen_eval_ace10_v2.json benchmarks/results/redkitchen_eval_ace10_refine_v5.json \
      benchmarks/results/redkitchen_eval_implicit20_refine_v5.json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.geometry.pose import invert_T, view_distance  # noqa: E402
from reloc_ros.refinement.reference import registered_depth  # noqa: E402


def _sift_pairs(ds, stride: int, partners: int, min_gap: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(i, j, keypoints in i, matched keypoints in j) for every ``stride``-th frame and its nearest views."""
    sift, bf, feats = cv2.SIFT_create(3000), cv2.BFMatcher(), {}
    poses = ds.poses()

    def features(i):
        if i not in feats:
            grey = cv2.cvtColor(ds[i].image, cv2.COLOR_RGB2GRAY)
            k, d = sift.detectAndCompute(grey, None)
            feats[i] = (np.array([p.pt for p in k]), d)
        return feats[i]

    pairs = []
    for i in tqdm(range(0, len(ds), stride), desc="SIFT pairs", unit="frame"):
        dist = view_distance(poses[i:i + 1], poses, 0.5)[0][0]
        near = [j for j in np.argsort(dist) if abs(j - i) >= min_gap][:partners]
        for j in near:
            (ki, di), (kj, dj) = features(i), features(int(j))
            good = [a for a, b in bf.knnMatch(di, dj, k=2) if a.distance < 0.75 * b.distance]
            if len(good) < 20:
                continue
            a, b = ki[[g.queryIdx for g in good]], kj[[g.trainIdx for g in good]]
            _, inl = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, 2.0, 0.999)
            if inl is not None:
                pairs.append((i, int(j), a[inl.ravel() > 0], b[inl.ravel() > 0]))
    return pairs


def _reprojection(frames: dict, cam, poses: np.ndarray, pairs, tx_m: float, depth_scale: float) -> dict:
    """Reprojection statistics (px) of the pairs with depth registered by an x offset ``tx_m`` and ``depth_scale``.
    ``frames``: the first frame of every pair by index (decoded once for all registrations)."""
    T_cam_depth = np.eye(4)
    T_cam_depth[0, 3] = tx_m
    depth = {i: registered_depth(replace(f, depth=f.depth * depth_scale, T_cam_depth=T_cam_depth))
             for i, f in frames.items()}
    errs, shifts, resid = [], [], []
    for i, j, a, b in pairs:
        px = np.round(a).astype(int)
        z = depth[i][np.clip(px[:, 1], 0, cam.height - 1), np.clip(px[:, 0], 0, cam.width - 1)]
        ok = z > 0
        if ok.sum() < 20:
            continue
        X = cam.backproject(a[ok], z[ok])
        T_ji = invert_T(poses[j]) @ poses[i]
        uv, vis = cam.project(X @ T_ji[:3, :3].T + T_ji[:3, 3])
        r = (uv - b[ok])[vis]
        if len(r) < 20:
            continue
        shift = np.median(r, 0)
        errs.append(np.linalg.norm(r, axis=1))
        shifts.append(np.linalg.norm(shift))
        resid.append(np.median(np.linalg.norm(r - shift, axis=1)))
    e = np.concatenate(errs)
    return {"tx_m": tx_m, "depth_scale": depth_scale, "pairs": len(shifts), "matches": int(e.size),
            "median_reprojection_px": float(np.median(e)), "median_pair_shift_px": float(np.median(shifts)),
            "median_residual_without_shift_px": float(np.median(resid))}


def sift_main(args) -> dict:
    ds = open_dataset(args.data, frames=Path(args.data) / "mapping.txt")
    pairs = _sift_pairs(ds, args.stride, args.partners, args.min_gap)
    grid = [(tx, s) for tx in (-0.05, -0.025, 0.0, 0.025, 0.05) for s in (0.98, 1.0, 1.02)] if args.grid else \
        [(0.0, 1.0)]
    frames = {i: ds[i] for i in sorted({pair[0] for pair in pairs})}
    rows = []
    for tx, s in tqdm(grid, desc="registrations", unit="setting"):
        rows.append(_reprojection(frames, ds.camera, ds.poses(), pairs, tx, s))
        print(json.dumps(rows[-1]), flush=True)
    return {"data": str(args.data), "stride": args.stride, "partners": args.partners, "min_gap": args.min_gap,
            "results": rows}


def agreement_main(args) -> dict:
    ds = open_dataset(args.data, frames=Path(args.data) / "query.txt")
    gt = dict(zip(ds.names, ds.poses()))
    runs = {}
    for path in args.evals:
        per_query = json.loads(Path(path).read_text())["per_query"]
        runs[Path(path).stem] = {q["name"]: np.asarray(q["T_world_cam"]) for q in per_query
                                 if q.get("T_world_cam") is not None}
    names = sorted(set.intersection(*(set(r) for r in runs.values())) & set(gt))
    blocks = sorted({int(n.rsplit("-", 1)[-1]) // 100 for n in names})
    out = []
    for blk in blocks:
        nb = [n for n in names if int(n.rsplit("-", 1)[-1]) // 100 == blk]
        row = {"frames": f"{blk * 100}-{blk * 100 + 99}", "n": len(nb)}
        for key, est in runs.items():
            d = np.array([est[n][:3, 3] - gt[n][:3, 3] for n in nb])
            row[key] = {"median_error_m": float(np.median(np.linalg.norm(d, axis=1))),
                        "median_offset_world_m": np.median(d, 0).round(4).tolist()}
        keys = list(runs)
        row["median_distance_between_m"] = {
            f"{a} | {b}": float(np.median([np.linalg.norm(runs[a][n][:3, 3] - runs[b][n][:3, 3]) for n in nb]))
            for k, a in enumerate(keys) for b in keys[k + 1:]}
        out.append(row)
        print(json.dumps(row), flush=True)
    return {"data": str(args.data), "evals": [str(p) for p in args.evals], "blocks": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sift")
    s.add_argument("--data", required=True)
    s.add_argument("--stride", type=int, default=5, help="every k-th mapping frame is matched (default 5)")
    s.add_argument("--partners", type=int, default=3, help="nearest views matched per frame (default 3)")
    s.add_argument("--min-gap", type=int, default=9, help="partners are at least this many frames away (default 9)")
    s.add_argument("--grid", action="store_true", help="also try depth-to-colour x offsets ±2.5/5 cm, scale ±2 %%")
    s.add_argument("--json")
    a = sub.add_parser("agreement")
    a.add_argument("--data", required=True)
    a.add_argument("--evals", nargs="+", required=True, help="reloc-eval JSON files with per_query poses")
    a.add_argument("--json")
    args = p.parse_args(argv)
    res = sift_main(args) if args.cmd == "sift" else agreement_main(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

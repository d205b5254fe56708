"""Featuremetric refinement benchmark: accuracy gain over a coarse pose, convergence basin, latency.

Without a front end, coarse poses are the ground truth perturbed by a log-normal error around the error
distribution the ACE-on-XFeat prototype showed (median ~4 cm / 1.3°; see /work/shared/notes). Modes:

  accuracy  recall / median error of the coarse and the refined poses over query frames (JSON + stdout)
  basin     success rate (refined within --success-t / --success-r of the ground truth) vs initial error,
            GT perturbed by exactly (t, r) at each level; writes JSON and a PNG plot
  latency   per-frame time (median, by stage) at --threads CPU threads

Example (7-Scenes redkitchen; depth registered with an identity extrinsic, see reloc_ros/refinement/reference.py):
  .venv/bin/python benchmarks/bench_refinement.py accuracy --data ../shared/data/7scenes-redkitchen \
      --ref /tmp/redkitchen.ref.safetensors --unregistered-depth identity --n 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.geometry.pose import perturb_T  # noqa: E402
from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402
from reloc_ros.refinement import FeaturemetricRefiner, build_reference  # noqa: E402


def _open(root: Path, split: str):
    return open_dataset(root, frames=root / f"{split}.txt")


def _reference(args) -> Path:
    ref = Path(args.ref)
    if not ref.is_file() or args.rebuild:
        conf = {"image_stride": args.image_stride}
        if args.unregistered_depth:
            conf["unregistered_depth"] = args.unregistered_depth
        t0 = time.perf_counter()
        build_reference(_open(Path(args.data), "mapping"), ref, conf)
        print(f"built {ref} in {time.perf_counter() - t0:.0f} s")
    print(f"reference {ref}: {ref.stat().st_size / 2**20:.1f} MiB")
    return ref


def _query_indices(n_total: int, n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_total - 1, min(n, n_total)).round().astype(int))


def run_accuracy(args, refiner, queries) -> dict:
    rng = np.random.default_rng(args.seed)
    e0, e1, reasons, rows = [], [], {}, []
    for i in tqdm(_query_indices(len(queries), args.n), desc="accuracy"):
        fr = queries[int(i)]
        t = float(rng.lognormal(np.log(args.t_median), args.sigma))
        r = float(rng.lognormal(np.log(args.r_median), args.sigma))
        T0 = perturb_T(fr.T_world_cam, t, r, rng)
        res = refiner.refine(fr.image, fr.camera, T0)
        e0.append(pose_error(T0, fr.T_world_cam))
        e1.append(pose_error(res.T_world_cam, fr.T_world_cam))
        reasons[res.reason] = reasons.get(res.reason, 0) + 1
        rows.append({"name": fr.name, "init": e0[-1], "refined": e1[-1], "reason": res.reason,
                     "iterations": res.iterations, "cost": [res.cost_initial, res.cost_final],
                     "inlier_ratio": res.inlier_ratio, "ms": res.timings_ms.get("total")})
    e0, e1 = np.array(e0), np.array(e1)
    ms = [r["ms"] for r in rows]
    return {"coarse": summarize_errors(e0[:, 0], e0[:, 1]), "refined": summarize_errors(e1[:, 0], e1[:, 1]),
            "reasons": reasons, "median_ms": float(np.median(ms)), "per_query": rows}


def run_basin(args, refiner, queries, out_png: Path) -> dict:
    levels = [(0.05, 2.0), (0.1, 4.0), (0.2, 8.0), (0.3, 12.0), (0.4, 16.0), (0.5, 20.0)]
    rng = np.random.default_rng(args.seed)
    idx = _query_indices(len(queries), args.n)
    frames = [queries[int(i)] for i in idx]
    out = []
    for t, r in levels:
        ok = acc = acc_wrong = 0
        for fr in tqdm(frames, desc=f"basin {t:.2f} m / {r:.0f} deg", leave=False):
            T0 = perturb_T(fr.T_world_cam, t, r, rng)
            res = refiner.refine(fr.image, fr.camera, T0)
            T_opt = res.T_refined if res.T_refined is not None else res.T_world_cam
            dt, dr = pose_error(T_opt, fr.T_world_cam)
            good = dt <= args.success_t and dr <= args.success_r
            ok += good
            acc += res.accepted and good
            acc_wrong += res.accepted and not good
        out.append({"init_t_m": t, "init_r_deg": r, "success_rate": ok / len(frames),
                    "accepted_and_success_rate": acc / len(frames),
                    "accepted_but_wrong_rate": acc_wrong / len(frames), "n": len(frames)})
        print(out[-1])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [o["init_t_m"] * 100 for o in out]
    ax.plot(x, [o["success_rate"] * 100 for o in out], "o-", label="optimiser converged")
    ax.plot(x, [o["accepted_and_success_rate"] * 100 for o in out], "s--", label="converged and accepted")
    ax.plot(x, [o["accepted_but_wrong_rate"] * 100 for o in out], "x:", color="tab:red",
            label="accepted but not converged")
    if args.baseline:  # an earlier basin run (e.g. without the matching initialisation), for comparison
        base = json.loads(Path(args.baseline).read_text())
        ax.plot([o["init_t_m"] * 100 for o in base["levels"]],
                [o["accepted_and_success_rate"] * 100 for o in base["levels"]], "s--", color="0.6",
                label="converged and accepted, refiner options " + (base["meta"]["args"]["conf"] if
                                                                     base["meta"]["args"]["conf"] != "{}" else
                                                                     "default"))
    ax.set_xticks(x, [f"{o['init_t_m'] * 100:.0f} cm\n{o['init_r_deg']:.0f}°" for o in out])
    ax.set_xlabel("initial error (translation, rotation)")
    ax.set_ylabel(f"% within {args.success_t * 100:.0f} cm / {args.success_r:.0f}°")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Refinement basin: {Path(args.data).name}, {len(frames)} queries per level\n"
                 f"refiner options {args.conf}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    return {"levels": out, "success_t_m": args.success_t, "success_r_deg": args.success_r}


def run_latency(args, refiner, queries) -> dict:
    rng = np.random.default_rng(args.seed)
    idx = _query_indices(len(queries), args.n)
    frames = [queries[int(i)] for i in idx]
    T0s = [perturb_T(fr.T_world_cam, args.t_median, args.r_median, rng) for fr in frames]
    for fr, T0 in zip(frames[:3], T0s[:3]):  # warm-up
        refiner.refine(fr.image, fr.camera, T0)
    stages: dict[str, list] = {}
    for _ in range(args.repeats):
        for fr, T0 in zip(frames, T0s):
            res = refiner.refine(fr.image, fr.camera, T0)
            for k, v in res.timings_ms.items():
                stages.setdefault(k, []).append(v)
            stages.setdefault("iterations", []).append(res.iterations)
    # min is the least disturbed by other processes on a shared machine; median / p90 show the disturbance
    return {k: {"min": float(np.min(v)), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}
            for k, v in stages.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["accuracy", "basin", "latency"])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "7scenes-redkitchen"))
    p.add_argument("--ref", required=True, help="reference model path (built from mapping.txt when missing)")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--unregistered-depth", default=None, choices=[None, "identity"])
    p.add_argument("--image-stride", type=int, default=1)
    p.add_argument("--n", type=int, default=100, help="number of query frames (evenly spaced)")
    p.add_argument("--t-median", type=float, default=0.04)
    p.add_argument("--r-median", type=float, default=1.3)
    p.add_argument("--sigma", type=float, default=0.5, help="log-normal spread of the coarse error")
    p.add_argument("--success-t", type=float, default=0.05)
    p.add_argument("--success-r", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conf", default="{}", help="JSON refiner options")
    p.add_argument("--baseline", default=None, help="basin: JSON of an earlier basin run to draw for comparison")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results_refinement_<mode>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = _reference(args)
    refiner = FeaturemetricRefiner.from_reference(ref, "cpu", **json.loads(args.conf))
    queries = _open(Path(args.data), "query")
    out = Path(args.out or REPO / "benchmarks" / f"results_refinement_{args.mode}.json")
    t0 = time.perf_counter()
    if args.mode == "accuracy":
        res = run_accuracy(args, refiner, queries)
        print("coarse ", json.dumps(res["coarse"]))
        print("refined", json.dumps(res["refined"]))
        print("reasons", res["reasons"], "median ms", round(res["median_ms"], 1))
    elif args.mode == "basin":
        res = run_basin(args, refiner, queries, out.with_suffix(".png"))
    else:
        res = run_latency(args, refiner, queries)
        print(json.dumps(res, indent=1))
    res["meta"] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.node()} {os.cpu_count()} CPUs (shared, noisy), torch {torch.__version__}",
                   "reference_mib": ref.stat().st_size / 2**20, "refiner_conf": refiner.conf,
                   "wall_s": time.perf_counter() - t0}
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

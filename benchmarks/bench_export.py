"""A map's exported graphs (reloc-export) against torch on real queries, in one run: scene-coordinate parity, pose
recall parity and per-stage latency at 1 and 2 threads. ACE maps: the same PnP/RANSAC on each pipeline's scene
coordinates; implicit maps: each pipeline's whole front end (network + weighted Kabsch).

    python benchmarks/bench_export.py --map ace.map.safetensors --dataset ../shared/data/7scenes-redkitchen \
        [--limit 100] [--threads 1,2] --json benchmarks/results/export/redkitchen_ace.json

Pipelines, interleaved frame by frame: "torch fp32" (encoder and head in torch fp32), "torch auto" (the precision
auto picks here), "onnxruntime fp32", "onnxruntime fp16" and "onnxruntime int8" (the exported graphs,
CPUExecutionProvider, spinning off; int8 calibrated on 32 mapping frames), "onnxruntime int8 head" (the fp32
encoder graph with the int8 head; ACE only). ACE: every pipeline sees the map's recorded cells (``cell_stride``)
and the same RANSAC seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401  (before pycolmap: see README)
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.export import calibration_images, export_map  # noqa: E402
from reloc_ros.frontends.ace.encoders import rgb_to_gray_tensor, strided_cells  # noqa: E402
from reloc_ros.localizer import Localizer  # noqa: E402
from reloc_ros.map_file import load_map  # noqa: E402
from reloc_ros.metrics import pose_error  # noqa: E402
from reloc_ros.onnx_backend import make_session  # noqa: E402

# pipeline -> the precision of the (encoder, head) graphs; "int8 head": the fp32 encoder with the int8 head
PIPELINES = {"torch fp32": None, "torch auto": None, "onnxruntime fp32": ("fp32", "fp32"),
             "onnxruntime fp16": ("fp16", "fp16"), "onnxruntime int8": ("int8", "int8"),
             "onnxruntime int8 head": ("fp32", "int8")}


def _sessions(folder: Path, precisions: tuple[str, str], threads: int) -> dict:
    return {name: make_session(folder / f"{name}.{p}.onnx", threads)
            for name, p in zip(("ace_encoder", "ace_head"), precisions)}


def _ort_predict(sess: dict, fe, image: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, dict]:
    t0 = time.perf_counter()
    gray = rgb_to_gray_tensor(image, "cpu").numpy()
    feats = sess["ace_encoder"].run(None, {"gray": gray})[0]
    t1 = time.perf_counter()
    f = feats[0].reshape(feats.shape[1], -1).T[keep]
    (X,) = sess["ace_head"].run(None, {"features": np.ascontiguousarray(f)})
    t2 = time.perf_counter()
    return X.astype(np.float64), {"encoder": (t1 - t0) * 1e3, "head": (t2 - t1) * 1e3}


def run(args) -> dict:
    ds = open_dataset(args.dataset, frames=args.frames or str(Path(args.dataset) / "query.txt"))
    idx = np.linspace(0, len(ds) - 1, min(args.limit, len(ds))).round().astype(int)
    export_dir = Path(tempfile.mkdtemp(prefix="reloc_export_"))
    _, meta = load_map(args.map)
    return (run_implicit if meta["front_end"] == "implicit" else run_ace)(args, ds, idx, export_dir)


def run_implicit(args, ds, idx, export_dir: Path) -> dict:
    """The implicit map: each pipeline's whole front end (network + weighted Kabsch) on every query; the network's
    time, and its scene points against torch fp32 on the same input."""
    from reloc_ros.frontends.implicit.frontend import ImplicitFrontEnd
    manifest = export_map(args.map, export_dir, precisions=("fp32", "fp16", "int8"), progress=False,
                          int8_images=calibration_images(args.int8_images or args.dataset))
    tensors, meta = load_map(args.map)
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        fes = {"torch fp32": ImplicitFrontEnd.from_map(tensors, meta, precision="fp32"),
               "torch auto": ImplicitFrontEnd.from_map(tensors, meta)}
        for p in ("fp32", "fp16", "int8"):
            fes[f"onnxruntime {p}"] = ImplicitFrontEnd.from_map(tensors, meta, network_backend="onnxruntime",
                                                                onnx_dir=str(export_dir), onnx_precision=p)
        rows = {p: [] for p in fes}
        for k in tqdm(idx, desc=f"{threads} thread(s)", unit="frame"):
            f = ds[int(k)]
            x, _ = fes["torch fp32"].preprocess(f.image, f.camera)
            with torch.inference_mode():
                ref = fes["torch fp32"].model(x)["scene"][0].numpy()
            for p, fe in fes.items():
                res = fe.localize(f.image, f.camera)
                te, re = pose_error(res.T_world_cam, f.T_world_cam) if res.success else (np.inf, np.inf)
                if fe.graphs is not None:
                    scene = fe.graphs.run("implicit_network", image=x.numpy())[0][0]
                else:
                    with torch.inference_mode():
                        scene = fe.model(x)["scene"][0].float().numpy() if p == "torch auto" else ref
                d = np.linalg.norm(scene - ref, axis=1)
                rows[p].append({"t_err": te, "r_err": re, "network": res.timings_ms.get("network", np.nan),
                                "sc_diff_median_mm": float(np.median(d) * 1e3),
                                "sc_diff_p99_mm": float(np.quantile(d, 0.99) * 1e3)})
        results[f"threads_{threads}"] = {p: _summary(r) for p, r in rows.items()}
    return {"map": str(args.map), "front_end": "implicit", "dataset": str(args.dataset), "queries": len(idx),
            "image_size": manifest["graphs"]["implicit_network"]["inputs"]["image"]["shape"][2:],
            "precision_auto": fes["torch auto"].precision["implicit_network"].precision,
            "manifest_parity": {g: {p: v[p]["parity_vs_torch_fp32"] for p in ("fp32", "fp16", "int8")}
                                for g, v in manifest["graphs"].items()},
            "results": results}


def run_ace(args, ds, idx, export_dir: Path) -> dict:
    """The ACE map: encoder and head per pipeline on the map's cells, then the same PnP/RANSAC."""
    frame0 = ds[int(idx[0])]
    loc32 = Localizer.from_map(args.map, front_end_options={"encoder_precision": "fp32", "head_precision": "fp32",
                                                            "encoder_backend": "torch"})
    fe32 = loc32.front_end
    s = fe32.image_height / frame0.image.shape[0]
    size = (fe32.image_height, int(round(frame0.image.shape[1] * s)))
    manifest = export_map(args.map, export_dir, size=size, precisions=("fp32", "fp16", "int8"), progress=False,
                          int8_images=calibration_images(args.int8_images or args.dataset))
    fe_auto = Localizer.from_map(args.map, front_end_options={"encoder_backend": "torch"}).front_end
    keep = strided_cells(size[0] // 8, size[1] // 8, int(fe32.options["cell_stride"]))
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        sess = {p: _sessions(export_dir, graphs, threads) for p, graphs in PIPELINES.items() if graphs}
        rows = {p: [] for p in PIPELINES}
        for k in tqdm(idx, desc=f"{threads} thread(s)", unit="frame"):
            f = ds[int(k)]
            image = f.image if abs(s - 1) < 1e-9 else cv2.resize(f.image, (size[1], size[0]),
                                                                  interpolation=cv2.INTER_AREA)
            cam = f.camera if abs(s - 1) < 1e-9 else f.camera.scaled(s)
            ref_X = None
            for p in PIPELINES:
                if p.startswith("torch"):
                    fe = fe32 if p == "torch fp32" else fe_auto
                    t = {}
                    uv, X, _, cam_r = fe.predict(image, cam, t)
                    st = {"encoder": t["encoder"] + t["preprocess"], "head": t["head"]}
                else:
                    X, st = _ort_predict(sess[p], fe32, image, keep)
                    uv = None
                if p == "torch fp32":
                    ref_X, ref_uv = X, uv
                res = fe32.solve(ref_uv, X, cam)
                te, re = pose_error(res.T_world_cam, f.T_world_cam) if res.success else (np.inf, np.inf)
                d = np.linalg.norm(X - ref_X, axis=1)
                rows[p].append({"t_err": te, "r_err": re, "sc_diff_median_mm": float(np.median(d) * 1e3),
                                "sc_diff_p99_mm": float(np.quantile(d, 0.99) * 1e3), **st})
        results[f"threads_{threads}"] = {p: _summary(r) for p, r in rows.items()}
    return {"map": str(args.map), "front_end": "ace", "dataset": str(args.dataset), "queries": len(idx),
            "image_size": list(size),
            "cell_stride": int(fe32.options["cell_stride"]), "precision_auto": fe_auto.precision["ace_encoder"].precision,
            "manifest_parity": {g: {p: v[p]["parity_vs_torch_fp32"] for p in ("fp32", "fp16", "int8")}
                                for g, v in manifest["graphs"].items()},
            "results": results}


def _summary(rows: list[dict]) -> dict:
    t = np.array([r["t_err"] for r in rows])
    r = np.array([r["r_err"] for r in rows])
    out = {"recall_5cm_5deg": float(np.mean((t <= 0.05) & (r <= 5))),
           "recall_10cm_5deg": float(np.mean((t <= 0.10) & (r <= 5))),
           "median_translation_m": float(np.median(t))}
    for k in ("encoder", "head", "network", "sc_diff_median_mm", "sc_diff_p99_mm"):
        if k in rows[0]:
            out[f"{k}_median"] = float(np.median([row[k] for row in rows]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--map", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--frames", help="frame list (default: the dataset's query.txt)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--int8-images", type=Path, help="int8 calibration frames (default: --dataset's mapping.txt)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    if not args.map.is_file():
        p.error(f"--map {args.map}: not found")
    out = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    stages = ("network",) if out["front_end"] == "implicit" else ("encoder", "head")
    for th, res in out["results"].items():
        print(f"\n{th} ({out['queries']} queries, {out['image_size'][0]}x{out['image_size'][1]}, "
              f"cell_stride {out.get('cell_stride', '-')}, auto = {out['precision_auto']})")
        print(f"{'pipeline':22s} {'5cm5°':>7s} {'10cm5°':>7s} {'median':>8s} "
              + " ".join(f"{st:>8s}" for st in stages) + f" {'ΔX med':>8s} {'ΔX p99':>8s}")
        for pname, r in res.items():
            print(f"{pname:22s} {r['recall_5cm_5deg']:7.1%} {r['recall_10cm_5deg']:7.1%} "
                  f"{r['median_translation_m'] * 100:6.2f}cm "
                  + " ".join(f"{r[f'{st}_median']:6.1f}ms" for st in stages)
                  + f" {r['sc_diff_median_mm_median']:6.3f}mm {r['sc_diff_p99_mm_median']:6.2f}mm")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CUDA smoke check of both front ends (run on a machine with a GPU; no pytest needed).

    python benchmarks/gpu_check.py --demo-root DIR [--device cuda] [--json OUT.json]

The overfit tests of test/test_ace.py and test/test_implicit.py, with ``device="cuda"``: train each front end on a
few demo-scene frames (generated into ``--demo-root`` when missing, same parameters as test/conftest.py), write the
map, reload it on the GPU (front end directly and through ``Localizer``) and localize the training frames. Also
exercises bf16 autocast on CUDA (ACE head default precision, implicit ``precision="bf16"``) and, best effort, the
featuremetric refinement on CUDA, and the map's exported ONNX graphs through every onnxruntime execution provider
present (CPU, CUDA, TensorRT; fp32 and fp16). Prints one line per check and writes a JSON summary; exits 1 if a check fails,
2 if ``--device cuda`` is asked for without CUDA. ``--device cpu`` runs the same checks on the CPU (about 5 min on
the shared 2-core machine), which is how the script itself was checked.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.geometry.pose import rotation_angle_deg  # noqa: E402

RESULTS: dict = {}


def _err(res, frame):
    dt = float(np.linalg.norm(res.T_world_cam[:3, 3] - frame.T_world_cam[:3, 3]))
    dr = float(rotation_angle_deg(res.T_world_cam[:3, :3], frame.T_world_cam[:3, :3]))
    return dt, dr


def check(name):
    def deco(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                info = fn(*a, **k) or {}
                ok = bool(info.pop("ok", True))
            except Exception as e:  # report and continue with the other checks
                info, ok = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, False
            info["seconds"] = round(time.perf_counter() - t0, 2)
            info["ok"] = ok
            RESULTS[name] = info
            print(f"[gpu_check] {'PASS' if ok else 'FAIL'} {name}: "
                  f"{ {k: v for k, v in info.items() if k != 'traceback'} }", flush=True)
            if not ok and "traceback" in info:
                print(info["traceback"], flush=True)
            return info
        return run
    return deco


def localize_all(loc_fn, frames, max_t, max_r):
    errs, lat = [], []
    for f in frames:
        t0 = time.perf_counter()
        r = loc_fn(f.image, f.camera)
        lat.append((time.perf_counter() - t0) * 1e3)
        if not r.success:
            return {"ok": False, "reason": r.reason}
        errs.append(_err(r, f))
    errs = np.array(errs)
    return {"ok": bool(np.all(errs[:, 0] < max_t) and np.all(errs[:, 1] < max_r)),
            "max_t_m": float(errs[:, 0].max()), "max_r_deg": float(errs[:, 1].max()),
            "latency_ms_median": float(np.median(lat[1:] if len(lat) > 1 else lat))}


@check("ace_overfit")
def ace_overfit(root: Path, device: str, out_dir: Path):
    from reloc_ros.frontends.ace.frontend import AceFrontEnd
    from reloc_ros.frontends.ace.train import train
    from reloc_ros.map_file import load_map

    names = (root / "mapping.txt").read_text().split()[:120:20]
    ds = open_dataset(root, frames=names)
    conf = {"image_height": 240, "buffer_size": 6 * 1200, "cells_per_view": 1200, "aug_rotation_deg": 0.0,
            "aug_scale": [1.0, 1.0], "aug_brightness": 0.0, "aug_contrast": 0.0, "head_width": 256,
            "batch_size": 1024, "iterations": 800, "minutes": 5.0, "lr_warmup": 0.1, "clamp_max_px": 20.0,
            "checkpoint_every_s": 0, "progress": False, "device": device}
    out = out_dir / "ace_demo.map.safetensors"
    t0 = time.perf_counter()
    train(conf, ds, out)
    train_s = time.perf_counter() - t0
    tensors, meta = load_map(out)
    assert meta["training"]["iterations"] == 800 and meta["training"]["device"] == device
    frames = [ds[i] for i in range(0, 6, 2)]
    fe = AceFrontEnd.from_map(tensors, meta, device=device, num_cells=None, backend="poselib", threshold_px=2.0,
                              head_precision="fp32")
    strict = localize_all(fe.localize, frames, 0.02, 1.0)
    fe_default = AceFrontEnd.from_map(tensors, meta, device=device)  # default options (precision auto: bf16 on CUDA, OpenCV USAC)
    default = localize_all(fe_default.localize, frames, 0.05, 2.0)
    RESULTS["_ace_map"] = str(out)
    return {"ok": strict["ok"] and default["ok"], "train_s": round(train_s, 1), "fp32_poselib": strict,
            "defaults": default}


@check("implicit_overfit")
def implicit_overfit(root: Path, device: str, out_dir: Path):
    from reloc_ros.frontends.implicit.frontend import load_implicit_map
    from reloc_ros.frontends.implicit.train import train

    names = (root / "mapping.txt").read_text().split()
    ds = open_dataset(root, frames=[names[i] for i in (0, 30, 60, 90)], load_depth=False)
    conf = {"arch": "small", "head_channels": 64, "head_layers": 1, "image_width": 160, "image_height": 120,
            "batch_size": 4, "lr": 3e-3, "minutes": None, "epochs": 10, "aug_rotation_deg": 0.0, "aug_colour": 0.0,
            "progress": False, "warmup_frac": 0.05, "device": device}
    out = out_dir / "implicit_demo.map.safetensors"
    t0 = time.perf_counter()
    train(conf, ds, out)
    train({**conf, "epochs": 300}, ds, out)  # resumes from the checkpoint (map_location=device)
    train_s = time.perf_counter() - t0
    fe = load_implicit_map(out, device)
    meta = fe.metadata["training"]
    assert meta["steps"] == 300 and meta["resumed_from_step"] == 10, meta
    frames = list(ds)
    res = localize_all(fe.localize, frames, 0.05, 2.0)
    # bf16 autocast on CUDA: a few steps must run and give finite losses
    out16 = out_dir / "implicit_bf16.map.safetensors"
    train({**conf, "epochs": 20, "precision": "bf16"}, ds, out16)
    m16 = load_implicit_map(out16, device).metadata["training"]
    finite = all(np.isfinite(v) for v in m16["last_losses"].values() if isinstance(v, (int, float)))
    RESULTS["_implicit_map"] = str(out)
    return {"ok": res["ok"] and finite, "train_s": round(train_s, 1), "localize": res,
            "bf16_last_losses": m16["last_losses"]}


@check("localizer_from_map")
def localizer_from_map(root: Path, device: str):
    from reloc_ros.localizer import Localizer

    names = (root / "mapping.txt").read_text().split()[:120:20]
    ds = open_dataset(root, frames=names[:2])
    out = {}
    for key in ("_ace_map", "_implicit_map"):
        if key not in RESULTS:
            continue
        loc = Localizer.from_map(RESULTS[key], device=device)
        r = loc.localize(ds[0].image, ds[0].camera)
        out[loc.front_end_name] = {"success": bool(r.success), "timings_ms": r.timings_ms}
    return {"ok": bool(out) and all(v["success"] for v in out.values()), **out}


@check("refinement")
def refinement(root: Path, device: str, out_dir: Path):
    from reloc_ros.localizer import Localizer
    from reloc_ros.map_file import reference_path
    from reloc_ros.refinement import reference as ref_mod

    names = (root / "mapping.txt").read_text().split()[:120:20]
    ds = open_dataset(root, frames=names)
    ref = reference_path(Path(RESULTS["_ace_map"]))
    ref_mod.build_reference(ds, ref, {"pca_images": 6}, device=device)
    loc = Localizer.from_map(RESULTS["_ace_map"], device=device, refine=True)
    res = localize_all(loc.localize, [ds[i] for i in range(0, 6, 2)], 0.02, 1.0)
    return res


@check("onnxruntime_providers")
def onnxruntime_providers(root: Path, device: str, out_dir: Path):
    """The ACE map's exported graphs (reloc-export) through every onnxruntime provider this build has (CPU, CUDA,
    TensorRT), fp32 and fp16: each localizes the training frames like torch (``network_backend: onnxruntime``)."""
    import onnxruntime as ort

    from reloc_ros.export import export_map
    from reloc_ros.localizer import Localizer
    names = (root / "mapping.txt").read_text().split()[:120:20]
    ds = open_dataset(root, frames=names)
    frames = [ds[i] for i in range(0, 6, 2)]
    folder = out_dir / "ace_demo_onnx"
    export_map(RESULTS["_ace_map"], folder, progress=False)
    have = ort.get_available_providers()
    out = {"available": have}
    ok = True
    for short, full in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
                        ("tensorrt", "TensorrtExecutionProvider")):
        if full not in have:
            continue
        for precision in ("fp32", "fp16"):
            loc = Localizer.from_map(RESULTS["_ace_map"], front_end_options={
                "network_backend": "onnxruntime", "onnx_dir": str(folder), "onnx_precision": precision,
                "onnx_providers": [short, "cpu"] if short != "cpu" else ["cpu"], "threshold_px": 2.0})
            r = localize_all(loc.localize, frames, 0.05, 2.0)   # resized to the map's 240 rows: the export's size
            out[f"{short}_{precision}"] = r
            ok = ok and r["ok"]
    return {"ok": ok, **out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-root", type=Path, required=True, help="demo scene folder (generated when missing)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"), help="where maps are written")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--skip-refinement", action="store_true")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("[gpu_check] CUDA is not available on this machine", file=sys.stderr)
        return 2
    RESULTS["machine"] = {"torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if not (args.demo_root / "mapping.txt").is_file():
        from reloc_ros.demo_scene import generate_demo_scene
        t0 = time.perf_counter()
        generate_demo_scene(args.demo_root, seed=0, n_mapping=120, n_query=40, progress=False)
        RESULTS["demo_scene_s"] = round(time.perf_counter() - t0, 1)
    args.work.mkdir(parents=True, exist_ok=True)
    ace_overfit(args.demo_root, args.device, args.work)
    implicit_overfit(args.demo_root, args.device, args.work)
    localizer_from_map(args.demo_root, args.device)
    if not args.skip_refinement and "_ace_map" in RESULTS:
        refinement(args.demo_root, args.device, args.work)
    if "_ace_map" in RESULTS:
        onnxruntime_providers(args.demo_root, args.device, args.work)
    checks = {k: v for k, v in RESULTS.items() if isinstance(v, dict) and "ok" in v}
    RESULTS["all_ok"] = all(v["ok"] for v in checks.values())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(RESULTS, indent=2, default=str))
    print(f"[gpu_check] {'ALL PASS' if RESULTS['all_ok'] else 'SOME FAILED'}", flush=True)
    return 0 if RESULTS["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

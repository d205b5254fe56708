"""``reloc-eval``: localize every query image of a dataset with a map, offline (no ROS), and report accuracy/latency.

    reloc-eval --map MAP --dataset PATH [--frames LIST] [--intrinsics FILE] [--refine] [--device D] [--limit N]
               [--backend torch|onnxruntime] --json OUT [--plots DIR] [--tum DIR]

``--frames`` defaults to ``query.txt`` in the dataset folder when it exists (all frames otherwise).
JSON keys (the stable contract): n_queries, n_failed, median_translation_m, median_rotation_deg, recall_2cm_2deg,
recall_5cm_5deg, recall_10cm_5deg, latency_ms_median, latency_ms_p95 (Localizer.localize wall time, image already
decoded), latency_stage_ms_median (per stage), map_bytes (map + reference model), front_end, refine, device,
precision (stage -> fp32/bf16/fp16, as resolved on this machine; precision_choices: why), backends (stage ->
the library that runs it where not torch, e.g. onnxruntime), map_training (iterations
done / planned / scheduled, training precision; map_training_warning when under half the schedule),
nees_inside_95 / nees_position_inside_95 / nees_rotation_inside_95, nees_mean / nees_position_mean /
nees_rotation_mean, nees_inside_95_block_min (worst 100-query block), nees_values (covariance consistency of the
successful queries), ece_confidence (expected calibration error of ``confidence`` as P(within 10 cm / 5°)),
uncertainty_warning (the map has no calibration for a stage in use), gate (the thresholds
applied, the node's defaults unless --gate), accepted_rate (share of queries the node's gate accepts),
false_accept_rate (share of accepted poses off by more than 25 cm / 10°), accepted (the accuracy figures over the
accepted queries only), machine, per_query (with accepted and gate_reason).
Python: ``evaluate(map_path, dataset, refine=False, ...) -> dict``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cli_args import HelpFormatter, check_eval_paths, number
from ..conf import merge_conf
from ..frontends.registry import BACKENDS
from ..gating import DEFAULT_THRESHOLDS, GateThresholds, gate_result, is_false_accept
from ..metrics import pose_error, summarize_errors
from ..uncertainty import expected_calibration_error, is_correct
from .consistency import consistency_summary, nees, pose_error_vector
from .report import (latency_stats, machine_info, map_bytes, print_summary, refinement_summary, write_json,
                     write_tum)

__all__ = ["evaluate", "main"]


def _open(dataset, frames, intrinsics):
    if not isinstance(dataset, (str, Path)):
        return dataset
    from ..datasets import open_dataset
    root = Path(dataset)
    if frames is None and (root / "query.txt").is_file():
        frames = str(root / "query.txt")
    return open_dataset(root, frames=frames, intrinsics=intrinsics)


def evaluate(map_path, dataset, refine: bool = False, device: str = "cpu", frames=None, intrinsics=None,
             limit: int | None = None, localizer=None, plots_dir=None, tum_dir=None, progress: bool = True,
             front_end_options: dict | None = None, refiner_options: dict | None = None, reference=None,
             gate: GateThresholds = DEFAULT_THRESHOLDS, backend: str | None = None) -> dict:
    """Localize the queries of ``dataset`` (a path or a ``Dataset``) with the map at ``map_path``.

    Returns the reloc-eval dict (see the module docstring). A selection in which some frames lack a ground-truth
    pose is an error; one in which none has a pose (a folder of images of other places) is out-of-map input: every
    accepted pose is a false accept (``out_of_map``: True). ``limit`` takes that many queries evenly spread over the
    sequence (not the first N, which would all be neighbours). ``localizer`` reuses an already loaded
    ``Localizer`` (map loading is not timed). ``reference``: a reference model file to refine against instead of
    the one next to the map. ``gate``: the accept/reject thresholds (``gating.gate_result``; default: the node's).
    ``backend``: "torch" | "onnxruntime" for the front end's networks (``Localizer.from_map``).
    """
    from ..localizer import Localizer

    ds = _open(dataset, frames, intrinsics)
    if len(ds) == 0:
        raise ValueError("the dataset selection has no frames")
    indices = np.arange(len(ds))
    if limit is not None and 0 < limit < len(ds):
        indices = np.unique(np.linspace(0, len(ds) - 1, limit).round().astype(int))
    out_of_map = _out_of_map(ds, indices)
    t_load = time.perf_counter()
    if localizer is None:
        localizer = Localizer.from_map(map_path, device=device, refine=refine, front_end_options=front_end_options,
                                       refiner_options=refiner_options, reference=reference, backend=backend)
    load_s = time.perf_counter() - t_load
    _announce(localizer, progress)
    runs = [_run_query(localizer, ds[int(i)], k, gate, out_of_map)
            for k, i in enumerate(tqdm(indices, desc="reloc-eval", unit="query", disable=not progress))]
    out = _summary(runs, gate, out_of_map)
    out.update(_provenance(localizer, map_path, reference, device, load_s))
    out["dataset"] = str(getattr(ds, "root", "") or dataset)
    out["machine"] = machine_info()
    out["per_query"] = [r["query"] for r in runs]
    if not out_of_map:
        _write_extras(out, runs, plots_dir, tum_dir)
    return out


def _out_of_map(ds, indices) -> bool:
    """True when no selected frame has a ground-truth pose; a ValueError when only some lack one."""
    posed = np.isfinite(np.asarray(ds.poses(), dtype=np.float64)[indices]).all(axis=(1, 2))
    if posed.all():
        return False
    if not posed.any():
        return True
    name = ds.names[int(indices[int(np.argmin(posed))])]
    raise ValueError(f"frame {name} has no ground-truth pose: cannot evaluate it")


def _announce(localizer, progress: bool) -> None:
    if progress:
        for choice in localizer.precision_choices.values():
            print(f"[reloc-eval] precision {choice.describe()}", file=sys.stderr, flush=True)
    for warning in (localizer.training_warning, localizer.uncertainty_warning):
        if warning:
            print(f"[reloc-eval] WARNING: {warning}", file=sys.stderr, flush=True)


def _run_query(localizer, frame, k: int, gate: GateThresholds, out_of_map: bool) -> dict:
    """Localize one frame: its per-query record plus what the summary needs (result, ground truth)."""
    t0 = time.perf_counter()
    res = localizer.localize(frame.image, frame.camera)
    wall_ms = (time.perf_counter() - t0) * 1e3
    T = res.T_world_cam if res.success else None
    te, re = (float("inf"), float("inf")) if out_of_map else pose_error(T, frame.T_world_cam)
    gate_reason = gate_result(res, gate)
    ref = res.refinement
    query = {"name": frame.name, "stamp_ns": frame.stamp_ns if frame.stamp_ns is not None else k * 100_000_000,
             "success": bool(res.success), "reason": res.reason, "accepted": gate_reason == "ok",
             "gate_reason": gate_reason, "t_err_m": te, "r_err_deg": re, "confidence": float(res.confidence),
             "inlier_count": int(res.inlier_count), "latency_ms": res.timings_ms.get("total", wall_ms),
             "view_distance_m": res.view_distance_m,
             "refinement_ran": ref is not None and bool(ref.ran),
             "refinement_accepted": bool(ref.accepted) if ref else None,
             "refinement_reason": ref.reason if ref else "", "refinement_init": ref.init if ref else "",
             "T_world_cam": None if T is None else np.asarray(T).tolist(),
             "nees": None if T is None or res.covariance is None or out_of_map
             else nees(pose_error_vector(T, frame.T_world_cam), res.covariance)}
    return {"query": query, "T": T, "T_gt": frame.T_world_cam, "covariance": res.covariance,
            "timings": res.timings_ms}


def _summary(runs: list[dict], gate: GateThresholds, out_of_map: bool) -> dict:
    """Accuracy, gate, latency, refinement and covariance-consistency figures of the runs."""
    queries = [r["query"] for r in runs]
    out = summarize_errors([q["t_err_m"] for q in queries], [q["r_err_deg"] for q in queries])
    out.update(gate_summary(queries, gate, out_of_map))
    out.update(latency_stats([q["latency_ms"] for q in queries]))
    stages: dict = {}
    for r in runs:
        for s, v in r["timings"].items():
            stages.setdefault(s, []).append(v)
    out["latency_stage_ms_median"] = {s: float(np.median(v)) for s, v in stages.items()}
    out.update(refinement_summary(queries))
    with_cov = [r for r in runs if r["T"] is not None and r["covariance"] is not None and not out_of_map]
    err_vecs = [pose_error_vector(r["T"], r["T_gt"]) for r in with_cov]
    covs = [r["covariance"] for r in with_cov]
    out.update(consistency_summary(err_vecs, covs))
    ok = [q for q in queries if q["success"]]
    out["ece_confidence"] = expected_calibration_error(*_confidence_and_correct(ok)) \
        if ok and not out_of_map else float("nan")
    out["out_of_map"] = out_of_map
    return out


def _confidence_and_correct(queries: list[dict]) -> tuple[list, list]:
    """Each query's confidence and whether its pose is within 10 cm / 5° (``uncertainty.is_correct``)."""
    return [q["confidence"] for q in queries], [is_correct(q["t_err_m"], q["r_err_deg"]) for q in queries]


def _provenance(localizer, map_path, reference, device, load_s: float) -> dict:
    """What was evaluated: map, front end and refiner options, device, precision, the map's training."""
    out = {"map": str(map_path) if map_path is not None else None,
           "map_bytes": map_bytes(map_path) if map_path is not None else None, "map_load_s": load_s,
           "front_end": localizer.front_end_name, "refine": bool(localizer.refine),
           "front_end_options": dict(getattr(localizer.front_end, "options", {}))}
    if localizer.refiner is not None:
        out["refiner_options"] = dict(localizer.refiner.conf)
    if reference is not None:
        out["reference"] = str(reference)
    out["device"] = device
    out["precision"] = localizer.precision
    out["backends"] = localizer.backends
    out["precision_choices"] = {k: c.as_dict() for k, c in localizer.precision_choices.items()}
    training = localizer.metadata.get("training") or {}
    out["map_training"] = {k: training.get(k) for k in ("iterations", "iterations_planned", "iterations_scheduled",
                                                        "precision", "train_seconds")}
    out["map_training_warning"] = localizer.training_warning
    out["uncertainty_warning"] = localizer.uncertainty_warning
    return out


def _write_extras(out: dict, runs: list[dict], plots_dir, tum_dir) -> None:
    """The PNG plots (``out["plots"]``) and the TUM trajectories, when asked for."""
    stamps = [r["query"]["stamp_ns"] for r in runs]
    est = [(r["query"]["stamp_ns"], r["T"]) for r in runs if r["T"] is not None]
    est_stamps, est_poses = [s for s, _ in est], [T for _, T in est]
    gt_poses = [r["T_gt"] for r in runs]
    if plots_dir is not None:
        from .plots import plot_all
        gt_stamps = np.array(stamps, dtype=np.int64)
        out["plots"] = plot_all(plots_dir, gt_stamps, np.array(gt_poses), np.array(est_stamps, dtype=np.int64),
                                np.array(est_poses).reshape(-1, 4, 4), gt_stamps,
                                np.array([r["query"]["t_err_m"] for r in runs]),
                                np.array([r["query"]["r_err_deg"] for r in runs]),
                                np.array([r["query"]["latency_ms"] for r in runs]),
                                title=f"{out['front_end']}{' + refine' if out['refine'] else ''}")
        if not out.get("out_of_map"):
            from .plots import plot_nees_cdf, plot_reliability
            ok = [r["query"] for r in runs if r["query"]["success"]]
            title = f"{out['front_end']}{' + refine' if out['refine'] else ''}"
            out["plots"]["reliability"] = str(plot_reliability(
                Path(plots_dir) / "reliability.png", *_confidence_and_correct(ok), title=title))
            out["plots"]["nees_cdf"] = str(plot_nees_cdf(Path(plots_dir) / "nees_cdf.png", out["nees_values"],
                                                         title=title))
            far = [q for q in ok if q["nees"] is not None and q.get("view_distance_m") is not None]
            if far:
                from .plots import plot_nees_vs_view_distance
                out["plots"]["nees_vs_view_distance"] = str(plot_nees_vs_view_distance(
                    Path(plots_dir) / "nees_vs_view_distance.png", [q["view_distance_m"] for q in far],
                    [q["nees"] for q in far], title=title))
    if tum_dir is not None:
        tum_dir = Path(tum_dir)
        write_tum(tum_dir / "groundtruth.tum", stamps, gt_poses)
        write_tum(tum_dir / "estimate.tum", est_stamps, est_poses)


def gate_summary(per_query: list[dict], gate: GateThresholds, out_of_map: bool = False) -> dict:
    """accepted_rate, false_accept_rate and the accuracy over the accepted queries (``per_query`` of evaluate).
    Out-of-map input: false_accept_rate is the share of queries accepted (any accepted pose is wrong)."""
    acc = [q for q in per_query if q["accepted"]]
    false = sum(is_false_accept(q["t_err_m"], q["r_err_deg"]) for q in acc)
    accepted_rate = len(acc) / max(len(per_query), 1)
    if out_of_map:
        false_rate = accepted_rate
    else:
        false_rate = false / len(acc) if acc else float("nan")
    return {"gate": gate.as_dict(), "accepted_rate": accepted_rate, "false_accept_rate": false_rate,
            "accepted": summarize_errors([q["t_err_m"] for q in acc], [q["r_err_deg"] for q in acc])}


def _json_object(text: str) -> dict:
    """argparse type of the JSON-object options."""
    from ..cli_args import parse_json_object
    try:
        return parse_json_object(text, "the value")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _gate(overrides: dict) -> GateThresholds:
    return GateThresholds(**merge_conf(DEFAULT_THRESHOLDS.as_dict(), overrides, "--gate"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="reloc-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--map", required=True, type=Path, help="map file (reloc-map output)")
    p.add_argument("--dataset", required=True, type=Path,
                   help="dataset folder with ground-truth poses, or a plain folder of images of other places "
                        "(out-of-map input, needs --intrinsics: reports how often the gate accepts them)")
    p.add_argument("--frames", help="frame-list file (default: query.txt in the dataset folder if present)")
    p.add_argument("--intrinsics", type=Path, help="3x3 K file (default: the dataset's own)")
    p.add_argument("--refine", action="store_true", help="run the featuremetric refinement (needs <map>.ref)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--reference", type=Path, help="reference model for --refine (default: <map stem>.ref.safetensors)")
    p.add_argument("--limit", type=number(int, min=1), help="evaluate N queries spread evenly over the selection")
    p.add_argument("--json", required=True, type=Path, help="where to write the results JSON")
    p.add_argument("--plots", type=Path, help="folder for PNG plots (trajectory, errors, CDF, latency)")
    p.add_argument("--tum", type=Path, help="folder for TUM trajectory files (groundtruth.tum, estimate.tum)")
    p.add_argument("--front-end-options", type=_json_object, default={}, metavar="JSON",
                   help="front-end options, e.g. '{\"cell_stride\": 1}' (ACE: frontends/ace/frontend.py DEFAULT_OPTIONS)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="run the front end's networks on torch or onnxruntime (the map's ONNX graphs, exported into "
                        "the user cache unless --front-end-options gives an onnx_dir; ace and implicit); default: "
                        "the front end's default (torch)")
    p.add_argument("--refiner-options", type=_json_object, default={}, metavar="JSON",
                   help="refiner options, e.g. '{\"max_points\": 1024}' (refinement/refiner.py DEFAULT_REFINER_CONF)")
    p.add_argument("--gate", type=_json_object, default={}, metavar="JSON",
                   help="accept/reject thresholds over the node's defaults, e.g. '{\"min_confidence\": 0.3}' "
                        f"(keys: {', '.join(DEFAULT_THRESHOLDS.as_dict())})")
    args = p.parse_args(argv)
    try:
        check_eval_paths(args)
        res = evaluate(args.map, args.dataset, refine=args.refine, device=args.device, frames=args.frames,
                       intrinsics=args.intrinsics, limit=args.limit, plots_dir=args.plots, tum_dir=args.tum,
                       reference=args.reference, front_end_options=args.front_end_options,
                       refiner_options=args.refiner_options, gate=_gate(args.gate), backend=args.backend)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"reloc-eval: error: {e}", file=sys.stderr)
        return 2
    write_json(args.json, res)
    print_summary("reloc-eval", res, f"on {res['dataset']} ({res['device']})", args.json, args.plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())

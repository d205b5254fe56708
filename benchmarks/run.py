#!/usr/bin/env python
"""Reproduce benchmarks/RESULTS.md: every front end (ours and the classical peer ``sift``) ± featuremetric
refinement on the demo scene and on 7-Scenes redkitchen (mapping.txt → query.txt) with both pose sets (dSLAM and
the SfM pseudo ground truth, each mapped and evaluated in its own poses), offline (``reloc-eval``) and through the
node (``reloc-eval-bag``).

    .venv/bin/python benchmarks/run.py [--scenes demo,redkitchen,redkitchen-sfm] [--front-ends ace,implicit,sift]
        [--refine off,on]
        [--minutes M] [--limit N] [--node-limit N] [--no-node] [--out benchmarks/out] [--results FILE]
        [--reuse-maps] [--device cpu] [--set FRONT_END:KEY=VALUE ...]

Per scene × front end one map is built (with the reference model when a refined variant is requested), then each
refinement variant is evaluated. Everything goes to ``--out`` (maps, bags, JSON per run, plots) and the summary to
``--out/results.json`` and the markdown file ``--results`` (default benchmarks/RESULTS.md). A configuration that
fails is reported as FAILED with its reason in the table, and the run goes on with the others.
Quick end-to-end check (tiny budgets): ``benchmarks/run.py --scenes demo --minutes 0.5 --limit 10 --node-limit 10
--n-mapping 60 --n-query 20 --set ace:buffer_size=100000 --out /tmp/bench --results /tmp/bench/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.evaluation.report import machine_info, write_json  # noqa: E402

SEVEN_SCENES = Path(os.environ.get("RELOC_ROS_7SCENES", REPO.parent / "shared" / "data" / "7scenes-redkitchen"))
# The same frames with the published SfM pseudo ground truth (mapped and evaluated in its own poses)
SEVEN_SCENES_SFM = Path(os.environ.get("RELOC_ROS_7SCENES_SFM",
                                       REPO.parent / "shared" / "data" / "7scenes-redkitchen-sfm-pgt"))
REAL_SCENES = {"redkitchen": SEVEN_SCENES, "redkitchen-sfm": SEVEN_SCENES_SFM}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def demo_scene(out: Path, n_mapping: int, n_query: int, seed: int = 0) -> Path:
    from reloc_ros.demo_scene import GENERATOR_VERSION, generate_demo_scene
    root = out / f"demo_scene_v{GENERATOR_VERSION}_s{seed}_m{n_mapping}_q{n_query}"
    if not (root / "README.md").is_file():
        _log(f"rendering the demo scene into {root}")
        generate_demo_scene(root, seed=seed, n_mapping=n_mapping, n_query=n_query)
    return root


def query_bag(scene_dir: Path, out: Path) -> Path:
    from reloc_ros.datasets import open_dataset
    from reloc_ros.datasets.bag_writer import write_bag
    bag = out / "query_bag"
    if not (bag / "metadata.yaml").is_file():
        if bag.exists():
            import shutil
            shutil.rmtree(bag)
        write_bag(open_dataset(scene_dir, frames=str(scene_dir / "query.txt")), bag, fps=10.0)
    return bag


# Reference-model options per scene: raw 7-Scenes depth is not registered to the colour camera; the reference
# builder refuses it unless told to assume an identity depth-to-colour extrinsic (printed and recorded per map).
SCENE_REFERENCE_CONF = {"redkitchen": {"unregistered_depth": "identity"},
                        "redkitchen-sfm": {"unregistered_depth": "identity"}}


def build(scene_dir: Path, out: Path, front_end: str, minutes: float, device: str, reference: bool,
          reuse: bool, conf: dict | None = None, reference_conf: dict | None = None) -> dict:
    from reloc_ros.mapping.build import MapJob, build_map
    from reloc_ros.map_file import reference_path
    map_path = out / f"{front_end}.map.safetensors"
    info_path = out / f"{front_end}.map.json"
    if reuse and map_path.is_file() and info_path.is_file() and (not reference or reference_path(map_path).is_file()):
        _log(f"reusing {map_path}")
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    rep = build_map(MapJob(scene_dir, map_path, front_end, str(scene_dir / "mapping.txt"), None, minutes, device,
                           conf=dict(conf or {}), reference=reference, reference_conf=dict(reference_conf or {})))
    rep["conf_overrides"] = dict(conf or {})
    rep["reference_conf_overrides"] = dict(reference_conf or {})
    rep["mapping_minutes"] = (time.perf_counter() - t0) / 60.0
    rep["budget_minutes"] = minutes
    write_json(info_path, rep)
    return rep


def _summary(args, rows) -> dict:
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
            "command": " ".join(shlex.quote(a) for a in sys.argv), "args": vars(args), "rows": rows}


def _save(args, rows) -> dict:
    """Write results.json and the markdown after every configuration, so an interrupted run keeps what it did."""
    summary = _summary(args, rows)
    write_json(Path(args.out) / "results.json", summary)
    Path(args.results).write_text(markdown(summary))
    return summary


def run(args) -> dict:
    from reloc_ros.evaluation.bag_replay import run_bag_replay
    from reloc_ros.evaluation.offline import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scene in args.scenes:
        if scene == "demo":
            scene_dir = demo_scene(out, args.n_mapping, args.n_query)
        elif scene in REAL_SCENES:
            scene_dir = REAL_SCENES[scene]
            if not (scene_dir / "mapping.txt").is_file():
                _log(f"skipping {scene}: {scene_dir} not found (set RELOC_ROS_7SCENES / RELOC_ROS_7SCENES_SFM)")
                rows.append({"scene": scene, "error": f"dataset not found at {scene_dir}"})
                continue
        else:
            raise SystemExit(f"unknown scene {scene!r} (demo, {', '.join(REAL_SCENES)})")
        sdir = out / scene
        sdir.mkdir(parents=True, exist_ok=True)
        bag = None
        for fe in args.front_ends:
            fdir = sdir / fe
            try:
                _log(f"{scene} / {fe}: mapping ({args.minutes:g} min budget)")
                rconf = {**SCENE_REFERENCE_CONF.get(scene, {}), **args.sets.get("ref", {})}
                if rconf and "on" in args.refine:
                    _log(f"{scene}: reference model options {rconf}")
                mrep = build(scene_dir, fdir, fe, args.minutes, args.device, "on" in args.refine, args.reuse_maps,
                             args.sets.get(fe), rconf)
            except Exception as e:  # noqa: BLE001 - reported in the table
                traceback.print_exc()
                rows.append({"scene": scene, "front_end": fe, "error": f"mapping: {type(e).__name__}: {e}"})
                continue
            for ref in args.refine:
                refine = ref == "on"
                row = {"scene": scene, "front_end": fe, "refine": refine,
                       "mapping_minutes": mrep.get("mapping_minutes"),
                       "map_bytes": mrep.get("map_bytes", 0) + (mrep.get("reference_bytes", 0) if refine else 0)}
                tag = f"{fe}{'_refine' if refine else ''}"
                try:
                    _log(f"{scene} / {tag}: offline evaluation")
                    off = evaluate(mrep["map"], scene_dir, refine=refine, device=args.device,
                                   frames=str(scene_dir / "query.txt"), limit=args.limit,
                                   plots_dir=sdir / "plots" / f"{tag}_offline")
                    write_json(sdir / f"{tag}_offline.json", off)
                    row["offline"] = {k: v for k, v in off.items() if k != "per_query"}
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    row["offline_error"] = f"{type(e).__name__}: {e}"
                if not args.no_node:
                    try:
                        bag = bag or query_bag(scene_dir, sdir)
                        _log(f"{scene} / {tag}: replay through the node")
                        node = run_bag_replay(bag, mrep["map"], rate=None, refine=refine, device=args.device,
                                              limit=args.node_limit, json_out=sdir / f"{tag}_node.json",
                                              plots_dir=sdir / "plots" / f"{tag}_node", work_dir=sdir / f"{tag}_work")
                        row["node"] = {k: v for k, v in node.items() if k != "per_frame"}
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        row["node_error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                _save(args, rows)
    return _save(args, rows)


def _f(v, scale=1.0, spec=".1f"):
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return format(v * scale, spec)


def _med(v, scale, spec) -> str:
    """A median; None/inf (more than half of the queries without a pose) prints as ∞."""
    return "∞" if v is None or v == float("inf") else _f(v, scale, spec)


def _pct(v) -> str:
    s = _f(v, 100)
    return s if s == "–" else s + " %"


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [
        "# reloc_ros benchmark results",
        "",
        f"Generated by `benchmarks/run.py` on {summary['date']}.",
        "",
        f"- Command: `{summary['command']}`",
        f"- Machine: {m.get('cpu_model', '?')}, {m.get('cpu_affinity', m.get('cpu_count'))} CPU cores available, "
        f"torch {m.get('torch')} ({m.get('torch_threads')} threads), GPU: {m.get('cuda') or 'none'}, "
        f"Python {m.get('python')}. Shared machine: other jobs ran at the same time, so latencies are noisy "
        "(medians quoted).",
        "- Offline = `reloc-eval` (Localizer API, image already decoded; latency = `localize()` wall time).",
        "- Node = `reloc-eval-bag`: the query bag replayed through the localizer node as fast as it keeps up; latency "
        "= image stamp (re-based to the replay clock) → pose published; availability = share of frames with an "
        "accepted pose; false accepts = accepted poses worse than 0.5 m / 10°.",
        "- Errors: camera-centre distance and rotation angle against the ground truth; failures count as infinite.",
        "",
    ]
    a = summary["args"]
    if a.get("minutes", 0) < 2 or a.get("limit") or a.get("node_limit"):
        lines += [f"**Smoke run with tiny budgets** (mapping {a.get('minutes')} min, offline limit {a.get('limit')}, "
                  f"node limit {a.get('node_limit')}): it checks that every step runs; the accuracy numbers say "
                  "nothing about the method.", ""]
    lines += [
        "| scene | front end | refine | mapping (min) | map (MB) | where | median t (cm) | median R (°) "
        "| 2cm/2° | 5cm/5° | 10cm/5° | p50 (ms) | p95 (ms) | availability | false acc. | NEES in 95% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"| {r['scene']} | {r.get('front_end', '–')} | | | | FAILED | {r['error']} "
                         "| | | | | | | | | |")
            continue
        head = (f"| {r['scene']} | {r['front_end']} | {'yes' if r['refine'] else 'no'} "
                f"| {_f(r.get('mapping_minutes'))} | {_f(r.get('map_bytes'), 1e-6, '.2f')} ")
        for where, key in (("offline", "offline"), ("node", "node")):
            if f"{key}_error" in r:
                lines.append(head + f"| {where} | FAILED: {r[key + '_error']} | | | | | | | | | |")
                continue
            res = r.get(key)
            if res is None:
                continue
            lines.append(
                head + f"| {where} ({res['n_queries']}) | {_med(res['median_translation_m'], 100, '.1f')} "
                f"| {_med(res['median_rotation_deg'], 1, '.2f')} | {_f(res['recall_2cm_2deg'], 100)} % "
                f"| {_f(res['recall_5cm_5deg'], 100)} % | {_f(res['recall_10cm_5deg'], 100)} % "
                f"| {_f(res['latency_ms_median'], 1, '.0f')} | {_f(res['latency_ms_p95'], 1, '.0f')} "
                f"| {_pct(res.get('availability'))} | {_pct(res.get('false_accept_rate'))} "
                f"| {_pct(res.get('nees_inside_95'))} |")
    parts = sorted(p.name for p in (REPO / "benchmarks").glob("RESULTS_*.md"))
    if parts:
        lines += ["", "## Front-end and component benchmarks", ""]
        lines += [f"- [{p}]({p})" for p in parts]
    lines += ["", "Raw numbers: `results.json` in the output folder "
              f"(`{summary['args']['out']}`), one JSON per run beside it, plots under `<scene>/plots/`.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", default="demo,redkitchen,redkitchen-sfm",
                   help="comma list of demo, redkitchen (dSLAM poses), redkitchen-sfm (SfM pseudo ground truth)")
    p.add_argument("--front-ends", default="ace,implicit,sift",
                   help="comma list of registered front ends: ace, implicit, sift (the classical peer)")
    p.add_argument("--refine", default="off,on", help="comma list of off, on")
    p.add_argument("--minutes", type=float, default=8.0, help="mapping budget per front end (minutes)")
    p.add_argument("--limit", type=int, help="offline: N queries spread over query.txt (default all)")
    p.add_argument("--node-limit", type=int, help="node: first N frames of the query bag (default all)")
    p.add_argument("--no-node", action="store_true", help="skip the replays through the node")
    p.add_argument("--n-mapping", type=int, default=200, help="demo scene mapping frames")
    p.add_argument("--n-query", type=int, default=100, help="demo scene query frames")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="FRONT_END:KEY=VALUE",
                   help="training option of one front end, e.g. ace:buffer_size=200000, or of the reference model, "
                        "e.g. ref:unregistered_depth=identity (repeatable)")
    p.add_argument("--reuse-maps", action="store_true", help="reuse maps already in --out")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument("--from-json", type=Path, help="only re-render --results from a results.json of an earlier run")
    args = p.parse_args(argv)
    if args.from_json:
        Path(args.results).write_text(markdown(json.loads(args.from_json.read_text())))
        _log(f"wrote {args.results} from {args.from_json}")
        return 0
    args.scenes = [s for s in args.scenes.split(",") if s]
    args.front_ends = [s for s in args.front_ends.split(",") if s]
    args.refine = [s for s in args.refine.split(",") if s]
    if set(args.refine) - {"off", "on"}:
        p.error("--refine takes off and/or on")
    import yaml
    args.sets = {}
    for item in args.set:
        fe, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            p.error(f"--set expects FRONT_END:KEY=VALUE, got {item!r}")
        k, v = kv.split("=", 1)
        args.sets.setdefault(fe, {})[k] = yaml.safe_load(v)
    summary = run(args)
    _log(f"wrote {args.results} and {Path(args.out) / 'results.json'}")
    print(markdown(summary))
    return 0 if all(not any(k.endswith("error") for k in r) for r in summary["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())

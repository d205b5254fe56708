"""Ours against the in-repo classical peer (front end "sift", the hloc recipe with pycolmap), in one run: the same
query split, pose set and machine, every pipeline through ``reloc-eval``'s ``evaluate`` (same JSON keys), and a
table of "ours / peer" ratios.

    python benchmarks/bench_peer.py --dataset DIR --peer SIFT_MAP --ours ACE_MAP [--ours MAP ...] \\
        --label NAME [--frames LIST] [--limit N] [--recall 0.1:1 --recall 0.25:2] [--out benchmarks/results/peer]

``--frames``: the query list (default: the dataset's query.txt, else every frame: a COLMAP model of query images).
``--recall T:R``: also the share within T metres and R degrees (outdoor scenes: 0.1:1 and 0.25:2).

Each ``--ours`` map runs without and with refinement (when its reference model exists); the peer runs as it is.
Each pipeline runs over all queries in turn, after one warm-up query (map loading and lazy set-up are not timed).
Writes ``<out>/<label>.json`` (the summary rows and every run's full reloc-eval dict) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reloc_ros.datasets import open_dataset
from reloc_ros.evaluation.offline import evaluate
from reloc_ros.localizer import Localizer
from reloc_ros.map_file import MapFileError, read_metadata, reference_path

ROW_KEYS = ("median_translation_m", "median_rotation_deg", "recall_2cm_2deg", "recall_5cm_5deg", "recall_10cm_5deg",
            "latency_ms_median", "latency_ms_p95", "accepted_rate", "false_accept_rate", "n_failed")
HIGHER_IS_BETTER = {"recall_2cm_2deg", "recall_5cm_5deg", "recall_10cm_5deg", "accepted_rate"}


def _pipelines(ours: list[Path], peer: Path) -> list[tuple[str, Path, bool]]:
    rows = []
    for m in ours:   # several maps of ours: each row also names its map file
        name = read_metadata(m)["front_end"] + (f" ({m.name.split('.')[0]})" if len(ours) > 1 else "")
        rows.append((name, m, False))
        if reference_path(m).is_file():
            rows.append((rows[-1][0] + " + refinement", m, True))
    return rows + [("peer: sift (hloc recipe)", peer, False)]


def _threshold(text: str) -> tuple[float, float]:
    """"T:R" -> (metres, degrees), both positive."""
    try:
        t, r = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not T:R (metres:degrees), e.g. 0.25:2") from None
    if not (t > 0 and r > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: both thresholds must be positive")
    return t, r


def _row(res: dict, recalls: list[tuple[float, float]]) -> dict:
    row = {k: res.get(k) for k in ROW_KEYS}
    for t, r in recalls:   # a failed query has no error: it counts as outside
        inside = [q["t_err_m"] is not None and q["t_err_m"] <= t and q["r_err_deg"] <= r for q in res["per_query"]]
        row[f"recall_{t:g}m_{r:g}deg"] = float(sum(inside)) / max(len(inside), 1)
    row["map_training"], row["precision"] = res.get("map_training"), res.get("precision")
    return row


def ratios(row: dict, peer: dict) -> dict:
    """ours / peer per key, and whether ours is ahead (errors and times: lower is better)."""
    out = {}
    for k in ROW_KEYS:
        a, b = row.get(k), peer.get(k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            out[k] = {"ratio": a / b, "ahead": (a > b) if k in HIGHER_IS_BETTER else (a < b)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, type=Path)
    p.add_argument("--frames", help="query list (default: the dataset's query.txt, else every frame)")
    p.add_argument("--ours", required=True, type=Path, action="append", help="a map of ours (repeatable)")
    p.add_argument("--peer", required=True, type=Path, help="a map of the sift front end (reloc-map --front-end sift)")
    p.add_argument("--label", required=True)
    p.add_argument("--limit", type=int, help="queries evenly spread over the list (default: all)")
    p.add_argument("--recall", action="append", default=[], metavar="T:R", type=_threshold,
                   help="also report the share within T m and R deg (repeatable)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "peer")
    args = p.parse_args(argv)
    try:  # every map readable, the peer a sift map, before any query runs
        kinds = {m: read_metadata(m)["front_end"] for m in [*args.ours, args.peer]}
    except (OSError, MapFileError) as e:
        p.error(str(e))
    if kinds[args.peer] != "sift":
        p.error(f"--peer {args.peer} is a {kinds[args.peer]!r} map; build the peer with reloc-map --front-end sift")
    out = args.out / f"{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = args.frames or ("query.txt" if (args.dataset / "query.txt").is_file() else None)
    ds = open_dataset(args.dataset, frames=None if frames is None else str(args.dataset / frames))
    recalls = args.recall
    results = {}
    for name, map_path, refine in _pipelines(args.ours, args.peer):
        loc = Localizer.from_map(map_path, refine=refine)
        loc.localize(ds[0].image, ds[0].camera)  # warm-up: lazy initialisations are not timed
        res = evaluate(map_path, ds, refine=refine, localizer=loc, limit=args.limit)
        results[name] = {"map": str(map_path), "refine": refine, "row": _row(res, recalls), "eval": res}
        print(f"[peer] {name}: {json.dumps(results[name]['row'])}", flush=True)
    peer = results["peer: sift (hloc recipe)"]["row"]
    for r in results.values():
        r["vs_peer"] = ratios(r["row"], peer)
    out.write_text(json.dumps({"dataset": str(args.dataset), "frames": frames, "limit": args.limit,
                               "machine": next(iter(results.values()))["eval"].get("machine"),
                               "pipelines": results}, indent=1, default=str))
    print(table(results, recalls))
    print(f"[peer] -> {out}")
    return 0


def table(results: dict, recalls: list[tuple[float, float]]) -> str:
    """Markdown rows: median error, recalls, latency; and ours / peer (✓ where ours is ahead)."""
    extra = [f"recall_{t:g}m_{r:g}deg" for t, r in recalls]
    lines = ["| pipeline | median | 2cm/2° | 5cm/5° | 10cm/5° | " + "".join(f"{100 * t:g}cm/{r:g}° | " for t, r in recalls)
             + "latency p50 | vs peer: median t, 5cm/5°, latency |", "|---" * (7 + len(recalls)) + "|"]
    for name, r in results.items():
        row, vs = r["row"], r["vs_peer"]
        mark = lambda k: (f"{vs[k]['ratio']:.2f}{' ✓' if vs[k]['ahead'] else ''}" if k in vs else "–")  # noqa: E731
        lines.append(f"| {name} | {100 * row['median_translation_m']:.1f} cm / {row['median_rotation_deg']:.2f}° | "
                     + "".join(f"{100 * row[k]:.1f} % | " for k in ("recall_2cm_2deg", "recall_5cm_5deg",
                                                                    "recall_10cm_5deg", *extra))
                     + f"{row['latency_ms_median']:.0f} ms | "
                     f"{mark('median_translation_m')}, {mark('recall_5cm_5deg')}, {mark('latency_ms_median')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""``reloc-map``: posed images → a map file (front end weights + metadata) and a refinement reference model.

    reloc-map --dataset PATH [--frames LIST] [--intrinsics FILE] --front-end implicit|ace --out MAP
              [--minutes M] [--device D] [--encoder xfeat|ace:PATH|disk] [--set key=value ...]
              [--reference-set key=value ...] [--no-reference]

``--frames`` defaults to ``mapping.txt`` in the dataset folder when it exists (all frames otherwise).
Every training option of a front end (its ``DEFAULT_CONF``) can be set with ``--set key=value`` (YAML values) or
from a YAML file with ``--config``; ``reloc-map --front-end ace --show-config`` prints them.
Python use: ``build_map(MapJob(...))`` (the mapper node calls it too).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..cli_args import HelpFormatter, UsageError, check_input_file, check_output_file, number, parse_json_object
from ..device import check_device
from ..frontends.registry import front_end_names, front_end_spec
from ..map_file import MapFileError, reference_path

__all__ = ["MapJob", "build_map", "front_end_defaults", "parse_sets", "main"]



@dataclass
class MapJob:
    """Everything one mapping run needs. ``conf`` overrides the front end's ``DEFAULT_CONF``."""

    dataset: Path
    out: Path
    front_end: str = "ace"
    frames: str | list | None = None
    intrinsics: Path | None = None
    minutes: float | None = None
    device: str = "cpu"
    conf: dict = field(default_factory=dict)
    reference: bool = True
    reference_conf: dict = field(default_factory=dict)


def _trainer(front_end: str):
    return front_end_spec(front_end).load_trainer()


def front_end_defaults(front_end: str) -> dict:
    return dict(_trainer(front_end).DEFAULT_CONF)


def _merge_conf(defaults: dict, overrides: dict, what: str) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **overrides}


def build_map(job: MapJob) -> dict:
    """Train the front end on the dataset and build the reference model; returns paths and timings."""
    from ..datasets import open_dataset

    from ..training_budget import check_minutes
    check_minutes(job.minutes, "--minutes")
    device = check_device(job.device)
    check_output_file(job.out, "the map file")
    if job.reference:
        check_output_file(reference_path(job.out), "the reference model file")
    dataset_path = Path(job.dataset)
    frames = job.frames
    if frames is None and (dataset_path / "mapping.txt").is_file():
        frames = str(dataset_path / "mapping.txt")
    dataset = open_dataset(dataset_path, frames=frames, intrinsics=job.intrinsics)
    trainer = _trainer(job.front_end)
    conf = _merge_conf(trainer.DEFAULT_CONF, job.conf, f"{job.front_end} training")
    if job.minutes is not None:
        conf["minutes"] = float(job.minutes)
    conf["device"] = device
    out = Path(job.out)
    print(f"[reloc-map] {job.front_end} front end on {len(dataset)} frames of {dataset_path} "
          f"(frames: {frames or 'all'}), device {job.device} -> {out}", flush=True)
    t0 = time.perf_counter()
    trainer.train(conf, dataset, out)
    report = {"map": str(out), "front_end": job.front_end, "n_frames": len(dataset),
              "train_seconds": time.perf_counter() - t0, "map_bytes": out.stat().st_size}
    if job.reference:
        from ..refinement import reference as ref_mod
        rconf = _merge_conf(ref_mod.DEFAULT_CONF, job.reference_conf, "reference")
        ref = reference_path(out)
        print(f"[reloc-map] building the refinement reference model -> {ref}", flush=True)
        t1 = time.perf_counter()
        ref_mod.build_reference(dataset, ref, rconf, device=job.device)
        report.update(reference=str(ref), reference_seconds=time.perf_counter() - t1,
                      reference_bytes=ref.stat().st_size)
    return report


def parse_sets(items: list[str]) -> dict:
    """``["key=value", ...]`` (values parsed as YAML) -> dict; used by the --set style options."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reloc-map", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--dataset", type=Path, help="dataset folder (7-Scenes, Cambridge, COLMAP layout) or rosbag2 "
                                                "(required)")
    p.add_argument("--frames", help="frame-list file (default: mapping.txt in the dataset folder if present)")
    p.add_argument("--intrinsics", type=Path, help="3x3 K file (default: rgb-intrinsics.txt in the dataset)")
    p.add_argument("--front-end", default="ace", choices=front_end_names(),
                   help="front end to train (default ace): " + "; ".join(
                       f"{n}: {front_end_spec(n).summary}" for n in front_end_names()))
    p.add_argument("--out", type=Path, help="map file to write, e.g. kitchen.map.safetensors (required); the "
                                            "reference model goes next to it as kitchen.ref.safetensors")
    p.add_argument("--minutes", type=number(float, min=0, min_exclusive=True),
                   help="wall-clock cap of the training in minutes (default: the front end's, ACE 10, implicit 20). "
                        "The schedule is a number of iterations (ACE: iterations=9600, implicit: epochs=110; change "
                        "with --set); when the cap buys fewer on this machine, the schedule is shortened with a "
                        "warning")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--encoder", help="ACE encoder: xfeat | ace:PATH | disk (default xfeat)")
    p.add_argument("--config", type=Path, help="YAML file of training options (keys of --show-config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one training option")
    p.add_argument("--reference-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one reference-model option (e.g. unregistered_depth=identity for raw 7-Scenes; "
                        "points=triangulate to triangulate the points with pycolmap instead of using depth, "
                        "triangulation='{max_features: 2048}' to tune it)")
    p.add_argument("--no-reference", action="store_true", help="skip the refinement reference model")
    p.add_argument("--show-config", action="store_true", help="print the front end's training options and exit")
    return p


def _job(args, p: argparse.ArgumentParser) -> MapJob:
    """The MapJob of the parsed flags; UsageError / ValueError for flags that cannot work."""
    if args.dataset is None or args.out is None:
        p.error("--dataset and --out are required")
    check_output_file(args.out, "--out")
    conf = {}
    if args.config:
        config = yaml.safe_load(check_input_file(args.config, "--config").read_text())
        if config is not None and not isinstance(config, dict):
            raise UsageError(f"--config {args.config}: expected a YAML mapping of training options")
        conf.update(config or {})
    conf.update(parse_sets(args.set))
    if args.encoder:
        if args.front_end != "ace":
            p.error("--encoder applies to the ace front end")
        conf["encoder"] = args.encoder
    return MapJob(args.dataset, args.out, args.front_end, args.frames, args.intrinsics, args.minutes, args.device,
                  conf, reference=not args.no_reference, reference_conf=parse_sets(args.reference_set))


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.show_config:
        print(yaml.safe_dump(front_end_defaults(args.front_end), sort_keys=True))
        return 0
    try:
        report = build_map(_job(args, p))
    except (ValueError, FileNotFoundError, MapFileError, yaml.YAMLError) as e:
        print(f"reloc-map: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reloc-map: interrupted; {args.out} was not written (rerun the same command to resume from the "
              "checkpoint next to it)", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

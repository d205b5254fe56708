"""``reloc-map``: posed images → a map file (front end weights + metadata) and a refinement reference model.

    reloc-map --dataset PATH [--frames LIST] [--intrinsics FILE] --front-end ace|implicit|sift --out MAP
              [--minutes M] [--device D] [--encoder xfeat|ace:PATH|disk] [--set key=value ...]
              [--reference-set key=value ...] [--no-reference]

``--frames`` defaults to ``mapping.txt`` in the dataset folder when it exists (all frames otherwise).
Every training option of a front end (its ``DEFAULT_CONF``) can be set with ``--set key=value`` (YAML values) or
from a YAML file with ``--config``; ``reloc-map --front-end ace --show-config`` prints them.
Python use: ``reloc_ros.mapping.build.build_map(MapJob(...))`` (the mapper node calls it too).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ..cli_args import HelpFormatter, UsageError, check_input_file, check_output_file, number
from ..frontends.registry import front_end_names, front_end_spec
from ..map_file import MapFileError
from .build import MapJob, build_map, front_end_defaults

__all__ = ["MapJob", "build_map", "front_end_defaults", "parse_sets", "main"]


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
    p.add_argument("--calibration-holdout", type=float, default=None, metavar="FRACTION",
                   help="share of the frames held out of the map (blocks of consecutive frames) to calibrate its "
                        "covariance and confidence (default 0.1, blocks of 25 frames; 0 = no calibration)")
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
                  conf, reference=not args.no_reference, reference_conf=parse_sets(args.reference_set),
                  calibration={} if args.calibration_holdout is None
                  else {"holdout_fraction": args.calibration_holdout})


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

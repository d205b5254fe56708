"""Uncertainty calibration of a map, fitted on posed frames the map was not built from (``uncertainty.py``).

``reloc-map`` holds blocks of consecutive mapping frames out of the front end and the reference model
(``split_holdout``), then calls ``calibrate_map`` on them; ``reloc-calibrate`` does the same for an existing map
and any posed frames of its scene that it was not built from::

    reloc-calibrate --map MAP --dataset DIR [--frames LIST] [--no-refine] [--device D] [--front-end-options JSON]

Each held-out frame is localized as it is and as degraded copies (``DEGRADATIONS``: blurred, 80 % covered,
mirrored; a mirrored image has no true pose, so any pose of it is wrong), by the front end alone and with the
refinement; their errors fit one ``Calibration`` per stage, written into the map's metadata ("uncertainty").
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..evaluation.consistency import pose_error_vector
from ..frontends.base import estimate_options
from ..map_file import read_metadata, reference_path, update_metadata
from ..uncertainty import STAGES, CalibrationSample, fit_calibration, support_features

__all__ = ["DEFAULT_CALIBRATION_CONF", "split_holdout", "collect_samples", "calibrate_map", "main"]

DEFAULT_CALIBRATION_CONF = {
    # Share of the mapping frames held out of the map to calibrate it (0 = none), in blocks of consecutive frames
    # whose neighbours are out of the map too. A trade-off measured on 7-Scenes redkitchen (RESULTS_uncertainty.md):
    # 10 % in blocks of 25 keeps the map's accuracy (ACE alone 98.8 % within 10 cm / 5° on the SfM poses) and
    # calibrates the front end (94.8 % of query errors inside the 95 % ellipsoid), but its held-out frames lie a
    # median 5.8 cm from a mapped frame (queries: 15 cm), so the refined covariance stays too small; 20 % in blocks
    # of 50 (21 cm) calibrates the refinement better at 6-7 points of ACE-alone accuracy.
    "holdout_fraction": 0.1,
    "block_frames": 25,
    "degradations": ["blur", "cover", "mirror"],
    "l2": 1.0,                 # L2 weight of the confidence model's logistic regression
    # Stages whose covariance grows with the distance to the nearest mapped view (fitted, uncertainty.py; needs a
    # reference model). Measured on 7-Scenes redkitchen (RESULTS_uncertainty.md): the refined poses' errors grow
    # with it (95 % ellipsoid on the queries 67 -> 90 % SfM, 36 -> 7x % dSLAM); ACE's do not enough to fit it on
    # 50 held-out frames (its fitted growth made the query covariance too wide: 100 % inside, ECE 0.04 -> 0.17).
    "distance_growth_stages": ["refined"],
}


def _blur(img):
    return cv2.GaussianBlur(img, (0, 0), 6.0)


def _cover(img):
    out = img.copy()
    h, w = img.shape[:2]
    out[:, : int(round(0.8 * w))] = 127          # 80 % of the image a flat grey
    return out


def _mirror(img):
    return np.ascontiguousarray(img[:, ::-1])


DEGRADATIONS = {"blur": (_blur, True), "cover": (_cover, True), "mirror": (_mirror, False)}  # keeps the true pose?


def split_holdout(n: int, fraction: float, block_frames: int) -> tuple[list, list]:
    """(kept, held out) frame indices of ``n`` frames: ``round(fraction · n / b)`` blocks of ``b`` consecutive
    frames, spread evenly, with ``b = min(block_frames, n // 10)`` (a short sequence gets shorter blocks rather than
    one block that removes a whole part of it); nothing is held out when ``fraction`` is 0 or ``n`` < 20."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"calibration holdout_fraction must be in [0, 1), got {fraction}")
    block = min(max(int(block_frames), 1), n // 10)
    if fraction == 0 or block < 2:
        return list(range(n)), []
    n_blocks = n // block
    k = max(int(round(fraction * n_blocks)), 1)
    held = set()
    for b in np.linspace(0, n_blocks, k, endpoint=False) + n_blocks / k / 2:
        start = int(b) * block
        held.update(range(start, min(start + block, n)))
    return [i for i in range(n) if i not in held], sorted(held)


def _sample(loc, image, camera, T_true, stage: str) -> CalibrationSample | None:
    """The sample of one localization, when it published a pose of ``stage`` ("refined": the refinement accepted)."""
    r = loc.localize(image, camera)
    if not r.success or r.raw_covariance is None:
        return None
    if (stage == "refined") != bool(r.refinement is not None and r.refinement.accepted):
        return None
    error = None if T_true is None else pose_error_vector(r.T_world_cam, T_true)
    return CalibrationSample(error, r.raw_covariance, support_features(r, r.raw_covariance), r.view_distance_m)


def collect_samples(localizers: dict, dataset, degradations, progress: bool = True) -> dict:
    """Stage -> ``CalibrationSample``s of every frame of ``dataset`` and its degraded copies, localized by
    ``localizers`` (stage -> ``Localizer``: "front_end" without refinement, "refined" with)."""
    out = {s: [] for s in localizers}
    for i in tqdm(range(len(dataset)), desc="calibration: localizing held-out frames", unit="frame",
                  disable=not progress):
        f = dataset[i]
        variants = [(f.image, f.T_world_cam)] + [
            (DEGRADATIONS[d][0](f.image), f.T_world_cam if DEGRADATIONS[d][1] else None) for d in degradations]
        for img, T in variants:
            for stage, loc in localizers.items():
                s = _sample(loc, img, f.camera, T, stage)
                if s is not None:
                    out[stage].append(s)
    return out


def calibrate_map(map_path, dataset, refine: bool | None = None, device: str = "cpu", conf: dict | None = None,
                  progress: bool = True, front_end_options: dict | None = None) -> dict:
    """Fit the map's calibration on the posed frames ``dataset`` (not used to build the map) and write it into the
    map file; returns the metadata entry. ``refine`` None: calibrate the refined stage when the map has a
    reference model. ``front_end_options``: over those the map records (else the defaults); the entry records
    the ones used (``estimate_options``), which then become the map's defaults. Raises ValueError when too few
    frames localize."""
    from ..conf import merge_conf
    from ..localizer import Localizer
    c = merge_conf(DEFAULT_CALIBRATION_CONF, conf or {}, "calibration")
    for d in c["degradations"]:
        if d not in DEGRADATIONS:
            raise ValueError(f"unknown calibration degradation {d!r}; choose from {sorted(DEGRADATIONS)}")
    for st in c["distance_growth_stages"]:
        if st not in STAGES:
            raise ValueError(f"unknown calibration stage {st!r} in distance_growth_stages; choose from {list(STAGES)}")
    if refine is None:
        refine = reference_path(map_path).is_file()
    locs = {"front_end": Localizer.from_map(map_path, device=device, front_end_options=front_end_options)}
    if refine:
        locs["refined"] = Localizer.from_map(map_path, device=device, refine=True,
                                             front_end_options=front_end_options)
    samples = collect_samples(locs, dataset, c["degradations"], progress)
    stages = {}
    for stage, ss in samples.items():
        if stage not in c["distance_growth_stages"]:
            ss = [dataclasses.replace(s, view_distance_m=None) for s in ss]
        try:
            stages[stage] = fit_calibration(ss, l2=float(c["l2"])).as_dict()
        except ValueError as e:
            raise ValueError(f"{map_path}: cannot calibrate the {stage} poses: {e}") from e
    entry = {"stages": stages, "holdout": {"frames": len(dataset), "names": list(getattr(dataset, "names", [])),
                                           "degradations": list(c["degradations"]),
                                           "samples": {k: len(v) for k, v in samples.items()}},
             "front_end_options": estimate_options(locs["front_end"].front_end)}
    update_metadata(map_path, {"uncertainty": entry})
    return entry


def main(argv=None) -> int:
    from ..cli_args import HelpFormatter, parse_json_object
    from ..conf import merge_conf
    from ..datasets import open_dataset
    from ..device import check_device
    from ..map_file import MapFileError
    p = argparse.ArgumentParser(prog="reloc-calibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="the map file to calibrate (rewritten in place)")
    p.add_argument("--dataset", type=Path, required=True, help="posed frames of the map's scene not used to build it")
    p.add_argument("--frames", help="frame list of --dataset (file or comma-separated names; default: all)")
    p.add_argument("--intrinsics", type=Path, help="3x3 K file (default: the dataset's own)")
    p.add_argument("--no-refine", action="store_true", help="calibrate the front end only (default: also the "
                   "refined poses when the map has a reference model)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--conf", default="{}", help="JSON object of calibration options (keys of DEFAULT_CALIBRATION_CONF)")
    p.add_argument("--front-end-options", default="{}", metavar="JSON",
                   help="front-end options to calibrate with, over those the map records, e.g. '{\"cell_stride\": 4}'; "
                        "the map records them and localizes with them from then on")
    args = p.parse_args(argv)
    try:
        device = check_device(args.device)
        conf = parse_json_object(args.conf, "--conf")
        fe_options = parse_json_object(args.front_end_options, "--front-end-options")
        merge_conf(DEFAULT_CALIBRATION_CONF, conf, "calibration")     # unknown keys refused before any work
        read_metadata(args.map)
        frames = args.frames.split(",") if args.frames and "," in args.frames else args.frames
        ds = open_dataset(args.dataset, frames=frames, intrinsics=args.intrinsics)
        entry = calibrate_map(args.map, ds, refine=False if args.no_refine else None, device=device, conf=conf,
                              front_end_options=fe_options)
    except (ValueError, FileNotFoundError, MapFileError) as e:
        print(f"reloc-calibrate: error: {e}", file=sys.stderr)
        return 2
    for stage, cal in entry["stages"].items():
        print(f"[reloc-calibrate] {stage}: scale position {cal['k_position']:.3g}, rotation {cal['k_rotation']:.3g}, "
              f"floor {cal['floor_m'] * 100:.2f} cm / {np.degrees(cal['floor_rad']):.2f} deg, factor {cal['c']:.2f}, "
              f"sigma growth {cal.get('growth_per_m', 0.0):.3g} per m from the mapped views "
              f"({entry['holdout']['samples'][stage]} samples)")
    print(f"[reloc-calibrate] wrote the calibration into {args.map}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

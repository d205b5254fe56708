"""One mapping run as a function: ``build_map(MapJob(...))`` trains the front end on a posed dataset and builds the
refinement reference model. Used by ``reloc-map`` (``mapping/cli.py``), the mapper node's ~/build_map and the demo.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cli_args import check_output_file
from ..conf import merge_conf
from ..device import check_device
from ..frontends.registry import front_end_spec
from ..datasets.base import Subset
from ..map_file import reference_path
from .calibrate import DEFAULT_CALIBRATION_CONF, calibrate_map, split_holdout

__all__ = ["MapJob", "build_map", "front_end_defaults"]


@dataclass
class MapJob:
    """Everything one mapping run needs. ``conf`` overrides the front end's ``DEFAULT_CONF``; ``calibration``
    the uncertainty calibration's options (the held-out share of the frames; ``holdout_fraction`` 0: none)."""

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
    calibration: dict = field(default_factory=dict)   # overrides of mapping.calibrate.DEFAULT_CALIBRATION_CONF


def _trainer(front_end: str):
    return front_end_spec(front_end).load_trainer()


def front_end_defaults(front_end: str) -> dict:
    return dict(_trainer(front_end).DEFAULT_CONF)


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
    calib = merge_conf(DEFAULT_CALIBRATION_CONF, job.calibration, "calibration")
    kept, held = split_holdout(len(dataset), float(calib["holdout_fraction"]), int(calib["block_frames"]))
    mapped, held_out = Subset(dataset, kept), Subset(dataset, held)
    if job.reference:  # the reference model's input errors, before the training rather than after it
        from ..refinement import reference as ref_mod
        rconf = merge_conf(ref_mod.DEFAULT_CONF, job.reference_conf, "reference")
        ref_mod.check_reference_input(mapped, rconf)
    trainer = _trainer(job.front_end)
    conf = merge_conf(trainer.DEFAULT_CONF, job.conf, f"{job.front_end} training")
    if job.minutes is not None:
        conf["minutes"] = float(job.minutes)
    conf["device"] = device
    out = Path(job.out)
    print(f"[reloc-map] {job.front_end} front end on {len(mapped)} frames of {dataset_path} "
          f"(frames: {frames or 'all'}; {len(held_out)} held out for the uncertainty calibration), "
          f"device {job.device} -> {out}", flush=True)
    t0 = time.perf_counter()
    trainer.train(conf, mapped, out)
    report = {"map": str(out), "front_end": job.front_end, "n_frames": len(mapped), "n_held_out": len(held_out),
              "train_seconds": time.perf_counter() - t0, "map_bytes": out.stat().st_size}
    if job.reference:
        ref = reference_path(out)
        print(f"[reloc-map] building the refinement reference model -> {ref}", flush=True)
        t1 = time.perf_counter()
        ref_mod.build_reference(mapped, ref, rconf, device=job.device)
        report.update(reference=str(ref), reference_seconds=time.perf_counter() - t1,
                      reference_bytes=ref.stat().st_size)
    if held:
        t2 = time.perf_counter()
        print(f"[reloc-map] calibrating the covariance and confidence on the {len(held)} held-out frames", flush=True)
        try:
            calibrate_map(out, held_out, refine=job.reference, device=job.device, conf=calib)
        except ValueError as e:  # the map is written; it stays uncalibrated, and its Localizer says so
            report["calibration_error"] = str(e)
            print(f"[reloc-map] warning: {e}; the map's covariance and confidence stay uncalibrated", flush=True)
        report["calibration_seconds"] = time.perf_counter() - t2
    else:
        print(f"[reloc-map] warning: no frames held out (holdout_fraction {calib['holdout_fraction']:g} of "
              f"{len(dataset)} frames in blocks of {calib['block_frames']}): the map's covariance and confidence stay "
              "uncalibrated (reloc-calibrate can add it from other posed frames)", flush=True)
    return report

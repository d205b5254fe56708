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
from ..map_file import reference_path

__all__ = ["MapJob", "build_map", "front_end_defaults"]


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
    conf = merge_conf(trainer.DEFAULT_CONF, job.conf, f"{job.front_end} training")
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
        rconf = merge_conf(ref_mod.DEFAULT_CONF, job.reference_conf, "reference")
        ref = reference_path(out)
        print(f"[reloc-map] building the refinement reference model -> {ref}", flush=True)
        t1 = time.perf_counter()
        ref_mod.build_reference(dataset, ref, rconf, device=job.device)
        report.update(reference=str(ref), reference_seconds=time.perf_counter() - t1,
                      reference_bytes=ref.stat().st_size)
    return report

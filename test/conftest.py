"""Shared pytest fixtures: real-data location (skips with a clear message where absent), demo scene, threads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SEVEN_SCENES = Path(os.environ.get("RELOC_ROS_7SCENES", REPO.parent / "shared" / "data" / "7scenes-redkitchen"))

torch.set_num_threads(int(os.environ.get("RELOC_ROS_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def seven_scenes_root() -> Path:
    """The real 7-Scenes redkitchen sequence (CI has it beside the checkout; a user's machine may not)."""
    if not (SEVEN_SCENES / "mapping.txt").is_file():
        pytest.skip(f"real data not found at {SEVEN_SCENES} (set RELOC_ROS_7SCENES to a 7-Scenes redkitchen folder "
                    "with mapping.txt/query.txt to run this test)")
    return SEVEN_SCENES


DEMO_SCENE_PARAMS = {"seed": 0, "n_mapping": 120, "n_query": 40}


@pytest.fixture(scope="session")
def demo_scene_root() -> Path:
    """The generated demo scene (120 mapping + 40 query frames, 640x480, fx=fy=500, cx=319.5, cy=239.5), cached in
    ``<repo>/data/demo_scene_test/`` under a key of the generator version and parameters (regenerated when either
    changes). Written to a temporary folder and renamed, so concurrent test runs never see a half-written scene."""
    import shutil
    import tempfile

    from reloc_ros.demo_scene import GENERATOR_VERSION, generate_demo_scene

    p = DEMO_SCENE_PARAMS
    cache = REPO / "data" / "demo_scene_test"
    root = cache / f"v{GENERATOR_VERSION}_seed{p['seed']}_m{p['n_mapping']}_q{p['n_query']}"
    if (root / "README.md").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=cache))
    try:
        generate_demo_scene(tmp, **p, progress=False)
        try:
            tmp.rename(root)
        except OSError:  # another run finished first
            if not (root / "README.md").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# A small ACE map overfitted to 6 demo-scene mapping frames (half resolution, no augmentation): shared by the ACE,
# evaluation and ROS tests. Those frames localize to ~1 cm with it. Trained to an iteration count with no time cap
# (a loaded or slow machine takes longer, never trains less); precision "auto" (RELOC_ROS_PRECISION forces one).
DEMO_MAP_ACE_CONF = {"image_height": 240, "buffer_size": 6 * 1200, "cells_per_view": 1200, "aug_rotation_deg": 0.0,
                     "aug_scale": [1.0, 1.0], "aug_brightness": 0.0, "aug_contrast": 0.0, "head_width": 256,
                     "batch_size": 1024, "iterations": 800, "minutes": None, "lr_warmup": 0.1,
                     "clamp_max_px": 20.0, "checkpoint_every_s": 0, "progress": False, "num_threads": 1}


@pytest.fixture(scope="session")
def demo_map_ace(demo_scene_root):
    """``(map_path, frame_names)``: built by the real mapping entry point (``build_map``, as ``reloc-map``) from 6
    frames, then its uncertainty calibrated (``calibrate_map``, as ``reloc-calibrate``) on 18 other mapping frames next to them;
    ~1-2 min on 2 cores, cached under data/test_maps/ keyed by its configuration, frames and sources."""
    import hashlib
    import json
    import shutil

    from reloc_ros.datasets import open_dataset
    from reloc_ros.mapping.build import MapJob, build_map
    from reloc_ros.mapping.calibrate import calibrate_map

    mapping = (demo_scene_root / "mapping.txt").read_text().split()
    names = mapping[:120:20]
    calib_names = [mapping[i + k] for i in range(0, 120, 20) for k in (1, 2, 3)]   # the map's neighbourhood
    from reloc_ros.precision import instruction_sets
    # the instruction sets too: .ci/run's AVX2 pass must train its own map, in the precision auto picks there
    h = hashlib.sha256(json.dumps([DEMO_MAP_ACE_CONF, names, demo_scene_root.name,
                                   os.environ.get("RELOC_ROS_PRECISION", "auto"), instruction_sets()]).encode())
    for src in sorted((REPO / "reloc_ros" / "frontends" / "ace").glob("*.py")) + [
            REPO / "reloc_ros" / f for f in ("xfeat.py", "uncertainty.py", "mapping/calibrate.py", "estimators/pnp.py",
                                             "localizer.py")]:
        h.update(src.read_bytes())
    out = REPO / "data" / "test_maps" / h.hexdigest()[:16] / "demo6.map.safetensors"
    if not out.is_file():
        tmp = out.parent.with_name(out.parent.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build_map(MapJob(demo_scene_root, tmp / out.name, "ace", names, conf=DEMO_MAP_ACE_CONF, reference=False))
        calibrate_map(tmp / out.name, open_dataset(demo_scene_root, frames=calib_names), refine=False,
                      progress=False)
        try:
            tmp.rename(out.parent)
        except OSError:  # a concurrent run finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return out, names


@pytest.fixture
def small_scene(demo_scene_root, tmp_path):
    """A 3-frame copy of the demo scene to break in various ways."""
    import shutil
    root = tmp_path / "scene"
    root.mkdir()
    for i in range(3):
        for suf in (".color.jpg", ".depth.png", ".pose.txt"):
            shutil.copy(demo_scene_root / f"frame-{i:06d}{suf}", root)
    shutil.copy(demo_scene_root / "rgb-intrinsics.txt", root)
    return root

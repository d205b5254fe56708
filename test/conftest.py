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

"""The front-end registry: the built-in specs, and a new front end added with one registration and no other edit
runs through reloc-map and reloc-eval (the mapping CLI, the Localizer, the gate and the evaluation read the
registry)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reloc_ros.frontends.base import LocalizationResult
from reloc_ros.frontends.registry import FrontEndSpec, front_end_names, front_end_spec, register_front_end
from reloc_ros.map_file import save_map

DEFAULT_CONF = {"offset_m": 0.0, "minutes": None, "device": "cpu"}


def train(conf, dataset, out_path):
    """The 'mean pose' front end's mapping: the mean mapping position (+ offset_m along x), identity rotation."""
    T = np.eye(4)
    T[:3, 3] = dataset.poses()[:, :3, 3].mean(0) + [conf["offset_m"], 0, 0]
    return save_map(out_path, {"T_world_cam": torch.from_numpy(T)}, {"front_end": "mean_pose", "frames": len(dataset)})


class MeanPoseFrontEnd:
    """Answers every image with the map's one pose (a dummy with real files and a real covariance)."""

    name = "mean_pose"
    METADATA_SCHEMA = {"type": "object", "required": ["frames"], "properties": {"frames": {"type": "integer"}}}

    def __init__(self, T):
        self.T = T

    @classmethod
    def from_map(cls, tensors, metadata, device="cpu", **options):
        return cls(tensors["T_world_cam"].numpy())

    def localize(self, image, camera):
        return LocalizationResult(True, self.T.copy(), np.eye(6) * 1e-6, 1.0, self.name, timings_ms={"network": 0.1})


SPEC = FrontEndSpec("mean_pose", f"{__name__}:MeanPoseFrontEnd", __name__, summary="test dummy")


def test_builtin_front_ends_are_registered_without_importing_networks():
    import subprocess
    import sys
    assert {"ace", "implicit", "sift"} <= set(front_end_names())
    assert front_end_spec("ace").support == "inliers" and front_end_spec("implicit").support == "weight_mass"
    assert front_end_spec("sift").support == "inliers"
    code = ("import sys; from reloc_ros.frontends.registry import front_end_names; names = front_end_names(); "
            "print(names, [m for m in sys.modules if m.endswith(('.frontend', '.train'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['ace', 'implicit', 'sift'] []"
    with pytest.raises(ValueError, match=r"unknown front end 'nerf'; choose one of \[.*'ace'.*\]"):
        front_end_spec("nerf")
    with pytest.raises(ValueError, match="already registered"):
        register_front_end(FrontEndSpec("ace", "x:Y", "x"))


def test_a_registered_front_end_maps_and_evaluates_with_no_other_edit(demo_scene_root, tmp_path):
    from reloc_ros.datasets import open_dataset
    from reloc_ros.evaluation.offline import main as reloc_eval
    from reloc_ros.mapping.cli import main as reloc_map
    register_front_end(SPEC)
    out = tmp_path / "mean.map.safetensors"
    assert reloc_map(["--dataset", str(demo_scene_root), "--front-end", "mean_pose", "--out", str(out),
                      "--no-reference", "--set", "offset_m=0.5", "--calibration-holdout", "0"]) == 0
    assert reloc_eval(["--map", str(out), "--dataset", str(demo_scene_root), "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    mapping = open_dataset(demo_scene_root, frames="mapping.txt").poses()
    query = open_dataset(demo_scene_root, frames="query.txt").poses()
    centre = mapping[:, :3, 3].mean(0) + [0.5, 0, 0]
    expected = np.median(np.linalg.norm(query[:, :3, 3] - centre, axis=1))
    assert res["front_end"] == "mean_pose" and res["n_queries"] == len(query)
    assert res["median_translation_m"] == pytest.approx(expected, rel=1e-9)
    # no support measure to gate on; uncalibrated (no frames held out): the confidence is P_N of the dummy's 1 mm
    assert res["accepted_rate"] == 1.0 and "no uncertainty calibration" in res["uncertainty_warning"]

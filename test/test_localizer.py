"""Localizer: front end through a real map file, the map-accuracy covariance floor, clear input errors."""
import numpy as np
import pytest

from reloc_ros.datasets import open_dataset
from reloc_ros.geometry import Camera
from reloc_ros.localizer import InputImageError, Localizer
from reloc_ros.map_file import MapFileError
from reloc_ros.metrics import pose_error


def test_localize_adds_the_map_accuracy_floor(demo_map_ace, demo_scene_root):
    path, names = demo_map_ace
    frame = open_dataset(demo_scene_root, frames=names[:1])[0]
    bare = Localizer.from_map(path, position_sigma_floor_m=0.0, rotation_sigma_floor_deg=0.0)
    floored = Localizer.from_map(path, position_sigma_floor_m=0.03, rotation_sigma_floor_deg=0.75)
    a, b = bare.localize(frame.image, frame.camera), floored.localize(frame.image, frame.camera)
    assert a.success and b.success and bare.front_end_name == "ace"
    t, r = pose_error(b.T_world_cam, frame.T_world_cam)
    assert t < 0.05 and r < 2.0  # default options (bf16 head, USAC) on the overfitted map: ~1-2 cm
    expected = np.diag([0.03 ** 2] * 3 + [np.deg2rad(0.75) ** 2] * 3)
    np.testing.assert_allclose(b.covariance - a.covariance, expected, rtol=1e-6, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(b.covariance) > 0)
    assert {"network", "solver", "total"} <= set(b.timings_ms)


def test_bad_inputs_get_clear_errors(demo_map_ace, tmp_path):
    path, _ = demo_map_ace
    loc = Localizer.from_map(path)
    cam = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480)
    with pytest.raises(InputImageError, match="image is 320x240 but the camera intrinsics are for 640x480"):
        loc.localize(np.zeros((240, 320, 3), np.uint8), cam)
    with pytest.raises(InputImageError, match=r"expected an \(H, W, 3\) uint8 RGB image, got float32"):
        loc.localize(np.zeros((480, 640, 3), np.float32), cam)
    with pytest.raises(MapFileError, match="no reference model"):
        Localizer.from_map(path, refine=True)
    with pytest.raises(RuntimeError, match="refine=True"):
        loc.refine_from_prior(np.zeros((480, 640, 3), np.uint8), cam, np.eye(4))

"""Dataset -> rosbag2 (mcap, sqlite3) -> rosbag reader round trips, ground-truth encodings, TF interpolation."""
from __future__ import annotations

import numpy as np
import pytest

from reloc_ros.datasets import DatasetError, detect_layout, open_dataset
from reloc_ros.datasets.bag_writer import T_BASE_CAMERA, main, write_bag
from reloc_ros.tf_buffer import ExtrapolationError, TfBuffer
from reloc_ros.geometry.pose import invert_T, make_T, rotation_angle_deg, so3_exp

FRAMES = [f"frame-{i:06d}" for i in (0, 4, 8, 12, 120, 130)]


@pytest.fixture(scope="module")
def src(demo_scene_root):
    return open_dataset(demo_scene_root, frames=FRAMES)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip(src, tmp_path, storage):
    out = write_bag(src, tmp_path / "bag", fps=5.0, storage=storage, progress=False)
    assert detect_layout(out) == "rosbag"
    with open_dataset(out) as ds:
        assert len(ds) == len(src) and ds.pose_source == "tf"  # map -> camera_optical_frame on /tf
        assert np.array_equal(ds.camera.K, src.camera.K)
        assert ds.camera.size == src.camera.size and np.array_equal(ds.camera.dist, src.camera.dist)
        np.testing.assert_allclose(ds.poses(), src.poses(), atol=1e-9)
        np.testing.assert_array_equal(np.diff(ds.stamps_ns), 200_000_000)
        for i in (0, 5):
            f, g = ds[i], src[i]
            np.testing.assert_array_equal(f.image, g.image)
            np.testing.assert_allclose(f.T_world_cam, g.T_world_cam, atol=1e-9)
    with open_dataset(out, pose_source="topic") as ds:  # /ground_truth/pose gives the same
        assert ds.pose_topic == "/ground_truth/pose"
        np.testing.assert_allclose(ds.poses(), src.poses(), atol=1e-9)


def test_compressed_and_odom_tf(src, tmp_path):
    out = write_bag(src, tmp_path / "bag", storage="sqlite3", compressed=True, odom_tf=True, progress=False)
    truth = src.poses()
    with open_dataset(out) as ds:
        assert ds.image_topic == "/camera/image_raw/compressed"
        # JPEG quality 95 of a JPEG: close, not identical
        assert np.abs(ds[1].image.astype(float) - src[1].image).mean() < 3
        # no map->camera chain on /tf: falls back to the only PoseStamped topic (the truth)
        assert ds.pose_source == "topic"
        np.testing.assert_allclose(ds.poses(), truth, atol=1e-9)
    # odom -> base_link -> camera (static) drifts from the truth ...
    with open_dataset(out, map_frame="odom") as ds:
        assert ds.pose_source == "tf"
        P = ds.poses()
        drift = np.linalg.norm(P[:, :3, 3] - truth[:, :3, 3], axis=1)
        assert drift[0] < 1e-9 and 1e-4 < drift[-1] < 0.1
    # ... and map -> odom from /ground_truth/map_odom closes the chain exactly
    with open_dataset(out, extra_tf_topics=["/ground_truth/map_odom"]) as ds:
        assert ds.pose_source == "tf"
        np.testing.assert_allclose(ds.poses(), truth, atol=1e-9)
    # the static extrinsic turns ROS body axes (x forward) into optical axes (z forward)
    np.testing.assert_allclose(T_BASE_CAMERA[:3, :3] @ [0, 0, 1], [1, 0, 0])
    np.testing.assert_allclose(T_BASE_CAMERA[:3, :3] @ [1, 0, 0], [0, -1, 0])


def test_cli_and_errors(demo_scene_root, tmp_path, capsys):
    out = tmp_path / "cli_bag"
    assert main(["--dataset", str(demo_scene_root), "--frames", "query.txt", "--out", str(out), "--fps", "20",
                 "--camera-frame", "cam_opt", "--map-frame", "world"]) == 0
    with open_dataset(out, map_frame="world") as ds:
        assert len(ds) == 40 and ds.camera_frame == "cam_opt" and ds.pose_source == "tf"
        q = open_dataset(demo_scene_root, frames="query.txt")
        np.testing.assert_allclose(ds.poses(), q.poses(), atol=1e-9)
    assert main(["--dataset", str(demo_scene_root), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "b2")]) == 2
    with pytest.raises(DatasetError, match="no image topic"):
        open_dataset(out, image_topic="/other/image")
    with pytest.raises(ValueError, match="storage"):
        write_bag(q, tmp_path / "b3", storage="rosbag1")


def test_pose_interpolation():
    """The bag reader's pose association (the core TfBuffer with a gap and a tolerance): poses between samples are
    interpolated (lerp + slerp); beyond the gap / tolerance they are unknown."""
    tt = TfBuffer(1e9)
    T0 = make_T(np.eye(3), [0, 0, 0])
    T1 = make_T(so3_exp([0, 0, np.deg2rad(10)]), [1, 0, 0])
    tt.set_transform("map", "cam", 1_000, T0)
    tt.set_transform("map", "cam", 2_000, T1)

    def at(ns, tol, gap):
        try:
            return tt.lookup("map", "cam", ns, max_gap_ns=gap, tolerance_ns=tol)
        except ExtrapolationError:
            return None
    mid = at(1_250, tol=10, gap=5_000)
    np.testing.assert_allclose(mid[:3, 3], [0.25, 0, 0])
    assert abs(rotation_angle_deg(np.eye(3), mid[:3, :3]) - 2.5) < 1e-9
    assert at(1_500, tol=10, gap=500) is None  # samples too far apart
    np.testing.assert_allclose(at(2_005, tol=10, gap=500), T1, atol=1e-12)  # nearest within tolerance
    assert at(2_100, tol=10, gap=5_000) is None
    np.testing.assert_allclose(invert_T(at(1_000, 0, 0)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(tt.lookup("map", "cam", 1_250)[:3, 3], [0.25, 0, 0])   # the live node's semantics

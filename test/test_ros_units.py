"""Unit tests of the ROS side without DDS: TF buffer, message conversions, gating, covariance propagation to the
base, keyframe recording, and that config/*.yaml documents exactly the declared parameters."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from reloc_ros.geometry.camera import Camera
from reloc_ros.geometry.pose import T_from_pos_quat, invert_T, make_T, so3_exp
from reloc_ros.ros.tf_buffer import ConnectivityError, ExtrapolationError, TfBuffer, UnknownFrameError

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000


def rand_T(rng) -> np.ndarray:
    return make_T(Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(size=3))


# ---- TF buffer ------------------------------------------------------------------------------------------------
def test_tf_chain_composition_through_common_ancestor():
    rng = np.random.default_rng(0)
    buf = TfBuffer()
    T_map_odom, T_odom_base, T_base_cam, T_map_marker = (rand_T(rng) for _ in range(4))
    buf.set_transform("map", "odom", 5 * S, T_map_odom)
    buf.set_transform("odom", "base_link", 5 * S, T_odom_base)
    buf.set_transform("base_link", "camera", 0, T_base_cam, static=True)
    buf.set_transform("map", "marker", 5 * S, T_map_marker)
    np.testing.assert_allclose(buf.lookup("map", "camera", 5 * S), T_map_odom @ T_odom_base @ T_base_cam, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("camera", "map", 5 * S), invert_T(T_map_odom @ T_odom_base @ T_base_cam),
                               atol=1e-12)
    # across branches: camera -> marker through the common ancestor map
    want = invert_T(T_map_odom @ T_odom_base @ T_base_cam) @ T_map_marker
    np.testing.assert_allclose(buf.lookup("camera", "marker", 5 * S), want, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("odom", "odom", 0), np.eye(4))
    # static edge alone: valid at any time
    np.testing.assert_allclose(buf.lookup("base_link", "camera", 123), T_base_cam, atol=1e-12)


def test_tf_interpolation_slerp_and_linear():
    buf = TfBuffer()
    R0, R1 = so3_exp([0, 0, 0.2]), so3_exp([0, 0, 1.0])
    buf.set_transform("odom", "base", 10 * S, make_T(R0, [0, 0, 0]))
    buf.set_transform("odom", "base", 12 * S, make_T(R1, [2.0, -4.0, 1.0]))
    T = buf.lookup("odom", "base", 11 * S + S // 2)  # 3/4 of the way
    np.testing.assert_allclose(T[:3, 3], [1.5, -3.0, 0.75], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3], so3_exp([0, 0, 0.2 + 0.75 * 0.8]), atol=1e-12)
    # exact stamps return the samples; out-of-order insertion is sorted
    buf.set_transform("odom", "base", 11 * S, make_T(R0, [9, 9, 9]))
    np.testing.assert_allclose(buf.lookup("odom", "base", 11 * S)[:3, 3], [9, 9, 9])
    # latest common time
    np.testing.assert_allclose(buf.lookup("odom", "base")[:3, 3], [2.0, -4.0, 1.0])


def test_tf_clear_errors():
    buf = TfBuffer()
    buf.set_transform("odom", "base", 10 * S, np.eye(4))
    buf.set_transform("odom", "base", 11 * S, np.eye(4))
    buf.set_transform("world", "other", 0, np.eye(4), static=True)
    with pytest.raises(UnknownFrameError, match="'camera' does not exist"):
        buf.lookup("odom", "camera", 10 * S)
    with pytest.raises(ConnectivityError, match="not connected"):
        buf.lookup("odom", "other", 10 * S)
    with pytest.raises(ExtrapolationError, match="future") as e:
        buf.lookup("odom", "base", 12 * S)
    assert e.value.future
    with pytest.raises(ExtrapolationError, match="past") as e:
        buf.lookup("odom", "base", 9 * S)
    assert not e.value.future
    with pytest.raises(ValueError, match="zero-norm"):
        buf.set_transform("a", "b", 0, translation=[0, 0, 0], quat_xyzw=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="itself"):
        buf.set_transform("a", "a", 0, np.eye(4))
    with pytest.raises(ValueError, match="finite"):
        buf.set_transform("a", "b", 0, np.full((4, 4), np.nan))


def test_tf_wait_for_future_data_and_cache_pruning():
    buf = TfBuffer(cache_time_s=2.0)
    buf.set_transform("odom", "base", 1 * S, np.eye(4))

    def later():
        time.sleep(0.15)
        buf.set_transform("odom", "base", 3 * S, make_T(np.eye(3), [2, 0, 0]))
    threading.Thread(target=later).start()
    t0 = time.monotonic()
    T = buf.lookup("odom", "base", 2 * S, timeout_s=5.0)  # waits for the sample after the stamp
    assert 0.1 < time.monotonic() - t0 < 4.0
    np.testing.assert_allclose(T[:3, 3], [1, 0, 0])
    buf.set_transform("odom", "base", 10 * S, np.eye(4))  # samples older than 10 s - 2 s are dropped
    with pytest.raises(ExtrapolationError, match="past"):
        buf.lookup("odom", "base", 3 * S)
    t0 = time.monotonic()
    with pytest.raises(ExtrapolationError):
        buf.lookup("odom", "base", 20 * S, timeout_s=0.1)
    assert time.monotonic() - t0 < 2.0


# ---- conversions ----------------------------------------------------------------------------------------------
def _img_msg(a: np.ndarray, encoding: str, big: bool = False, pad: int = 0):
    from sensor_msgs.msg import Image
    m = Image()
    m.height, m.width = a.shape[:2]
    m.encoding, m.is_bigendian = encoding, int(big)
    row = a.reshape(a.shape[0], -1)
    if a.dtype == np.uint16:
        row = row.astype(">u2" if big else "<u2")
    raw = row.view(np.uint8).reshape(a.shape[0], -1)
    raw = np.concatenate([raw, np.zeros((a.shape[0], pad), np.uint8)], 1)
    m.step = raw.shape[1]
    m.data = raw.tobytes()
    return m


def test_image_conversions_every_encoding():
    from reloc_ros.ros.conversions import InputError, compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_msg
    from sensor_msgs.msg import CompressedImage, Image
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_msg_to_rgb(_img_msg(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb(_img_msg(rgb[..., ::-1].copy(), "bgr8", pad=3)), rgb)
    rgba = np.concatenate([rgb, np.full((7, 5, 1), 9, np.uint8)], 2)
    np.testing.assert_array_equal(image_msg_to_rgb(_img_msg(rgba, "rgba8")), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb(_img_msg(rgba[..., [2, 1, 0, 3]].copy(), "bgra8")), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(image_msg_to_rgb(_img_msg(grey, "mono8", pad=1)), np.repeat(grey[..., None], 3, 2))
    g16 = grey.astype(np.uint16) * 256 + 77
    for big in (False, True):
        out = image_msg_to_rgb(_img_msg(g16, "mono16", big=big))
        np.testing.assert_array_equal(out[..., 1], grey)
    np.testing.assert_array_equal(image_msg_to_rgb(rgb_to_image_msg(rgb, Image, 5, "cam", "bgr8")), rgb)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    c = CompressedImage(format="png", data=png.tobytes())
    np.testing.assert_array_equal(compressed_msg_to_rgb(c), rgb)
    with pytest.raises(InputError) as e:
        image_msg_to_rgb(_img_msg(rgb, "yuv422"))
    assert e.value.reason == "bad_encoding"
    short = _img_msg(rgb, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(InputError, match="bytes") as e:
        image_msg_to_rgb(short)
    assert e.value.reason == "bad_image"
    with pytest.raises(InputError) as e:
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b"\x00\x01garbage"))
    assert e.value.reason == "bad_encoding"


def test_camera_info_and_size_checks():
    from reloc_ros.ros.conversions import InputError, camera_info_to_camera, check_image_against_camera
    from sensor_msgs.msg import CameraInfo
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=[0.1, -0.05, 0.0, 0.0, 0.0],
                      k=[500.0, 0, 319.5, 0, 501.0, 239.5, 0, 0, 1])
    cam = camera_info_to_camera(info)
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.size) == (500.0, 501.0, 319.5, 239.5, (640, 480))
    np.testing.assert_allclose(cam.dist, [0.1, -0.05, 0, 0, 0])
    check_image_against_camera(640, 480, cam)
    with pytest.raises(InputError) as e:
        check_image_against_camera(320, 240, cam)
    assert e.value.reason == "size_mismatch"
    for k in ([float("nan")] + [0.0] * 8, [0.0] * 9):
        with pytest.raises(InputError) as e:
            camera_info_to_camera(CameraInfo(width=640, height=480, k=k))
        assert e.value.reason == "bad_intrinsics"


def test_pose_quaternion_and_covariance_order():
    from geometry_msgs.msg import Pose, PoseWithCovariance, Transform
    from reloc_ros.ros.conversions import (covariance_from_ros, covariance_to_ros, pose_to_T, transform_to_T,
                                           T_to_pose, T_to_transform)
    T = make_T(so3_exp([0, 0, np.pi / 2]), [1.0, 2.0, 3.0])  # 90 deg about z
    p = T_to_pose(T, Pose())
    assert (p.position.x, p.position.y, p.position.z) == (1.0, 2.0, 3.0)
    np.testing.assert_allclose([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w],
                               [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)  # (x, y, z, w)
    np.testing.assert_allclose(pose_to_T(p), T, atol=1e-12)
    np.testing.assert_allclose(transform_to_T(T_to_transform(T, Transform())), T, atol=1e-12)
    # variances 1..6 for x y z roll pitch yaw land on the diagonal of the row-major 6x6 (indices 0, 7, ..., 35)
    cov = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    cov[0, 5] = cov[5, 0] = 0.5  # x-yaw correlation -> indices 5 and 30
    msg = PoseWithCovariance(covariance=covariance_to_ros(cov))
    c = np.asarray(msg.covariance)
    assert [c[i * 7] for i in range(6)] == [1, 2, 3, 4, 5, 6] and c[5] == c[30] == 0.5
    np.testing.assert_array_equal(covariance_from_ros(msg.covariance), cov)
    with pytest.raises(ValueError, match="finite 6x6"):
        covariance_to_ros(np.full((6, 6), np.nan))


def test_camera_to_body_pose_and_covariance_monte_carlo():
    """The base covariance predicted from the camera's matches the spread of base poses obtained by sampling
    camera poses from the camera covariance (world position error, left rotation about the map axes)."""
    from reloc_ros.ros.localizer_node import camera_to_body
    rng = np.random.default_rng(3)
    T_map_cam = rand_T(rng)
    T_base_cam = T_from_pos_quat([0.1, 0.0, 0.5], Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_quat())
    A = rng.normal(size=(6, 6)) * np.r_[0.005, 0.005, 0.005, 0.02, 0.02, 0.02][:, None]
    cov = A @ A.T
    T_map_base, cov_base = camera_to_body(T_map_cam, cov, T_base_cam)
    np.testing.assert_allclose(T_map_base @ T_base_cam, T_map_cam, atol=1e-12)
    xs = rng.multivariate_normal(np.zeros(6), cov, size=40000)
    dR = Rotation.from_rotvec(xs[:, 3:])
    T_cam_base = invert_T(T_base_cam)
    R_cam = dR * Rotation.from_matrix(T_map_cam[:3, :3])            # left perturbation about the map axes
    c_base = T_map_cam[:3, 3] + xs[:, :3] + R_cam.apply(T_cam_base[:3, 3])
    R_base = R_cam * Rotation.from_matrix(T_cam_base[:3, :3])
    dth = (R_base * Rotation.from_matrix(T_map_base[:3, :3]).inv()).as_rotvec()
    emp = np.cov(np.c_[c_base - T_map_base[:3, 3], dth].T)
    np.testing.assert_allclose(cov_base, emp, atol=0.03 * np.abs(cov_base).max())
    assert np.abs(cov_base[:3, :3] - cov[:3, :3]).max() > 0.3 * np.abs(cov[:3, :3]).max()  # the lever arm matters


# ---- configuration --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, table", [("localizer", "LOCALIZER_PARAMS"), ("mapper", "MAPPER_PARAMS")])
def test_config_yaml_documents_every_parameter(name, table):
    from reloc_ros.ros import params
    text = (REPO / "config" / f"{name}.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    declared = {p.name: p for p in getattr(params, table)}
    assert set(values) == set(declared)
    lines = text.splitlines()
    for p in declared.values():
        assert values[p.name] == p.default, p.name
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{p.name}:"))
        assert lines[i - 1].strip().startswith("#"), f"{p.name} has no comment above it"


def _calls(tree, name):
    import ast
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


@pytest.mark.parametrize("name, table, node_class", [("localizer", "LOCALIZER_PARAMS", "LifecycleNode"),
                                                     ("mapper", "MAPPER_PARAMS", "Node")])
def test_launch_files(name, table, node_class):
    """launch/*.launch.py (launch_ros is not installable here: checked on their syntax tree): the arguments a ROS
    user expects (use_sim_time, log_level, namespace, params_file), each described and used, none used without a
    declaration; the node gets use_sim_time as a parameter, --log-level as a ROS argument, the namespace, and only
    parameters the node declares; its executable is one CMakeLists.txt installs."""
    import ast

    from reloc_ros.ros import params
    tree = ast.parse((REPO / "launch" / f"{name}.launch.py").read_text())
    declared = {c.args[0].value: c for c in _calls(tree, "DeclareLaunchArgument")}
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
    assert {"use_sim_time", "log_level", "namespace", "params_file"} <= set(declared)
    assert used == set(declared)
    assert all(any(k.arg == "description" for k in c.keywords) for c in declared.values())
    node, = _calls(tree, node_class)
    kw = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(kw["executable"]) == name and f"scripts/{name}" in (REPO / "CMakeLists.txt").read_text()
    assert "namespace" in kw
    param_dict = next(e for e in kw["parameters"].elts if isinstance(e, ast.Dict))
    keys = {k.value for k in param_dict.keys}
    assert "use_sim_time" in keys
    assert keys - {"use_sim_time"} <= {p.name for p in getattr(params, table)}
    args = [getattr(e, "value", None) for e in kw["arguments"].elts]
    assert args[:2] == ["--ros-args", "--log-level"]
    # the Fast DDS profile under both variable names (Fast DDS 3 / Kilted and Fast DDS 2 / Jazzy)
    names = {e.value for e in ast.walk(tree) if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    assert {"FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"} <= names


def test_fastdds_profile_has_large_shm_segment():
    import xml.etree.ElementTree as ET
    from reloc_ros.ros.runner import fastdds_profile_path, ros_env
    root = ET.parse(fastdds_profile_path()).getroot()
    ns = {"d": "http://www.eprosima.com"}
    seg = root.find(".//d:transport_descriptor[d:type='SHM']/d:segment_size", ns)
    assert int(seg.text) >= 640 * 480 * 3 * 4
    env = ros_env({"PATH": "/bin"}, domain_id=17)
    assert env["ROS_DOMAIN_ID"] == "17" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    # the name this distribution's Fast DDS reads: 3 (Kilted) the first, 2 (Jazzy) only the second; both if unknown
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(fastdds_profile_path())
    assert env["HOME"]
    jazzy, kilted = ros_env({"ROS_DISTRO": "jazzy"}), ros_env({"ROS_DISTRO": "kilted"})
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" in jazzy and "FASTDDS_DEFAULT_PROFILES_FILE" not in jazzy
    assert "FASTDDS_DEFAULT_PROFILES_FILE" in kilted and "FASTRTPS_DEFAULT_PROFILES_FILE" not in kilted


# ---- mapper recording -----------------------------------------------------------------------------------------
def test_keyframe_recorder_writes_readable_7scenes_layout(tmp_path):
    from reloc_ros.datasets import open_dataset
    from reloc_ros.ros.mapper_node import KeyframeRecorder
    cam = Camera.from_pinhole(100.0, 100.0, 31.5, 23.5, 64, 48)
    rng = np.random.default_rng(0)
    rec = KeyframeRecorder(tmp_path / "ds", min_translation=0.1, min_rotation_deg=10.0)
    poses, imgs = [], []
    for i in range(8):  # 4 cm steps: every third frame moves >= 10 cm from the last recorded
        T = make_T(so3_exp([0, 0.01 * i, 0]), [0.04 * i, 0, 0])
        img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        if rec.add(img, cam, T) is not None:
            poses.append(T)
            imgs.append(img)
    assert len(poses) == 3  # frames 0, 3, 6
    ds = open_dataset(tmp_path / "ds", frames=str(tmp_path / "ds" / "mapping.txt"))
    assert ds.names == ["frame-000000", "frame-000001", "frame-000002"]
    np.testing.assert_allclose(ds.camera.K, cam.K)
    for f, T, img in zip(ds, poses, imgs):
        np.testing.assert_allclose(f.T_world_cam, T, atol=1e-8)
        np.testing.assert_array_equal(f.image, img)
    rec2 = KeyframeRecorder(tmp_path / "ds", 0.1, 10.0)  # resumes numbering and the last pose
    assert rec2.add(imgs[0], cam, poses[-1]) is None
    assert rec2.add(imgs[0], cam, make_T(np.eye(3), [5.0, 0, 0])) == "frame-000003"
    with pytest.raises(ValueError, match="one camera per dataset"):
        rec2.add(imgs[0], Camera.from_pinhole(90.0, 90.0, 31.5, 23.5, 64, 48), make_T(np.eye(3), [9.0, 0, 0]))


def test_node_rejects_depth_encodings_and_documents_what_it_accepts():
    from reloc_ros.ros.conversions import SUPPORTED_ENCODINGS, InputError, check_image_msg
    from sensor_msgs.msg import Image
    for enc, step in (("16UC1", 128), ("32FC1", 256)):
        with pytest.raises(InputError) as e:
            check_image_msg(Image(width=64, height=48, encoding=enc, step=step, data=bytes(step * 48)))
        assert e.value.reason == "bad_encoding" and "rgb8" in str(e.value)
    assert "16uc1" not in SUPPORTED_ENCODINGS and {"rgb8", "bgr8", "mono8", "mono16"} <= set(SUPPORTED_ENCODINGS)

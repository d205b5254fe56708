"""``reloc-bag-from-dataset``: write a posed dataset as a rosbag2 (mcap or sqlite3) with ground truth.

Topics (stamps ``start + i/fps``; every message of frame ``i`` has the same header stamp and bag time):
- ``/camera/image_raw`` ``sensor_msgs/Image`` rgb8 (or, with ``--compressed``, ``/camera/image_raw/compressed``
  ``sensor_msgs/CompressedImage`` JPEG), ``header.frame_id`` = the camera frame (default ``camera_optical_frame``,
  OpenCV axes).
- ``/camera/camera_info`` ``sensor_msgs/CameraInfo`` (plumb_bob; K, D, R = I, P = [K | 0]).
- ``/ground_truth/pose`` ``geometry_msgs/PoseStamped``: ``header.frame_id`` = map frame (default ``map``), pose =
  ``T_map_camera`` (the camera optical frame in the map) — the plain ground truth, in both modes.

Ground truth on TF, two modes:
- default: ``/tf`` carries ``map → camera_optical_frame`` = ``T_map_camera`` per frame.
- ``--odom-tf``: ``/tf`` carries ``odom → base_link`` (an odometry-like pose that drifts slowly from the truth),
  ``/tf_static`` carries ``base_link → camera_optical_frame`` (a fixed extrinsic ``T_base_camera``: 10 cm forward,
  20 cm up, rotation from ROS body axes x-forward/y-left/z-up to optical z-forward/x-right/y-down), and
  ``/ground_truth/map_odom`` (``geometry_msgs/TransformStamped``, ``map → odom``) carries the true
  ``T_map_odom(t)`` at each stamp. The encoding guarantees, at every frame stamp,
  ``T_map_camera = T_map_odom(t) · T_odom_base(t) · T_base_camera`` exactly (float64 round-off);
  ``/ground_truth/pose`` holds the same ``T_map_camera`` directly.

Frames without a pose (``T_world_cam`` None) get image and camera_info only. Frames with a pose that is later
missing from TF are therefore "unknown", never silently filled in.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..cli_args import HelpFormatter, UsageError, check_new_dir, number
from ..geometry.pose import invert_T, make_T, quat_xyzw_from_R, so3_exp
from .base import Dataset, DatasetError

__all__ = ["write_bag", "main", "get_typestore", "T_BASE_CAMERA", "odom_drift"]

# base_link (x forward, y left, z up) -> camera optical (x right, y down, z forward); columns = optical axes in base.
T_BASE_CAMERA = make_T(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), [0.10, 0.0, 0.20])


def get_typestore():
    """The newest ROS 2 typestore rosbags knows among kilted / jazzy / humble."""
    from rosbags.typesys import Stores, get_typestore as _get

    for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
        if hasattr(Stores, name):
            return _get(getattr(Stores, name))
    raise RuntimeError("rosbags has no ROS 2 humble-or-newer typestore")


def odom_drift(n: int, seed: int = 0, step_m: float = 0.002, step_deg: float = 0.05) -> np.ndarray:
    """(n, 4, 4) ``T_map_odom``: identity at frame 0, then a random walk of ``step_m`` metres and ``step_deg``
    degrees of yaw per frame (a slowly drifting odometry frame)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 4, 4))
    T = np.eye(4)
    for i in range(n):
        out[i] = T
        d = rng.normal(size=3) * [1, 1, 0.2]
        T = T @ make_T(so3_exp([0, 0, np.deg2rad(step_deg) * rng.normal()]), step_m * d / max(np.linalg.norm(d), 1e-9))
    return out


def _stamp(ts, ns: int):
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _header(ts, ns: int, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=_stamp(ts, ns), frame_id=frame_id)


def _transform_msg(ts, T: np.ndarray):
    t = ts.types
    q = quat_xyzw_from_R(T[:3, :3])
    return t["geometry_msgs/msg/Transform"](translation=t["geometry_msgs/msg/Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                             rotation=t["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))


def _tf_stamped(ts, ns: int, parent: str, child: str, T: np.ndarray):
    return ts.types["geometry_msgs/msg/TransformStamped"](header=_header(ts, ns, parent), child_frame_id=child,
                                                         transform=_transform_msg(ts, T))


def _pose_stamped(ts, ns: int, frame: str, T: np.ndarray):
    t = ts.types
    q = quat_xyzw_from_R(T[:3, :3])
    pose = t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                       orientation=t["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
    return t["geometry_msgs/msg/PoseStamped"](header=_header(ts, ns, frame), pose=pose)


def _camera_info(ts, ns: int, frame: str, cam):
    t = ts.types
    info = cam.to_camera_info()
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return t["sensor_msgs/msg/CameraInfo"](
        header=_header(ts, ns, frame), height=cam.height, width=cam.width, distortion_model="plumb_bob",
        d=np.asarray(info["d"], np.float64), k=np.asarray(info["k"], np.float64),
        r=np.asarray(info["r"], np.float64), p=np.asarray(info["p"], np.float64), binning_x=0, binning_y=0, roi=roi)


def _qos(transient_local: bool):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    z = QosTime(0, 0)
    return [Qos(QosHistory.KEEP_LAST, 1 if transient_local else 10, QosReliability.RELIABLE,
                QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE, z, z,
                QosLiveliness.AUTOMATIC, z, False)]


def write_bag(dataset: Dataset, out, fps: float = 10.0, storage: str = "mcap", compressed: bool = False,
              map_frame: str = "map", camera_frame: str = "camera_optical_frame", odom_tf: bool = False,
              odom_frame: str = "odom", base_frame: str = "base_link", start_ns: int = 1_700_000_000_000_000_000,
              image_topic: str = "/camera/image_raw", info_topic: str = "/camera/camera_info",
              pose_topic: str = "/ground_truth/pose", map_odom_topic: str = "/ground_truth/map_odom",
              drift_seed: int = 0, jpeg_quality: int = 95, progress: bool = True) -> Path:
    """Write ``dataset`` to a rosbag2 folder ``out`` (must not exist); see the module docstring. Returns ``out``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: output bag already exists")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
    if plugin is None:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    ts = get_typestore()
    n = len(dataset)
    drift = odom_drift(n, drift_seed) if odom_tf else None
    with Writer(out, version=9, storage_plugin=plugin) as w:
        if compressed:
            c_img = w.add_connection(image_topic.rstrip("/") + "/compressed", "sensor_msgs/msg/CompressedImage",
                                     typestore=ts, offered_qos_profiles=_qos(False))
        else:
            c_img = w.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=ts,
                                     offered_qos_profiles=_qos(False))
        c_info = w.add_connection(info_topic, "sensor_msgs/msg/CameraInfo", typestore=ts,
                                  offered_qos_profiles=_qos(False))
        c_pose = w.add_connection(pose_topic, "geometry_msgs/msg/PoseStamped", typestore=ts,
                                  offered_qos_profiles=_qos(False))
        c_tf = w.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=ts, offered_qos_profiles=_qos(False))
        TF = ts.types["tf2_msgs/msg/TFMessage"]
        if odom_tf:
            c_static = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts,
                                        offered_qos_profiles=_qos(True))
            c_mo = w.add_connection(map_odom_topic, "geometry_msgs/msg/TransformStamped", typestore=ts,
                                    offered_qos_profiles=_qos(False))
            msg = TF(transforms=[_tf_stamped(ts, start_ns, base_frame, camera_frame, T_BASE_CAMERA)])
            w.write(c_static, start_ns, ts.serialize_cdr(msg, TF.__msgtype__))
        T_cam_base = invert_T(T_BASE_CAMERA)
        for i in tqdm(range(n), desc=f"writing {out.name}", unit="frame", disable=not progress):
            f = dataset[i]
            ns = start_ns + int(round(i * 1e9 / fps))
            hdr = _header(ts, ns, camera_frame)
            if compressed:
                ok, buf = cv2.imencode(".jpg", f.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                if not ok:
                    raise DatasetError(f"{f.name}: JPEG encoding failed")
                msg = ts.types["sensor_msgs/msg/CompressedImage"](header=hdr, format="rgb8; jpeg compressed bgr8",
                                                                   data=buf.reshape(-1))
            else:
                img = np.ascontiguousarray(f.image, dtype=np.uint8)
                msg = ts.types["sensor_msgs/msg/Image"](header=hdr, height=img.shape[0], width=img.shape[1],
                                                         encoding="rgb8", is_bigendian=0, step=img.shape[1] * 3,
                                                         data=img.reshape(-1))
            w.write(c_img, ns, ts.serialize_cdr(msg, msg.__msgtype__))
            info = _camera_info(ts, ns, camera_frame, f.camera)
            w.write(c_info, ns, ts.serialize_cdr(info, info.__msgtype__))
            if f.T_world_cam is None:
                continue
            T = f.T_world_cam
            ps = _pose_stamped(ts, ns, map_frame, T)
            w.write(c_pose, ns, ts.serialize_cdr(ps, ps.__msgtype__))
            if odom_tf:
                T_map_odom = drift[i]
                T_odom_base = invert_T(T_map_odom) @ T @ T_cam_base
                tf = TF(transforms=[_tf_stamped(ts, ns, odom_frame, base_frame, T_odom_base)])
                mo = _tf_stamped(ts, ns, map_frame, odom_frame, T_map_odom)
                w.write(c_mo, ns, ts.serialize_cdr(mo, mo.__msgtype__))
            else:
                tf = TF(transforms=[_tf_stamped(ts, ns, map_frame, camera_frame, T)])
            w.write(c_tf, ns, ts.serialize_cdr(tf, TF.__msgtype__))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="reloc-bag-from-dataset", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter,
                                 epilog="Ground-truth encoding: see reloc_ros/datasets/bag_writer.py.")
    ap.add_argument("--dataset", required=True, type=Path, help="dataset folder (7-Scenes, Cambridge, COLMAP, bag)")
    ap.add_argument("--frames", default=None, help="frame list (e.g. query.txt) / Cambridge split")
    ap.add_argument("--intrinsics", default=None, type=Path, help="3x3 K file (when the dataset has none)")
    ap.add_argument("--out", required=True, type=Path, help="output bag folder (must not exist)")
    ap.add_argument("--fps", type=number(float, min=0, min_exclusive=True), default=10.0,
                    help="frame rate of the written stamps (Hz, > 0; default 10)")
    ap.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")
    ap.add_argument("--compressed", action="store_true", help="write JPEG CompressedImage instead of raw rgb8")
    ap.add_argument("--map-frame", default="map", help="world frame of the ground truth (default map)")
    ap.add_argument("--camera-frame", default="camera_optical_frame",
                    help="frame_id of the images (default camera_optical_frame)")
    ap.add_argument("--odom-tf", action="store_true",
                    help="TF as odom->base_link (drifting) + static base_link->camera; truth map->odom on "
                         "/ground_truth/map_odom")
    ap.add_argument("--odom-frame", default="odom", help="odometry frame with --odom-tf (default odom)")
    ap.add_argument("--base-frame", default="base_link", help="robot body frame with --odom-tf (default base_link)")
    a = ap.parse_args(argv)
    from . import open_dataset

    try:
        check_new_dir(a.out, "--out")
        ds = open_dataset(a.dataset, frames=a.frames, intrinsics=a.intrinsics)
        out = write_bag(ds, a.out, fps=a.fps, storage=a.storage, compressed=a.compressed, map_frame=a.map_frame,
                        camera_frame=a.camera_frame, odom_tf=a.odom_tf, odom_frame=a.odom_frame,
                        base_frame=a.base_frame)
    except (DatasetError, FileExistsError, UsageError) as e:
        print(f"reloc-bag-from-dataset: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(ds)} frames to {out} ({a.storage})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

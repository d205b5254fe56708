"""Node ``reloc_mapper``: record posed keyframes from topics (or a rosbag2) into a 7-Scenes-layout folder, and
build a map from it on request.

Inputs: ``image`` (sensor_msgs/Image) + ``camera_info``; the camera pose ``T_world_cam`` from TF
(``world_frame <- camera frame`` at the image stamp), or from ``pose`` (PoseStamped) / ``odometry`` (Odometry) topics
associated by stamp (nearest within ``max_time_offset``), times ``camera_to_pose_frame``. A frame is recorded when
the camera moved ``min_translation`` m or turned ``min_rotation_deg`` since the last recorded one. Output
(``output_dir``): ``frame-NNNNNN.color.png``, ``frame-NNNNNN.pose.txt`` (4×4 camera-to-world), ``rgb-intrinsics.txt``
(3×3 K; distorted images are undistorted first), ``mapping.txt`` (recorded names). ``~/frame_count``
(std_msgs/UInt32, latched: reliable + transient-local) after every recorded frame. ``~/build_map`` (std_srvs/Trigger) trains the map in a background
thread with ``reloc_ros.mapping.build.build_map`` (the code of ``reloc-map``), reporting on ``~/progress``
(std_msgs/String); the map file is written atomically by the trainer. With ``build_reference`` the refinement
reference model is built too; the recorder writes colour only, so its points are triangulated with pycolmap from
the recorded poses (``refinement/triangulation.py``), or taken from depth placed beside the frames.
"""
from __future__ import annotations

import bisect
import json
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String, UInt32
from std_srvs.srv import Trigger

from ..geometry.camera import Camera
from ..geometry.pose import T_from_pos_quat, rotation_angle_deg
from .conversions import (InputError, camera_info_to_camera, check_image_against_camera, image_msg_to_rgb,
                          pose_to_T, stamp_to_ns)
from .localizer_node import check_param_changes, declare_params
from .params import MAPPER_PARAMS, extrinsic_values, node_help, wants_help
from .qos import image_qos, latched_qos
from .spin import InlineExecutor, spin_until_shutdown
from .tf_buffer import TfBuffer, TfError, TfListener

__all__ = ["MapperNode", "KeyframeRecorder", "main"]


class KeyframeRecorder:
    """Writes posed frames in the 7-Scenes layout with keyframe selection (pure Python; the node feeds it).

    ``add(rgb, camera, T_world_cam)`` returns the frame name when recorded, None when skipped (too little motion);
    raises ValueError when the camera differs from the folder's (one camera per dataset)."""

    def __init__(self, out_dir, min_translation: float = 0.05, min_rotation_deg: float = 5.0):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.min_t, self.min_r = float(min_translation), float(min_rotation_deg)
        self.list_file = self.out / "mapping.txt"
        self.names = self.list_file.read_text().split() if self.list_file.is_file() else []
        self.K = np.loadtxt(self.out / "rgb-intrinsics.txt") if (self.out / "rgb-intrinsics.txt").is_file() else None
        self.size = None
        self.last_T = np.loadtxt(self.out / f"{self.names[-1]}.pose.txt") if self.names else None

    def is_keyframe(self, T_world_cam: np.ndarray) -> bool:
        if self.last_T is None:
            return True
        dt = float(np.linalg.norm(T_world_cam[:3, 3] - self.last_T[:3, 3]))
        dr = rotation_angle_deg(self.last_T[:3, :3], T_world_cam[:3, :3])
        return dt >= self.min_t or dr >= self.min_r

    def add(self, rgb: np.ndarray, camera: Camera, T_world_cam: np.ndarray) -> str | None:
        if not np.all(np.isfinite(T_world_cam)):
            raise ValueError("camera pose is not finite")
        if not self.is_keyframe(T_world_cam):
            return None
        if self.K is None:
            self.K = camera.K.copy()
            np.savetxt(self.out / "rgb-intrinsics.txt", self.K, fmt="%.10g")
        elif not np.allclose(self.K, camera.K, rtol=1e-6, atol=1e-6):
            raise ValueError(f"camera K changed from {self.K.tolist()} to {camera.K.tolist()}: one camera per dataset")
        if self.size is None:
            self.size = camera.size
        elif camera.size != self.size:
            raise ValueError(f"image size changed from {self.size} to {camera.size}")
        rgb = camera.undistort_image(rgb)
        name = f"frame-{len(self.names):06d}"
        if not cv2.imwrite(str(self.out / f"{name}.color.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {self.out / name}.color.png")
        np.savetxt(self.out / f"{name}.pose.txt", T_world_cam, fmt="%.10f")
        self.names.append(name)
        tmp = self.list_file.with_suffix(".txt.tmp")
        tmp.write_text("\n".join(self.names) + "\n")
        tmp.replace(self.list_file)
        self.last_T = T_world_cam.copy()
        return name


class _TimedPoses:
    """Pose messages by stamp for nearest-stamp association."""

    def __init__(self, maxlen: int = 2000):
        self.stamps, self.T, self.maxlen = [], [], maxlen

    def add(self, ns: int, T: np.ndarray):
        i = bisect.bisect_right(self.stamps, ns)
        self.stamps.insert(i, ns)
        self.T.insert(i, T)
        if len(self.stamps) > self.maxlen:
            del self.stamps[0], self.T[0]

    def nearest(self, ns: int, tol_ns: int) -> np.ndarray | None:
        i = bisect.bisect_left(self.stamps, ns)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self.stamps) and abs(self.stamps[j] - ns) <= tol_ns:
                if best is None or abs(self.stamps[j] - ns) < abs(self.stamps[best] - ns):
                    best = j
        return None if best is None else self.T[best]


class MapperNode(Node):
    def __init__(self, node_name: str = "reloc_mapper", argv=None, **kwargs):
        super().__init__(node_name, **kwargs)
        errors = declare_params(self, MAPPER_PARAMS, argv)  # each one logged
        if errors:
            raise ValueError(f"{len(errors)} bad parameter(s): {'; '.join(errors)}")
        self.add_on_set_parameters_callback(lambda params: check_param_changes(MAPPER_PARAMS, params))
        self.p = p = lambda n: self.get_parameter(n).value  # noqa: E731
        if not p("output_dir"):
            raise ValueError("parameter output_dir is empty: give the dataset folder to record into")
        self.rec = KeyframeRecorder(p("output_dir"), p("min_translation"), p("min_rotation_deg"))
        ext = extrinsic_values(p("camera_to_pose_frame"))
        self.T_pose_cam = np.eye(4) if ext is None else T_from_pos_quat(ext[:3], ext[3:])
        self.camera = None
        self.skipped = {}
        self.poses = _TimedPoses()
        self._build_thread = None
        self._tf_group = MutuallyExclusiveCallbackGroup()
        self._srv_group = MutuallyExclusiveCallbackGroup()
        self.tf_buffer = TfBuffer()
        self.tf_listener = TfListener(self, self.tf_buffer, callback_group=self._tf_group)
        qos = image_qos(str(p("image_qos")))
        # latched: a subscriber that DDS matches after a frame was recorded still gets the current count
        self.count_pub = self.create_publisher(UInt32, "~/frame_count", latched_qos())
        self.progress_pub = self.create_publisher(String, "~/progress", 10)
        self.create_subscription(CameraInfo, "camera_info", self._on_info, qos)
        self.create_subscription(Image, "image", self._on_image, qos)
        if p("pose_source") == "pose":
            self.create_subscription(PoseStamped, "pose", lambda m: self._on_pose(m.header, m.pose), 50,
                                     callback_group=self._tf_group)
        elif p("pose_source") == "odometry":
            self.create_subscription(Odometry, "odometry", lambda m: self._on_pose(m.header, m.pose.pose), 50,
                                     callback_group=self._tf_group)
        self.create_service(Trigger, "~/build_map", self._srv_build, callback_group=self._srv_group)
        if p("bag_path"):
            self.import_bag(p("bag_path"))
        self.get_logger().info(f"recording into {self.rec.out} ({len(self.rec.names)} frames there)")

    # ---- recording ---------------------------------------------------------------------------------------------
    def _skip(self, reason: str, msg: str):
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.get_logger().warning(f"frame not recorded ({reason}): {msg}", throttle_duration_sec=5.0)

    def _on_info(self, msg):
        try:
            self.camera = camera_info_to_camera(msg)
        except InputError as err:
            self.camera = None
            self._skip(err.reason, str(err))

    def _on_pose(self, header, pose):
        try:
            self.poses.add(stamp_to_ns(header.stamp), pose_to_T(pose) @ self.T_pose_cam)
        except ValueError as err:
            self._skip("bad_pose", str(err))

    def _pose_at(self, msg) -> np.ndarray:
        ns = stamp_to_ns(msg.header.stamp)
        if self.p("pose_source") == "tf":
            cam = str(self.p("camera_frame")) or msg.header.frame_id
            return self.tf_buffer.lookup(str(self.p("world_frame")), cam, ns, timeout_s=float(self.p("tf_timeout")))
        T = self.poses.nearest(ns, int(float(self.p("max_time_offset")) * 1e9))
        if T is None:
            raise TfError(f"no {self.p('pose_source')} message within {self.p('max_time_offset')} s of the image")
        return T

    def _on_image(self, msg):
        if self.camera is None:
            return self._skip("no_camera_info", "no valid camera_info yet")
        try:
            rgb = image_msg_to_rgb(msg)
            check_image_against_camera(rgb.shape[1], rgb.shape[0], self.camera)
            T = self._pose_at(msg)
            name = self.rec.add(rgb, self.camera, T)
        except InputError as err:
            return self._skip(err.reason, str(err))
        except TfError as err:
            return self._skip("missing_pose", str(err))
        except ValueError as err:
            return self._skip("rejected", str(err))
        if name is not None:
            self.count_pub.publish(UInt32(data=len(self.rec.names)))
            self.get_logger().info(f"recorded {name} ({len(self.rec.names)} frames)", throttle_duration_sec=2.0)

    def import_bag(self, path: str) -> int:
        """Record the posed frames of a rosbag2 (reloc_ros.datasets' reader) with the same keyframe rule."""
        from ..datasets import open_dataset
        ds = open_dataset(path, image_topic=str(self.p("bag_image_topic")) or None,
                          map_frame=str(self.p("world_frame")))
        n0 = len(self.rec.names)
        for i in range(len(ds)):
            f = ds[i]
            if f.T_world_cam is None:
                self._skip("missing_pose", f"{f.name}: no pose in the bag")
                continue
            if self.rec.add(f.image, f.camera, f.T_world_cam) is not None:
                self.count_pub.publish(UInt32(data=len(self.rec.names)))
        self.get_logger().info(f"imported {len(self.rec.names) - n0} keyframes of {len(ds)} frames from {path}")
        return len(self.rec.names) - n0

    # ---- map building ------------------------------------------------------------------------------------------
    def _progress(self, text: str):
        self.progress_pub.publish(String(data=text))
        self.get_logger().info(text)

    def _srv_build(self, request, response):
        if self._build_thread is not None and self._build_thread.is_alive():
            response.success, response.message = False, "a map build is already running"
            return response
        if len(self.rec.names) < 2:
            response.success, response.message = False, f"only {len(self.rec.names)} frames recorded"
            return response
        from ..cli_args import parse_json_object
        try:
            overrides = parse_json_object(str(self.p("train_overrides")), "train_overrides")
        except ValueError as err:
            response.success, response.message = False, f"bad train_overrides: {err}"
            return response
        out = Path(str(self.p("map_path")) or self.rec.out / "map.safetensors")
        self._build_thread = threading.Thread(target=self._build, args=(out, overrides), daemon=True)
        self._build_thread.start()
        response.success, response.message = True, f"building {out} from {len(self.rec.names)} frames"
        return response

    def _build(self, out: Path, overrides: dict):
        from ..mapping.build import MapJob, build_map
        t0 = time.monotonic()
        done = threading.Event()

        def heartbeat():
            while not done.wait(5.0):
                self._progress(f"running: {time.monotonic() - t0:.0f} s elapsed")
        threading.Thread(target=heartbeat, daemon=True).start()
        self._progress(f"started: {self.p('front_end')} map of {len(self.rec.names)} frames -> {out}")
        try:
            job = MapJob(self.rec.out, out, str(self.p("front_end")), frames=list(self.rec.names),
                         minutes=float(self.p("train_minutes")), device=str(self.p("device")), conf=overrides,
                         reference=bool(self.p("build_reference")),
                         calibration={"holdout_fraction": float(self.p("calibration_holdout"))})
            report = build_map(job)
            self._progress(f"done: {json.dumps(report)}")
        except Exception as err:  # noqa: BLE001 - reported on ~/progress, the node keeps recording
            self._progress(f"failed: {type(err).__name__}: {err}")
        finally:
            done.set()


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv
    if wants_help(argv):
        print(node_help("reloc-mapper", __doc__.split("\n\n")[0], MAPPER_PARAMS, "mapper.yaml"))
        return 0
    rclpy.init(args=argv)
    try:
        node = MapperNode(argv=argv)
    except ValueError as err:
        print(f"reloc_mapper: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # ~/build_map trains for minutes: it runs on its own thread while images and TF keep being recorded inline
    return spin_until_shutdown(node, InlineExecutor(offload_groups=[node._srv_group]))


if __name__ == "__main__":
    sys.exit(main())

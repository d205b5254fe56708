"""Lifecycle node ``reloc_localizer``: camera images -> map-frame pose, /tf (REP-105), status and diagnostics.

configure: declare-checked parameters, load the map (``Localizer.from_map``), create publishers, /tf listener and
services. activate: subscribe ``image`` (or ``image/compressed``) + ``camera_info``, start the worker thread.

Data flow: the image callback only validates metadata (encoding, size vs CameraInfo, stamps: O(1), no pixel
work) and puts the frame in a one-slot mailbox (latest-frame policy); a frame replaced before the worker takes it
gets status ``stale_frame``. The worker converts, localizes, gates, publishes ``~/pose``
(PoseWithCovarianceStamped, transient-local) for the base (or camera) and ``map->odom`` on /tf computed with
``odom->base`` at the image stamp, post-dated by ``transform_tolerance``. Every frame gets one ``~/status``.
Parameters: ``reloc_ros/ros/params.py`` (documented in config/localizer.yaml).
"""
from __future__ import annotations

import collections
import gc
import json
import math
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from reloc_ros.msg import RelocalizationStatus

from ..gating import GateThresholds, gate_result
from ..geometry.pose import T_from_pos_quat, covariance_to_body_point, invert_T
from .bond import create_bond
from .conversions import (InputError, camera_info_to_camera, check_image_against_camera, check_image_msg,
                          compressed_msg_to_rgb, covariance_to_ros, image_msg_to_rgb, ns_to_stamp,
                          pose_to_T, stamp_to_ns, T_to_pose, T_to_transform)
from .params import (LOCALIZER_PARAMS, Param, check_values, cli_param_values, dropped_cli_values,
                     extrinsic_values, node_help, wants_help)
from .qos import image_qos, latched_qos, tf_qos
from .spin import InlineExecutor, spin_until_shutdown
from .tf_buffer import TfBuffer, TfError, TfListener

# Image stamps further ahead of the node clock than this are rejected as future_stamp (clock skew between the
# camera PC and the robot stays well below it; NTP/chrony keep it in milliseconds).
FUTURE_STAMP_TOLERANCE_S = 5.0

__all__ = ["LocalizerNode", "camera_to_body", "declare_params", "main"]


def camera_to_body(T_map_cam: np.ndarray, cov_cam: np.ndarray, T_body_cam: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pose and covariance of the body (base) frame from the camera's: ``T_map_body = T_map_cam @ T_body_cam^-1``;
    the 6×6 (x, y, z, rx, ry, rz) covariance is propagated to the body origin (position in the map frame, left
    rotation about the map axes)."""
    T_cam_body = invert_T(T_body_cam)
    return T_map_cam @ T_cam_body, covariance_to_body_point(T_map_cam, cov_cam, T_cam_body)


def declare_params(node, table: list[Param], argv=None) -> list[str]:
    """Declare ``table`` on ``node`` with its overrides (``--params-file``, ``-p``) checked first: an integer for a
    double is converted (``-p max_rate:=5``), a value of the wrong type, outside its choices or range is not applied
    (the default is declared). Returns one error line per bad value, per unknown name (with the closest declared
    one) and per ``-p`` in ``argv`` that rcl dropped in favour of the parameter file; the caller fails with them."""
    overrides = {name: prm.value for name, prm in node._parameter_overrides.items()}  # rclpy's merged overrides
    good, errors = check_values(table, overrides)
    for p in table:
        d = ParameterDescriptor(description=p.description, read_only=p.read_only,
                                additional_constraints=p.constraints())
        node.declare_parameter(p.name, good.get(p.name, p.default), d, ignore_override=True)
    errors += dropped_cli_values(cli_param_values(argv, node.get_name()), overrides)
    table_by_name = {p.name: p for p in table}

    def ints_as_doubles(params):  # later sets (ros2 param set max_rate 5): as at start-up
        return [Parameter(q.name, value=float(q.value)) if q.name in table_by_name and q.type_ ==
                Parameter.Type.INTEGER and table_by_name[q.name].type_name == "double" else q for q in params]
    if hasattr(node, "add_pre_set_parameters_callback"):  # rclpy >= Iron
        node.add_pre_set_parameters_callback(ints_as_doubles)
    for line in errors:
        node.get_logger().error(line)
    return errors


def check_param_changes(table: list[Param], params) -> SetParametersResult:
    """on-set callback: every change goes through the same checks as the start-up values."""
    _, errors = check_values([p for p in table if not p.read_only], {q.name: q.value for q in params})
    return SetParametersResult(successful=not errors, reason="; ".join(errors))


def _extrinsic_param(values) -> np.ndarray | None:
    v = extrinsic_values(values)
    return None if v is None else T_from_pos_quat(v[:3], v[3:])


class _Frame:
    __slots__ = ("msg", "stamp_ns", "camera", "camera_frame", "t_recv", "index")

    def __init__(self, msg, stamp_ns, camera, camera_frame, t_recv, index):
        self.msg, self.stamp_ns, self.camera, self.camera_frame = msg, stamp_ns, camera, camera_frame
        self.t_recv, self.index = t_recv, index


class LocalizerNode(LifecycleNode):
    def __init__(self, node_name: str = "reloc_localizer", argv=None, **kwargs):
        super().__init__(node_name, **kwargs)
        self.param_errors = declare_params(self, LOCALIZER_PARAMS, argv)  # configure fails while there are any
        self.add_on_set_parameters_callback(lambda params: check_param_changes(LOCALIZER_PARAMS, params))
        self.localizer = None
        self._loc_lock = threading.Lock()
        self._pub_lock = threading.Lock()
        self._slot_cond = threading.Condition()
        self._slot: _Frame | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False
        self._insubs = []
        self._outpubs = {}
        self._tf_listener = None
        self._tmrs = []
        self._srvs = []
        self._srv_group = MutuallyExclusiveCallbackGroup()
        self._bond = None  # heartbeat to Nav2's lifecycle_manager while active (bond.py)
        self._stats_lock = threading.Lock()
        self._reset_stats()

    # ---- parameters -------------------------------------------------------------------------------------------
    def p(self, name):
        return self.get_parameter(name).value

    def _read_params(self):
        self.thresholds = GateThresholds(self.p("min_confidence"), self.p("min_inliers"), self.p("min_inlier_ratio"),
                                     self.p("min_weight_mass"), self.p("max_position_sigma"),
                                     self.p("require_refinement"))
        self.frames = {k: str(self.p(k)).lstrip("/") for k in ("map_frame", "odom_frame", "base_frame",
                                                                 "camera_frame")}
        self.T_base_cam_param = _extrinsic_param(self.p("camera_to_base"))

    # ---- statistics -------------------------------------------------------------------------------------------
    def _reset_stats(self):
        self.counters = collections.Counter()   # reason -> frames
        self.frames_received = 0
        self.frames_dropped = 0
        self.frames_rejected = 0
        self.frames_accepted = 0
        self.recent = collections.deque(maxlen=200)  # (monotonic time, accepted, latency_since_stamp_ms)
        self.last_accept_mono = None
        self.last_stamp_ns = None
        self.camera = None
        self.camera_error = "no_camera_info"
        self._camera_key = None
        self.prior = None  # (T_map_base, stamp_mono)
        self.last_map_odom = None
        self._relocalize_requests = 0
        self._last_result = None
        self._result_cond = threading.Condition()
        self._last_process_mono = 0.0
        self._sent_initialpose_stamp = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.param_errors:
            self.get_logger().error(f"configure failed: {len(self.param_errors)} bad parameter(s) at start-up "
                                    "(each logged above); fix them and restart the node")
            return TransitionCallbackReturn.FAILURE
        try:
            self._read_params()
            if int(self.p("num_threads")) > 0:
                import torch
                torch.set_num_threads(int(self.p("num_threads")))
            self.localizer = self._load_localizer()
        except Exception as err:  # noqa: BLE001 - configure reports every failure and stays unconfigured
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        self.tf_buffer = TfBuffer(cache_time_s=float(self.p("tf_cache_time")))
        self._tf_listener = TfListener(self, self.tf_buffer)
        self._outpubs = {
            "pose": self.create_publisher(PoseWithCovarianceStamped, "~/pose", latched_qos(1)),
            "status": self.create_publisher(RelocalizationStatus, "~/status", 1000),
            "diag": self.create_publisher(DiagnosticArray, "/diagnostics", 10),
            "tf": self.create_publisher(TFMessage, "/tf", tf_qos()),
        }
        if self.p("publish_initialpose"):
            self._outpubs["initialpose"] = self.create_publisher(PoseWithCovarianceStamped, "/initialpose", 1)
        self._srvs = [
            self.create_service(Trigger, "~/relocalize", self._srv_relocalize, callback_group=self._srv_group),
            self.create_service(Trigger, "~/reload_map", self._srv_reload, callback_group=self._srv_group),
        ]
        self._tmrs = [self.create_timer(float(self.p("diagnostics_period")), self._publish_diagnostics)]
        if self.p("tf_republish_rate") > 0 and self.frames["odom_frame"] and self.p("publish_tf"):
            self._tmrs.append(self.create_timer(1.0 / float(self.p("tf_republish_rate")), self._republish_tf))
        freeze_gc()
        self.get_logger().info(f"configured: map {self.p('map_path')} ({self.localizer.front_end_name} front end, "
                               f"refine={self.localizer.refine}, device {self.p('device')})")
        return TransitionCallbackReturn.SUCCESS

    def _load_localizer(self):
        from ..localizer import Localizer
        from ..cli_args import parse_json_object
        path = str(self.p("map_path"))
        if not path:
            raise ValueError("parameter map_path is empty: give the map file written by reloc-map")
        options = {name: parse_json_object(str(self.p(name)), name)
                   for name in ("front_end_options", "refiner_options")}
        loc = Localizer.from_map(path, device=str(self.p("device")), refine=bool(self.p("refine")), **options,
                                 backend=str(self.p("backend")) or None,
                                 position_sigma_floor_m=float(self.p("position_sigma_floor")),
                                 rotation_sigma_floor_deg=float(self.p("rotation_sigma_floor_deg")))
        want = str(self.p("front_end"))
        if want and loc.front_end_name != want:
            raise ValueError(f"front_end is {want!r} but {path} holds a {loc.front_end_name!r} map")
        for choice in loc.precision_choices.values():
            self.get_logger().info(f"precision {choice.describe()}")
        for stage, backend in loc.backends.items():
            self.get_logger().info(f"{stage} runs on {backend}")
        for warning in (loc.training_warning, loc.uncertainty_warning):
            if warning:
                self.get_logger().warn(warning)
        return loc

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._reset_stats()
        self._read_params()
        qos = image_qos(str(self.p("image_qos")), depth=int(self.p("queue_depth")))
        if self.p("image_transport") == "compressed":
            self._insubs.append(self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos))
        else:
            self._insubs.append(self.create_subscription(Image, "image", self._on_image, qos))
        self._insubs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos))
        self._insubs.append(self.create_subscription(PoseWithCovarianceStamped, "/initialpose", self._on_initialpose,
                                                   10))
        self._stop.clear()
        self._active = True
        self._worker = threading.Thread(target=self._work_loop, name="reloc_worker", daemon=True)
        self._worker.start()
        self._destroy_bond()
        self._bond = create_bond(self, float(self.p("bond_heartbeat_period")))
        self.get_logger().info("active")
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self):
        self._active = False
        self._stop.set()
        with self._slot_cond:
            self._slot_cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._bond is not None:
            self._bond.break_bond()
        self._stop_worker()
        for s in self._insubs:
            self.destroy_subscription(s)
        self._insubs = []
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        for s in self._insubs:
            self.destroy_subscription(s)
        self._insubs = []
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_bond(self):
        if self._bond is not None:
            self._bond.destroy()
            self._bond = None

    def _teardown(self):
        self._destroy_bond()
        for t in self._tmrs:
            self.destroy_timer(t)
        for s in self._srvs:
            self.destroy_service(s)
        for p in self._outpubs.values():
            self.destroy_publisher(p)
        if self._tf_listener is not None:
            self._tf_listener.destroy(self)
        self._tmrs, self._srvs, self._outpubs, self._tf_listener = [], [], {}, None
        self.localizer = None

    # ---- input callbacks (cheap) ------------------------------------------------------------------------------
    def _on_camera_info(self, msg: CameraInfo) -> None:
        key = (tuple(msg.k), tuple(msg.d), msg.width, msg.height, msg.distortion_model)
        if key == self._camera_key:
            return
        self._camera_key = key
        try:
            self.camera = camera_info_to_camera(msg)
            self.camera_error = None
        except InputError as err:
            self.camera, self.camera_error = None, err.reason
            self.get_logger().warning(str(err), throttle_duration_sec=5.0)

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        if self._sent_initialpose_stamp is not None and stamp == self._sent_initialpose_stamp:
            return  # our own /initialpose
        if not self.p("use_initialpose_prior"):
            return
        frame = msg.header.frame_id.lstrip("/")
        if frame and frame != self.frames["map_frame"]:
            self.get_logger().warning(f"/initialpose in frame {frame!r}, expected {self.frames['map_frame']!r}: ignored",
                                   throttle_duration_sec=5.0)
            return
        try:
            self.prior = (pose_to_T(msg.pose.pose), time.monotonic())
        except ValueError as err:
            self.get_logger().warning(f"/initialpose ignored: {err}", throttle_duration_sec=5.0)

    def _on_image(self, msg) -> None:
        t_recv = time.monotonic()
        self.frames_received += 1
        stamp = stamp_to_ns(msg.header.stamp)
        frame = _Frame(msg, stamp, self.camera, self.frames["camera_frame"] or msg.header.frame_id.lstrip("/"),
                       t_recv, self.frames_received)
        try:
            if self.camera is None:
                raise InputError(self.camera_error or "no_camera_info",
                                 "no valid camera_info received yet" if self.camera_error in (None, "no_camera_info")
                                 else "the latest camera_info is invalid")
            if isinstance(msg, Image):
                w, h = check_image_msg(msg)
                check_image_against_camera(w, h, self.camera)
            self._check_stamp(stamp)
        except InputError as err:
            self._reject(frame, err.reason, str(err))
            return
        self.last_stamp_ns = stamp
        mode = self.p("mode")
        max_rate = float(self.p("max_rate"))
        with self._slot_cond:
            if mode == "on_demand" and self._relocalize_requests == 0:
                dropped, reason = frame, "idle"
            elif max_rate > 0 and t_recv - self._last_process_mono < 1.0 / max_rate and self._relocalize_requests == 0:
                dropped, reason = frame, "rate_limited"
            else:
                dropped, reason = self._slot, "stale_frame"
                self._slot = frame
                self._slot_cond.notify()
        if dropped is not None:
            self._status(dropped, reason=reason, kind="dropped")

    def _check_stamp(self, stamp: int) -> None:
        """InputError for a stamp older than or equal to the last accepted one (out_of_order_stamp /
        duplicate_stamp) or more than FUTURE_STAMP_TOLERANCE_S ahead of the node clock (future_stamp, which then
        does not become the last stamp: one bad stamp must not lock the node). The clock is sim time under
        use_sim_time; a clock still at 0 (no /clock yet) checks nothing."""
        now = self.get_clock().now().nanoseconds
        if now > 0 and stamp > now + int(FUTURE_STAMP_TOLERANCE_S * 1e9):
            raise InputError("future_stamp", f"image stamp {stamp * 1e-9:.6f} s is {(stamp - now) * 1e-9:.1f} s "
                                             "ahead of the node clock")
        if self.last_stamp_ns is not None and stamp == self.last_stamp_ns:
            raise InputError("duplicate_stamp", f"image stamp {stamp * 1e-9:.6f} s repeats the previous frame's")
        if self.last_stamp_ns is not None and stamp < self.last_stamp_ns:
            raise InputError("out_of_order_stamp", f"image stamp {stamp * 1e-9:.6f} s is older than the previous "
                                                   f"{self.last_stamp_ns * 1e-9:.6f} s")

    # ---- worker ------------------------------------------------------------------------------------------------
    def _work_loop(self):
        while not self._stop.is_set():
            with self._slot_cond:
                while self._slot is None and not self._stop.is_set():
                    self._slot_cond.wait(0.5)
                if self._stop.is_set():
                    return
                frame, self._slot = self._slot, None
                self._last_process_mono = time.monotonic()
                one_shot = self._relocalize_requests > 0
                if one_shot:
                    self._relocalize_requests -= 1
            try:
                self._process(frame, one_shot)
            except Exception as err:  # noqa: BLE001 - a bug in one frame must not kill the node
                self.get_logger().error(f"frame {frame.index}: {err}\n{traceback.format_exc()}",
                                        throttle_duration_sec=5.0)
                self._reject(frame, "exception", str(err))

    def _process(self, frame: _Frame, one_shot: bool) -> None:
        t0 = time.perf_counter()
        try:
            if isinstance(frame.msg, CompressedImage):
                rgb = compressed_msg_to_rgb(frame.msg)
                check_image_against_camera(rgb.shape[1], rgb.shape[0], frame.camera)
            else:
                rgb = image_msg_to_rgb(frame.msg)
        except InputError as err:
            self._reject(frame, err.reason, str(err))
            return
        t_pre = (time.perf_counter() - t0) * 1e3
        max_age = float(self.p("max_frame_age"))
        if max_age > 0 and self._age_ms(frame.stamp_ns) > max_age * 1e3:
            self._status(frame, reason="stale_frame", kind="dropped")
            return
        # camera <-> body extrinsic
        body = self.frames["base_frame"] or frame.camera_frame
        try:
            T_base_cam = self._extrinsic(frame)
        except TfError as err:
            self._reject(frame, "missing_tf", f"camera->base extrinsic: {err}")
            return
        with self._loc_lock:
            loc = self.localizer
        prior = self._take_prior(T_base_cam)
        if prior is not None and loc.refine:
            res = loc.refine_from_prior(rgb, frame.camera, prior)
        else:
            res = loc.localize(rgb, frame.camera, prior_T_world_cam=prior)
        res.timings_ms.setdefault("preprocess", 0.0)
        res.timings_ms["preprocess"] += t_pre
        reason = gate_result(res, self.thresholds)
        if reason != "ok":
            self._reject(frame, reason, f"pose rejected: {reason}", result=res)
            return
        T_map_base, cov_base = camera_to_body(res.T_world_cam, res.covariance, T_base_cam)
        status_reason = "ok"
        tf_msg = None
        if self.p("publish_tf"):
            try:
                tf_msg = self._map_tf(frame, body, T_map_base)
            except TfError as err:
                status_reason = "missing_tf"
                self.get_logger().warning(f"map->odom not published: {err}", throttle_duration_sec=5.0)
        pose = PoseWithCovarianceStamped()
        pose.header.stamp = frame.msg.header.stamp
        pose.header.frame_id = self.frames["map_frame"]
        T_to_pose(T_map_base, pose.pose.pose)
        pose.pose.covariance = covariance_to_ros(cov_base)
        now = time.monotonic()
        lost = self.last_accept_mono is None or now - self.last_accept_mono > float(self.p("lost_timeout"))
        with self._pub_lock:
            self._outpubs["pose"].publish(pose)
            if tf_msg is not None:
                self._outpubs["tf"].publish(tf_msg)
            if lost and "initialpose" in self._outpubs:
                self._sent_initialpose_stamp = stamp_to_ns(pose.header.stamp)
                self._outpubs["initialpose"].publish(pose)
        self.last_accept_mono = now
        self._status(frame, reason=status_reason, accepted=True, result=res, cov=cov_base, kind="accepted")

    def _extrinsic(self, frame: _Frame) -> np.ndarray:
        """T_base_cam (identity when reporting the camera pose)."""
        base = self.frames["base_frame"]
        if not base or base == frame.camera_frame:
            return np.eye(4)
        if self.T_base_cam_param is not None:
            return self.T_base_cam_param
        if not frame.camera_frame:
            raise TfError("the image has no frame_id and camera_frame is empty")
        return self.tf_buffer.lookup(base, frame.camera_frame, None, timeout_s=float(self.p("tf_timeout")))

    def _map_tf(self, frame: _Frame, body: str, T_map_body: np.ndarray) -> TFMessage:
        odom = self.frames["odom_frame"]
        tr = TransformStamped()
        stamp_ns = frame.stamp_ns + int(float(self.p("transform_tolerance")) * 1e9)
        tr.header.stamp = ns_to_stamp(stamp_ns, type(tr.header.stamp))
        tr.header.frame_id = self.frames["map_frame"]
        if odom:
            T_odom_body = self.tf_buffer.lookup(odom, body, frame.stamp_ns, timeout_s=float(self.p("tf_timeout")))
            T = T_map_body @ invert_T(T_odom_body)
            tr.child_frame_id = odom
            self.last_map_odom = T
        else:
            T = T_map_body
            tr.child_frame_id = body
        T_to_transform(T, tr.transform)
        return TFMessage(transforms=[tr])

    def _republish_tf(self):
        if not self._active or self.last_map_odom is None:
            return
        tr = TransformStamped()
        now = self.get_clock().now().nanoseconds + int(float(self.p("transform_tolerance")) * 1e9)
        tr.header.stamp = ns_to_stamp(now, type(tr.header.stamp))
        tr.header.frame_id = self.frames["map_frame"]
        tr.child_frame_id = self.frames["odom_frame"]
        T_to_transform(self.last_map_odom, tr.transform)
        with self._pub_lock:
            self._outpubs["tf"].publish(TFMessage(transforms=[tr]))

    def _take_prior(self, T_base_cam: np.ndarray) -> np.ndarray | None:
        prior, self.prior = self.prior, None
        if prior is None or time.monotonic() - prior[1] > float(self.p("prior_max_age")):
            return None
        return prior[0] @ T_base_cam  # T_map_base @ T_base_cam = T_map_cam

    def _age_ms(self, stamp_ns: int) -> float:
        return (self.get_clock().now().nanoseconds - stamp_ns) * 1e-6

    # ---- outputs -----------------------------------------------------------------------------------------------
    def _reject(self, frame: _Frame, reason: str, message: str, result=None) -> None:
        self.get_logger().warning(f"frame rejected ({reason}): {message}", throttle_duration_sec=5.0)
        self._status(frame, reason=reason, result=result, kind="rejected")

    def _status(self, frame: _Frame, reason: str, kind: str, accepted: bool = False, result=None,
                cov=None) -> None:
        """Count the frame (kind: 'accepted' | 'rejected' | 'dropped', plus its reason) and publish ~/status."""
        with self._stats_lock:
            self.counters[reason] += 1
            if kind == "accepted":
                self.frames_accepted += 1
            elif kind == "rejected":
                self.frames_rejected += 1
            else:
                self.frames_dropped += 1
        s = RelocalizationStatus()
        s.header.stamp = ns_to_stamp(frame.stamp_ns, type(s.header.stamp)) if frame.stamp_ns >= 0 else s.header.stamp
        s.header.frame_id = self.frames["map_frame"]
        s.accepted, s.reason = bool(accepted), reason
        if result is not None:
            s.front_end = str(result.front_end)
            s.inlier_count = max(int(result.inlier_count), 0)
            s.inlier_ratio = float(result.inlier_ratio)
            s.weight_mass = float(result.weight_mass)
            s.confidence = float(result.confidence)
            r = result.refinement
            if r is not None:
                s.refinement_ran, s.refinement_accepted = bool(r.ran), bool(r.accepted)
                s.refinement_iterations = max(int(r.iterations), 0)
                s.refinement_cost = float(r.cost_final)
                s.refinement_reason, s.refinement_init = str(r.reason), str(r.init)
            t = result.timings_ms
            s.latency_preprocess_ms = float(t.get("preprocess", 0.0))
            s.latency_front_end_ms = float(t.get("network", 0.0) + t.get("solver", 0.0))
            s.latency_refinement_ms = float(t.get("refinement", 0.0))
        if cov is not None:
            s.sigma_position_m = float(math.sqrt(max(np.trace(cov[:3, :3]), 0.0)))
            s.sigma_rotation_deg = float(math.degrees(math.sqrt(max(np.trace(cov[3:, 3:]), 0.0))))
        s.latency_total_ms = float((time.monotonic() - frame.t_recv) * 1e3)
        since = self._age_ms(frame.stamp_ns)
        s.latency_since_stamp_ms = float(since)
        s.frames_received = self.frames_received
        s.frames_dropped = self.frames_dropped
        s.frames_rejected = self.frames_rejected
        self.recent.append((time.monotonic(), bool(accepted), since if accepted else float("nan"), reason))
        with self._pub_lock:
            if "status" in self._outpubs:
                self._outpubs["status"].publish(s)
        with self._result_cond:
            self._last_result = (frame.index, accepted, reason, s)
            self._result_cond.notify_all()

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        window = [r for r in self.recent if now - r[0] < 10.0]
        span = max(now - window[0][0], 1e-3) if window else 1.0
        processed = [r for r in window if r[3] not in ("stale_frame", "rate_limited", "idle")]
        acc = [r for r in window if r[1]]
        lat = [r[2] for r in acc if math.isfinite(r[2])]
        if not self._active:
            level, msg = DiagnosticStatus.ERROR, "not active"
        elif self.frames_received == 0:
            level, msg = DiagnosticStatus.WARN, "no images received"
        elif self.camera is None:
            level, msg = DiagnosticStatus.ERROR, f"no usable camera_info ({self.camera_error})"
        elif self.last_accept_mono is None or now - self.last_accept_mono > float(self.p("lost_timeout")):
            last = window[-1][3] if window else "no recent frames"
            level, msg = DiagnosticStatus.WARN, f"lost: no accepted pose recently (last reason: {last})"
        else:
            level, msg = DiagnosticStatus.OK, "localized"
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: relocalization", message=msg,
                              hardware_id=str(self.p("device")))
        vals = {"processed_rate_hz": f"{len(processed) / span:.2f}", "accepted_rate_hz": f"{len(acc) / span:.2f}",
                "latency_median_ms": f"{float(np.median(lat)):.1f}" if lat else "nan",
                "frames_received": str(self.frames_received), "frames_dropped": str(self.frames_dropped),
                "frames_rejected": str(self.frames_rejected), "frames_accepted": str(self.frames_accepted),
                "front_end": self.localizer.front_end_name if self.localizer is not None else "",
                "precision": json.dumps(self.localizer.precision if self.localizer is not None else {},
                                        sort_keys=True),
                "backends": json.dumps(self.localizer.backends if self.localizer is not None else {},
                                       sort_keys=True),
                "uncertainty_calibrated": str(self.localizer is not None and not self.localizer.uncertainty_warning),
                "reasons": json.dumps(dict(self.counters), sort_keys=True)}
        st.values = [KeyValue(key=k, value=v) for k, v in vals.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        with self._pub_lock:
            if "diag" in self._outpubs:
                self._outpubs["diag"].publish(arr)

    # ---- services ----------------------------------------------------------------------------------------------
    def _srv_relocalize(self, request, response):
        """Localize the next valid frame regardless of mode/rate limit; waits up to 10 s for its outcome."""
        if not self._active:
            response.success, response.message = False, "node is not active"
            return response
        with self._result_cond:
            before = self._last_result[0] if self._last_result else -1
        with self._slot_cond:
            self._relocalize_requests += 1
        timeout = float(self.p("relocalize_timeout"))
        deadline = time.monotonic() + timeout
        with self._result_cond:
            while True:
                r = self._last_result
                if r is not None and r[0] > before and r[2] not in ("stale_frame", "rate_limited", "idle"):
                    response.success, response.message = bool(r[1]), r[2]
                    return response
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._result_cond.wait(left)
        with self._slot_cond:  # withdraw the request unless a frame took it (requests are fungible)
            self._relocalize_requests = max(0, self._relocalize_requests - 1)
        response.success, response.message = False, f"timeout: no frame processed within {timeout:g} s"
        return response

    def _srv_reload(self, request, response):
        try:
            loc = self._load_localizer()
        except Exception as err:  # noqa: BLE001 - reported to the caller, the old map stays
            response.success, response.message = False, f"reload failed, keeping the old map: {err}"
            return response
        with self._loc_lock:
            self.localizer = loc
        freeze_gc()
        response.success, response.message = True, f"loaded {self.p('map_path')} ({loc.front_end_name})"
        self.get_logger().info(response.message)
        return response


def freeze_gc() -> None:
    """After a map (re)load: collect everything (the previous map's cycles included), then move the objects alive now
    (torch, numba, rclpy, the map: ~300 000) to the garbage collector's permanent generation. Full collections
    otherwise walk them all, holding the GIL for 90-180 ms (several per 400-frame replay on 2 cores) and stalling
    the image callback and every publication; the per-frame garbage is still collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv
    if wants_help(argv):
        print(node_help("reloc-localizer", __doc__.split("\n\n")[0], LOCALIZER_PARAMS, "localizer.yaml"))
        return 0
    rclpy.init(args=argv)
    node = LocalizerNode(argv=argv)

    def autostart():
        if node.p("autostart"):
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: configure failed")
            else:
                node.trigger_activate()
    return spin_until_shutdown(node, InlineExecutor(offload_groups=[node._srv_group]), on_start=autostart,
                               on_exit=node._stop_worker)


if __name__ == "__main__":
    sys.exit(main())

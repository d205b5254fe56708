"""Evaluation collector node: records what the localizer publishes (``~/pose``, ``~/status``, ``/tf``) during a
bag replay, with receive times, as plain Python records for ``reloc_ros.evaluation.replay_metrics``.

Stamps are recorded as published (the replay's re-based time); the player maps them back to the bag's time base.
"""
from __future__ import annotations

import threading
import time

from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from reloc_ros.msg import RelocalizationStatus

from .conversions import covariance_from_ros, pose_to_T, stamp_to_ns, transform_to_T
from .qos import tf_qos

__all__ = ["EvalCollector"]

_STATUS_FIELDS = ("front_end", "accepted", "reason", "inlier_count", "inlier_ratio", "weight_mass", "confidence",
                  "refinement_ran", "refinement_accepted", "refinement_iterations", "refinement_cost",
                  "refinement_reason", "refinement_init",
                  "sigma_position_m", "sigma_rotation_deg", "latency_preprocess_ms", "latency_front_end_ms",
                  "latency_refinement_ms", "latency_total_ms", "latency_since_stamp_ms", "frames_received",
                  "frames_dropped", "frames_rejected")


class EvalCollector(Node):
    """Subscribes to ``<localizer>/pose``, ``<localizer>/status`` and ``/tf``; ``wait_for_status(stamp)`` blocks until
    the status of one frame arrived (used by the as-fast-as-the-node-keeps-up replay)."""

    def __init__(self, localizer_name: str = "reloc_localizer", node_name: str = "reloc_eval_collector"):
        super().__init__(node_name)
        base = "/" + localizer_name.strip("/")
        self.pose_topic, self.status_topic = f"{base}/pose", f"{base}/status"
        self.poses: list[dict] = []
        self.statuses: list[dict] = []
        self.tf: list[dict] = []
        self._cond = threading.Condition()
        self._status_stamps: set[int] = set()
        reliable = QoSProfile(depth=200, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(PoseWithCovarianceStamped, self.pose_topic, self._on_pose, reliable)
        self.create_subscription(RelocalizationStatus, self.status_topic, self._on_status, reliable)
        self.create_subscription(TFMessage, "/tf", self._on_tf, tf_qos())

    # ---- callbacks ---------------------------------------------------------------------------------------------
    def _on_pose(self, msg: PoseWithCovarianceStamped) -> None:
        now = time.time_ns()
        stamp = stamp_to_ns(msg.header.stamp)
        self.poses.append({"stamp_ns": stamp, "receive_ns": now, "frame_id": msg.header.frame_id,
                           "T": pose_to_T(msg.pose.pose).tolist(),
                           "covariance": covariance_from_ros(msg.pose.covariance).tolist()})

    def _on_status(self, msg: RelocalizationStatus) -> None:
        now = time.time_ns()
        rec = {"stamp_ns": stamp_to_ns(msg.header.stamp), "receive_ns": now, "frame_id": msg.header.frame_id}
        for f in _STATUS_FIELDS:
            v = getattr(msg, f)
            rec[f] = v if isinstance(v, (bool, str)) else float(v) if isinstance(v, float) else int(v)
        with self._cond:
            self.statuses.append(rec)
            self._status_stamps.add(rec["stamp_ns"])
            self._cond.notify_all()

    def _on_tf(self, msg: TFMessage) -> None:
        now = time.time_ns()
        for t in msg.transforms:
            self.tf.append({"stamp_ns": stamp_to_ns(t.header.stamp), "receive_ns": now,
                            "parent": t.header.frame_id, "child": t.child_frame_id,
                            "T": transform_to_T(t.transform).tolist()})

    # ---- waiting -------------------------------------------------------------------------------------------------
    def wait_for_status(self, stamp_ns: int, timeout_s: float) -> bool:
        """True once a status with exactly ``stamp_ns`` arrived, False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while stamp_ns not in self._status_stamps:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Return once no status arrived for ``quiet_s`` seconds (or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                n = len(self.statuses)
                self._cond.wait(quiet_s)
                if len(self.statuses) == n:
                    return

    def localizer_ready(self) -> bool:
        """Whether the localizer publishes its status topic (it is up)."""
        return self.count_publishers(self.status_topic) > 0

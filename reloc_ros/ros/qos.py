"""QoS profiles used by the nodes (names match the ``*_qos`` parameters)."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["image_qos", "latched_qos", "tf_qos", "tf_static_qos", "IMAGE_QOS_CHOICES"]

IMAGE_QOS_CHOICES = ("sensor_data", "reliable")


def image_qos(kind: str, depth: int = 5) -> QoSProfile:
    """Camera streams: ``sensor_data`` (best effort, keep last ``depth``) or ``reliable`` (keep last ``depth``)."""
    if kind == "sensor_data":
        return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)
    if kind == "reliable":
        return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    raise ValueError(f"unknown image QoS {kind!r}; choose one of {IMAGE_QOS_CHOICES}")


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient-local, like amcl_pose / map: late subscribers get the last message."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def tf_qos() -> QoSProfile:
    """/tf as tf2_ros uses it: reliable, volatile, depth 100."""
    return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def tf_static_qos() -> QoSProfile:
    """/tf_static: reliable, transient-local, depth 100 (static_transform_broadcaster's profile)."""
    return latched_qos(100)


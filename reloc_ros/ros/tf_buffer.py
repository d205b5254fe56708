"""``TfListener``: fills the core's ``TfBuffer`` (``reloc_ros/tf_buffer.py``, pure) from a node's /tf (volatile)
and /tf_static (transient-local)."""
from __future__ import annotations

from ..tf_buffer import LATEST, ConnectivityError, ExtrapolationError, TfBuffer, TfError, UnknownFrameError

__all__ = ["TfBuffer", "TfError", "UnknownFrameError", "ConnectivityError", "ExtrapolationError", "TfListener",
           "LATEST"]


class TfListener:
    """Fills a ``TfBuffer`` from /tf (volatile) and /tf_static (transient-local) on an rclpy node.

    Malformed transforms are counted in ``self.rejected`` (and the last reason kept in ``self.last_error``), never
    raised into the executor.
    """

    def __init__(self, node, buffer: TfBuffer, callback_group=None):
        from tf2_msgs.msg import TFMessage

        from .qos import tf_qos, tf_static_qos
        self.buffer = buffer
        self.rejected = 0
        self.last_error = ""
        self.subs = [
            node.create_subscription(TFMessage, "/tf", lambda m: self._on(m, False), tf_qos(),
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, "/tf_static", lambda m: self._on(m, True), tf_static_qos(),
                                     callback_group=callback_group),
        ]

    def _on(self, msg, static: bool) -> None:
        for tr in msg.transforms:
            try:
                t, r = tr.transform.translation, tr.transform.rotation
                stamp = tr.header.stamp.sec * 1_000_000_000 + tr.header.stamp.nanosec
                self.buffer.set_transform(tr.header.frame_id, tr.child_frame_id, stamp, translation=(t.x, t.y, t.z),
                                          quat_xyzw=(r.x, r.y, r.z, r.w), static=static)
            except ValueError as err:
                self.rejected += 1
                self.last_error = str(err)

    def destroy(self, node) -> None:
        for s in self.subs:
            node.destroy_subscription(s)
        self.subs = []

"""Shared helpers of the DDS tests (test_ros_nodes.py, test_ros_paths.py): the ROS environment fixture and a test-side
client node with bounded waits and a bounded teardown.

Import the fixture into a test module with ``from ros_helpers import env`` (pytest collects it from there).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import zlib

import pytest

_CLIENT_IDS = itertools.count()


def ns(stamp) -> int:
    """builtin_interfaces/Time -> int nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope="module")
def env(request):
    """ROS environment of this test module (a ROS_DOMAIN_ID of its own, from the pid and the module name), also
    applied to this process for its clients."""
    from reloc_ros.ros.runner import ros_env
    e = ros_env(domain_id=1 + (os.getpid() + zlib.crc32(request.module.__name__.encode())) % 200)
    keys = ("HOME", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
            "ROS_DOMAIN_ID")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: e[k] for k in keys if k in e})
    yield e
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Client:
    """A test-side rclpy node in its own Context, spinning in a background thread, recording what it receives:
    ``statuses``, ``poses``, ``tf``, ``diag`` of the localizer ``localizer`` (a node name), guarded by ``lock``."""

    def __init__(self, domain_id: int, localizer: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        from reloc_ros.msg import RelocalizationStatus
        from reloc_ros.ros.qos import latched_qos, tf_qos
        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"test_client_{os.getpid()}_{next(_CLIENT_IDS)}", context=self.ctx)
        self.lock = threading.Lock()
        self.statuses, self.poses, self.tf, self.diag = [], [], [], []
        big = QoSProfile(depth=10000, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        n.create_subscription(RelocalizationStatus, f"/{localizer}/status", lambda m: self._rec(self.statuses, m), big)
        n.create_subscription(PoseWithCovarianceStamped, f"/{localizer}/pose", lambda m: self._rec(self.poses, m),
                              latched_qos(1))
        n.create_subscription(TFMessage, "/tf", lambda m: self._rec(self.tf, m), tf_qos())
        n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._rec(self.diag, m), 100)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:  # close() shut the context down
            pass

    def _rec(self, lst, m):
        with self.lock:
            lst.append(m)

    def record(self, cls, topic, qos=10) -> list:
        """Subscribe ``topic``; returns the list its messages are appended to (under ``lock``)."""
        out = []
        self.node.create_subscription(cls, topic, lambda m: self._rec(out, m), qos)
        return out

    def publisher(self, cls, topic, qos=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        return self.node.create_publisher(cls, topic, qos or QoSProfile(depth=1000,
                                                                       reliability=ReliabilityPolicy.RELIABLE))

    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred():
                    return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_matched(self, pubs, timeout: float, what: str, count: int = 1):
        """Wait until every publisher in ``pubs`` has ``count`` matched subscriptions: a message published before
        DDS has matched the node's subscription is lost."""
        self.wait(lambda: all(p.get_subscription_count() >= count for p in pubs), timeout, what)

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0):
        """Call service ``name`` and return its response (bounded by ``timeout`` s in all)."""
        deadline = time.monotonic() + timeout
        fut = self.call_async(srv_type, name, request, timeout)
        self.wait(fut.done, max(deadline - time.monotonic(), 0.1), f"the response of {name}")
        return fut.result()

    def call_async(self, srv_type, name: str, request=None, timeout: float = 10.0):
        """Start a call of service ``name`` (after waiting up to ``timeout`` s for it); returns the future."""
        c = self.node.create_client(srv_type, name)
        assert c.wait_for_service(timeout_sec=timeout), f"service {name} did not appear within {timeout} s"
        return c.call_async(request if request is not None else srv_type.Request())

    def set_params(self, node_name: str, timeout: float = 10.0, **values):
        """Set parameters of ``node_name`` through its ~/set_parameters service; asserts each one succeeded."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        res = self.call(SetParameters, f"/{node_name}/set_parameters", req, timeout)
        for (k, _), r in zip(values.items(), res.results):
            assert r.successful, f"setting {k} on {node_name} failed: {r.reason}"

    def close(self):
        # shutting the context down first makes spin() return; never wait unboundedly on the spin thread
        self.rclpy.try_shutdown(context=self.ctx)
        self.thread.join(timeout=10.0)
        self.executor.shutdown(timeout_sec=10.0)
        self.node.destroy_node()

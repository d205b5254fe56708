"""The bond (reloc_ros/ros/bond.py, bondcpp's state machine, which Nav2's lifecycle_manager uses to supervise its
nodes): two sides over real DDS in one process form, a broken bond reaches the sister, a silent sister times out."""
import threading
import time

import pytest

from ros_helpers import env  # noqa: F401 - fixture

pytestmark = pytest.mark.ros


@pytest.fixture
def node(env):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
    n = rclpy.create_node("bond_test", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(n)
    t = threading.Thread(target=lambda: _spin(ex), daemon=True)
    t.start()
    yield n
    rclpy.try_shutdown(context=ctx)
    t.join(timeout=10)
    ex.shutdown(timeout_sec=10)
    n.destroy_node()


def _spin(ex):
    from rclpy.executors import ExternalShutdownException
    try:
        ex.spin()
    except ExternalShutdownException:
        pass


def _pair(node, manager_timeout=1.0, **kw):
    """The managed node's side (as nav2_util::LifecycleNode: own timeout off) and the manager's."""
    from reloc_ros.ros.bond import DEAD, Bond
    events = []
    managed = Bond(node, "reloc_localizer", heartbeat_period=0.1, disable_heartbeat_timeout=True,
                   on_broken=lambda: events.append("managed broken"), **kw).start()
    manager = Bond(node, "reloc_localizer", heartbeat_period=0.1, heartbeat_timeout=manager_timeout,
                   on_formed=lambda: events.append("manager formed"),
                   on_broken=lambda: events.append("manager broken"), **kw).start()
    return managed, manager, events, DEAD


def test_bond_forms_and_a_broken_bond_reaches_the_manager(node):
    managed, manager, events, DEAD = _pair(node)
    assert manager.wait_until_formed(30) and managed.wait_until_formed(30)
    time.sleep(1.5)  # longer than the manager's 1 s heartbeat timeout: the heartbeats keep it alive
    assert manager.state == "alive" and managed.state == "alive"
    managed.break_bond()  # on_deactivate
    assert manager.wait_until_broken(30) and managed.wait_until_broken(30)
    # the manager dies on the node's active:false and acknowledges; the node's side dies on the acknowledgement
    assert events == ["manager formed", "manager broken", "managed broken"]
    assert managed.state == manager.state == DEAD
    managed.destroy()
    manager.destroy()


def test_a_silent_node_breaks_the_managers_bond_after_its_timeout(node):
    managed, manager, events, _ = _pair(node)
    assert manager.wait_until_formed(30)
    managed._cancel("publish")  # the node hangs (no heartbeats), as a crashed or stuck process
    t0 = time.monotonic()
    assert manager.wait_until_broken(30)
    assert time.monotonic() - t0 >= 0.9  # not before the heartbeat timeout (1 s)
    assert "manager broken" in events
    managed.destroy()
    manager.destroy()


def test_bad_timeouts_are_refused(node):
    from reloc_ros.ros.bond import Bond
    with pytest.raises(ValueError, match="heartbeat_period must be > 0"):
        Bond(node, "x", heartbeat_period=0.0)

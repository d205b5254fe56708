"""A bond (``bond/msg/Status`` heartbeats on topic ``bond``) compatible with bondcpp, the library Nav2's
``lifecycle_manager`` uses to supervise the nodes it manages. There is no bondpy for rclpy on the package index.

How Nav2 uses it (``nav2_util::LifecycleNode`` / ``nav2_lifecycle_manager``):

- the managed node creates its side in ``on_activate`` (``createBond``: id = the node's name, topic ``bond``,
  heartbeat period ``bond_heartbeat_period``, heartbeat timeout 4 s, its own heartbeat timeout disabled) and
  destroys it in ``on_deactivate`` (which breaks it: ``active: false``);
- the manager, after a successful *activate*, creates its side for that node name (``bond_timeout``, default 4 s,
  as heartbeat timeout; period 0.1 s), waits up to ``bond_timeout / 2`` for the bond to form, and then checks every
  200 ms: a broken bond (no heartbeat for ``bond_timeout``, or the node said ``active: false``) makes it reset
  (deactivate + clean up) all the nodes it manages.

``Bond`` is the state machine of bondcpp (``bond/BondSM.sm``), either side: WAITING_FOR_SISTER -> ALIVE on the
first status of the same ``id`` from another ``instance_id``; ALIVE -> DEAD on the sister's ``active: false`` or
when her heartbeats stop for ``heartbeat_timeout``; ``break_bond()`` in ALIVE -> AWAIT_SISTER_DEATH (publishing
``active: false`` every ``dead_publish_period``) -> DEAD on her ``active: false`` or after ``disconnect_timeout``;
WAITING_FOR_SISTER -> DEAD after ``connect_timeout``. Statuses are published every ``heartbeat_period`` while
waiting or alive (``active: true``), none once dead. All timers run on the steady clock (as bondcpp's wall timers),
so ``use_sim_time`` does not change them. Callbacks run on the node's executor; ``state`` may be read from any
thread.
"""
from __future__ import annotations

import threading
import time
import uuid

from bond.msg import Constants, Status
from rclpy.clock import Clock, ClockType
from rclpy.qos import QoSProfile, ReliabilityPolicy

__all__ = ["Bond", "create_bond", "BOND_TOPIC", "NAV2_HEARTBEAT_TIMEOUT"]

BOND_TOPIC = "bond"
NAV2_HEARTBEAT_TIMEOUT = 4.0  # what nav2_util::LifecycleNode::createBond sets (and lifecycle_manager's bond_timeout)

WAITING_FOR_SISTER, ALIVE, AWAIT_SISTER_DEATH, DEAD = "waiting_for_sister", "alive", "await_sister_death", "dead"


class Bond:
    """One side of a bond ``bond_id`` on ``topic``, created on ``node`` (see the module docstring).

    ``on_formed`` / ``on_broken`` are called (without arguments, on the executor) when the bond forms / dies.
    Nothing is published before ``start()``."""

    def __init__(self, node, bond_id: str, topic: str = BOND_TOPIC, *,
                 heartbeat_period: float = Constants.DEFAULT_HEARTBEAT_PERIOD,
                 heartbeat_timeout: float = Constants.DEFAULT_HEARTBEAT_TIMEOUT,
                 connect_timeout: float = Constants.DEFAULT_CONNECT_TIMEOUT,
                 disconnect_timeout: float = Constants.DEFAULT_DISCONNECT_TIMEOUT,
                 dead_publish_period: float = Constants.DEAD_PUBLISH_PERIOD,
                 disable_heartbeat_timeout: bool = False, on_formed=None, on_broken=None, callback_group=None):
        for name, v in (("heartbeat_period", heartbeat_period), ("heartbeat_timeout", heartbeat_timeout),
                        ("connect_timeout", connect_timeout), ("disconnect_timeout", disconnect_timeout),
                        ("dead_publish_period", dead_publish_period)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.node, self.id, self.topic = node, str(bond_id), topic
        self.instance_id = str(uuid.uuid4())
        self.heartbeat_period, self.heartbeat_timeout = float(heartbeat_period), float(heartbeat_timeout)
        self.connect_timeout, self.disconnect_timeout = float(connect_timeout), float(disconnect_timeout)
        self.dead_publish_period = float(dead_publish_period)
        self.disable_heartbeat_timeout = bool(disable_heartbeat_timeout)
        self.on_formed, self.on_broken = on_formed, on_broken
        self.sister_instance_id: str | None = None
        self._group = callback_group
        self._lock = threading.Lock()
        self._state = WAITING_FOR_SISTER
        self._sister_died_first = False
        self._started = False
        self._destroyed = False
        self._clock = Clock(clock_type=ClockType.STEADY_TIME)
        # bondcpp: publisher keep-last 5, subscription keep-last 100, both reliable + volatile
        self._pub = node.create_publisher(Status, topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self._sub = node.create_subscription(Status, topic, self._on_status,
                                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE),
                                             callback_group=callback_group)
        self._timers = {}

    # ---- state ----------------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def is_broken(self) -> bool:
        return self.state == DEAD

    def is_formed(self) -> bool:
        return self.state != WAITING_FOR_SISTER

    def wait_until_formed(self, timeout: float) -> bool:
        """Poll until formed (needs the node spun by another thread). False after ``timeout`` s."""
        return self._wait(lambda: self.state != WAITING_FOR_SISTER, timeout)

    def wait_until_broken(self, timeout: float) -> bool:
        return self._wait(lambda: self.state == DEAD, timeout)

    @staticmethod
    def _wait(pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # ---- life -----------------------------------------------------------------------------------------------------
    def _timer(self, name, period, callback, autostart=True):
        timer = self.node.create_timer(period, callback, callback_group=self._group, clock=self._clock)
        if not autostart:  # (create_timer's own autostart= is not in every distribution's rclpy)
            timer.cancel()
        self._timers[name] = timer

    def start(self) -> "Bond":
        """Start publishing heartbeats and waiting for the sister (connect timeout from now)."""
        if self._started:
            return self
        self._started = True
        self._timer("publish", self.heartbeat_period, self._publish_tick)
        self._timer("connect", self.connect_timeout, lambda: self._event("connect_timeout"))
        self._timer("heartbeat", self.heartbeat_timeout, self._on_heartbeat_timeout, autostart=False)
        self._timer("disconnect", self.disconnect_timeout, lambda: self._event("disconnect_timeout"), autostart=False)
        self._timer("dead_publish", self.dead_publish_period, self._publish_tick, autostart=False)
        return self

    def break_bond(self) -> None:
        """Die: tell the sister (``active: false``, repeated until she acknowledges or ``disconnect_timeout``)."""
        if not self._started or self._destroyed:
            return
        if self.state != DEAD:
            self._event("die")
            self._publish(False)

    def destroy(self) -> None:
        """Break the bond (if not broken) and remove its timers, publisher and subscription from the node."""
        if self._destroyed:
            return
        self.break_bond()
        self._destroyed = True
        for t in self._timers.values():
            t.cancel()
            self.node.destroy_timer(t)
        self._timers = {}
        self.node.destroy_subscription(self._sub)
        self.node.destroy_publisher(self._pub)

    # ---- the state machine (bond/BondSM.sm) ---------------------------------------------------------------------
    def _cancel(self, *names):
        for n in names:
            t = self._timers.get(n)
            if t is not None:
                t.cancel()

    def _restart(self, name):
        t = self._timers.get(name)
        if t is not None:
            t.reset()

    def _event(self, event: str) -> None:
        callbacks = []
        with self._lock:
            if self._destroyed:
                return
            s = self._state
            if s == WAITING_FOR_SISTER:
                if event == "sister_alive":
                    self._state = ALIVE
                    callbacks += self._connected()
                elif event == "sister_dead":
                    self._state = DEAD
                    callbacks += self._connected()
                    self._sister_died_first = True
                    callbacks += self._death()
                elif event in ("connect_timeout", "die"):
                    self._state = DEAD
                    callbacks += self._death()
            elif s == ALIVE:
                if event == "sister_alive":
                    self._restart("heartbeat")
                elif event == "sister_dead":
                    self._state = DEAD
                    self._sister_died_first = True
                    callbacks += self._death()
                elif event == "heartbeat_timeout":
                    self._state = DEAD
                    callbacks += self._death()
                elif event == "die":
                    self._state = AWAIT_SISTER_DEATH
                    self._cancel("heartbeat")
                    self._restart("disconnect")
                    self._restart("dead_publish")
            elif s == AWAIT_SISTER_DEATH:
                if event in ("sister_dead", "disconnect_timeout"):
                    self._state = DEAD
                    callbacks += self._death()
            # DEAD: every event is ignored
        for cb in callbacks:
            cb()

    def _connected(self):
        self._cancel("connect")
        self._restart("heartbeat")
        return [self.on_formed] if self.on_formed else []

    def _death(self):
        self._cancel("heartbeat", "disconnect", "connect")
        return [self.on_broken] if self.on_broken else []

    # ---- callbacks --------------------------------------------------------------------------------------------------
    def _on_heartbeat_timeout(self):
        if not self.disable_heartbeat_timeout:
            self._event("heartbeat_timeout")

    def _on_status(self, msg: Status) -> None:
        if not self._started or msg.id != self.id or msg.instance_id == self.instance_id:
            return  # another bond, or our own status
        if self.sister_instance_id is None:
            self.sister_instance_id = msg.instance_id
        if msg.active:
            self._event("sister_alive")
        else:
            self._event("sister_dead")
            if self._sister_died_first:  # acknowledge her death at once (bondcpp does)
                self._publish(False)

    def _publish_tick(self):
        s = self.state
        if s in (WAITING_FOR_SISTER, ALIVE):
            self._publish(True)
        elif s == AWAIT_SISTER_DEATH:
            self._publish(False)
        else:
            self._cancel("publish", "dead_publish")

    def _publish(self, active: bool) -> None:
        if self._destroyed:
            return
        msg = Status(id=self.id, instance_id=self.instance_id, active=bool(active),
                     heartbeat_timeout=self.heartbeat_timeout, heartbeat_period=self.heartbeat_period)
        msg.header.stamp = self._clock.now().to_msg()
        self._pub.publish(msg)


def create_bond(node, heartbeat_period: float) -> Bond | None:
    """The managed node's side, as ``nav2_util::LifecycleNode::createBond``: id = the node's name, topic ``bond``,
    heartbeat timeout 4 s (its own timeout disabled: only the manager fails a silent sister). None (no bond) when
    ``heartbeat_period <= 0``."""
    if heartbeat_period <= 0:
        return None
    node.get_logger().info(f"creating bond ({node.get_name()}) to lifecycle manager")
    return Bond(node, node.get_name(), BOND_TOPIC, heartbeat_period=heartbeat_period,
                heartbeat_timeout=NAV2_HEARTBEAT_TIMEOUT, disable_heartbeat_timeout=True).start()

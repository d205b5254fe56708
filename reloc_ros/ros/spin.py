"""Process lifetime shared by the node executables: spin until SIGINT / shutdown, then tear down in order; and the
executor the localizer spins on."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import rclpy
from rclpy.executors import (ConditionReachedException, ExternalShutdownException, ShutdownException,
                             SingleThreadedExecutor, TimeoutException)

__all__ = ["spin_until_shutdown", "InlineExecutor"]


class InlineExecutor(SingleThreadedExecutor):
    """Runs callbacks in the spinning thread, except those of ``offload_groups``, which run on a pool of
    ``num_threads`` threads (callbacks that block: services that wait for a frame or load a map).

    Why not ``MultiThreadedExecutor``: with a torch worker thread computing in the same process, rclpy's
    multi-threaded executor busy-loops in its wait (one core's worth of CPU on the 2-core reference machine) and
    delivered 640x480 images to the localizer 80 ms late at the median, 0.7 s at p95; this executor delivers them in
    1-3 ms (benchmarks/RESULTS.md, "Node latency")."""

    def __init__(self, offload_groups=(), num_threads: int = 2, *, context=None):
        super().__init__(context=context)
        self._offload = tuple(offload_groups)
        self._pool = ThreadPoolExecutor(max(1, int(num_threads)), thread_name_prefix="reloc_srv")
        self._offloaded = []   # tasks running on the pool; their exceptions are raised here, as MultiThreadedExecutor does

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            handler, entity, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ShutdownException, TimeoutException, ConditionReachedException):
            handler = entity = None
        for task in [t for t in self._offloaded if t.done()]:
            self._offloaded.remove(task)
            task.result()  # raises the callback's exception
        if handler is None:
            return
        group = getattr(entity, "callback_group", None)
        if group is not None and any(group is g for g in self._offload):
            self._offloaded.append(handler)
            self._pool.submit(handler)
            return
        handler()
        exception = handler.exception()
        if exception is not None:
            raise exception
        handler.result()

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return done


def spin_until_shutdown(node, executor, on_start=None, on_exit=None) -> int:
    """Spin ``node`` on ``executor`` (e.g. an ``InlineExecutor``); ``on_start()`` runs once the executor holds the
    node (e.g. lifecycle autostart), ``on_exit()`` before the node is destroyed (e.g. stop a worker thread). Returns
    the exit code 0."""
    executor.add_node(node)
    if on_start is not None:
        on_start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_exit is not None:
            on_exit()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0

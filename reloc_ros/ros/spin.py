"""Process lifetime shared by the node executables: spin until SIGINT / shutdown, then tear down in order."""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

__all__ = ["spin_until_shutdown"]


def spin_until_shutdown(node, num_threads: int = 3, on_start=None, on_exit=None) -> int:
    """Spin ``node`` on a multi-threaded executor; ``on_start()`` runs once the executor holds the node (e.g. lifecycle
    autostart), ``on_exit()`` before the node is destroyed (e.g. stop a worker thread). Returns the exit code 0."""
    executor = MultiThreadedExecutor(num_threads=num_threads)
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

"""Replay a rosbag2 into the live localizer and record its outputs (the ROS half of ``reloc-eval-bag``).

    python -m reloc_ros.ros.bag_player --bag BAG --out RECORDS.json [--rate R | --max-rate] [--localizer NAME]

Reads the bag with ``rosbags``, republishes its camera images (Image / CompressedImage), CameraInfo, ``/tf`` and
``/tf_static`` with rclpy (deserialised, header stamps re-based to the current time so that the node's staleness
checks and end-to-end latency are meaningful), and records ``<localizer>/pose``, ``<localizer>/status`` and ``/tf``
through ``EvalCollector``. Ground truth is never published: neither the ``/ground_truth/*`` topics nor ``/tf``
transforms out of the map frame.

Timing: ``--rate R`` keeps the bag's timing scaled by R (stamps follow: ``new = t0 + (old − first)/R``);
``--max-rate`` publishes each image as soon as the node reported the status of the previous one (all messages up to
and including an image share one stamp offset, so an image and its TF/CameraInfo keep equal stamps).

The records file holds, in the bag's original time base: ``sent`` ([original, re-based] image stamps), ``poses``,
``statuses`` and ``tf`` (each with ``stamp_ns`` original, ``stamp_replay_ns`` and ``receive_ns`` wall time).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from tqdm import tqdm

from .conversions import ns_to_stamp, stamp_to_ns
from .eval_collector import EvalCollector
from .qos import tf_qos, tf_static_qos

__all__ = ["PLAYED_TYPES", "play_bag", "main"]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
PLAYED_TYPES = IMAGE_TYPES + ("sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage")


def _msg_class(msgtype: str):
    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _played_connections(reader, image_topic: str | None):
    """Connections to republish: images (one topic), CameraInfo, /tf and /tf_static. Raises when ambiguous."""
    images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
    if image_topic is not None:
        images = [c for c in images if c.topic == image_topic]
    if not images:
        raise ValueError(f"no image topic{' ' + image_topic if image_topic else ''} in the bag; topics: "
                         f"{sorted((c.topic, c.msgtype) for c in reader.connections)}")
    if len({c.topic for c in images}) > 1:
        raise ValueError(f"several image topics in the bag {sorted({c.topic for c in images})}: pick one "
                         "with --image-topic")
    others = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/CameraInfo"
              or (c.msgtype == "tf2_msgs/msg/TFMessage" and c.topic in ("/tf", "/tf_static"))]
    return images, others


def _images_last(messages, image_topic: str):
    """Reorder a bag's message stream so that within one bag time an image comes after the CameraInfo and TF of
    the same instant (a subscriber that pairs an image with the latest CameraInfo then has the right one)."""
    held = []
    for item in messages:
        while held and item[1] > held[0][1]:
            yield held.pop(0)
        if item[0].topic == image_topic:
            held.append(item)
        else:
            yield item
    yield from held


def _rebase(msg, msgtype: str, fn) -> list[int]:
    """Replace the header stamps of ``msg`` by ``fn(old_ns)``; returns the old stamps."""
    headers = [t.header for t in msg.transforms] if msgtype == "tf2_msgs/msg/TFMessage" else [msg.header]
    old = []
    for h in headers:
        o = stamp_to_ns(h.stamp)
        old.append(o)
        h.stamp = ns_to_stamp(fn(o), type(h.stamp))
    return old


class _Publisher(Node):
    def __init__(self, connections):
        super().__init__("reloc_eval_player")
        self.pubs = {}
        for c in connections:
            if c.topic in self.pubs:
                continue
            if c.topic == "/tf_static":
                qos = tf_static_qos()
            elif c.topic == "/tf":
                qos = tf_qos()
            else:  # reliable publishers reach both reliable and best-effort subscribers
                qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
            self.pubs[c.topic] = (self.create_publisher(_msg_class(c.msgtype), c.topic, qos), c.msgtype)


def play_bag(bag, rate: float | None = 1.0, localizer: str = "reloc_localizer", image_topic: str | None = None,
             start_timeout_s: float = 60.0, frame_timeout_s: float = 20.0, limit: int | None = None,
             progress: bool = True, gt_frame: str = "map") -> dict:
    """Play ``bag`` into the running localizer (``rate=None``: as fast as it keeps up) and return the records.

    Transforms whose parent is ``gt_frame`` (the map: ground truth in reloc-bag-from-dataset bags) are not
    published. Waits up to ``start_timeout_s`` for the localizer's status topic and a subscriber on the image topic.
    Raises ``TimeoutError`` naming what is missing when the node never shows up.
    """
    from rosbags.rosbag2 import Reader

    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if not rclpy.ok():
        rclpy.init()
    with Reader(Path(bag)) as reader:
        images, others = _played_connections(reader, image_topic)
        img_topic = images[0].topic
        n_images = sum(c.msgcount for c in images)
        if limit is not None:
            n_images = min(n_images, limit)
        player = _Publisher(images + others)
        collector = EvalCollector(localizer)
        # callbacks only record (no blocking ones); rclpy's MultiThreadedExecutor busy-loops and took CPU from the node
        executor = SingleThreadedExecutor()
        executor.add_node(player)
        executor.add_node(collector)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        try:
            deadline = time.monotonic() + start_timeout_s
            while not (collector.localizer_ready() and player.count_subscribers(img_topic) > 0):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the localizer did not come up within {start_timeout_s:.0f} s: status topic "
                        f"{collector.status_topic} has {collector.count_publishers(collector.status_topic)} "
                        f"publisher(s), image topic {img_topic} has {player.count_subscribers(img_topic)} "
                        "subscriber(s) (is the node running, active, and subscribed to the bag's image topic?)")
                time.sleep(0.05)
            time.sleep(0.3)  # let the reliable endpoints match

            sent: list[tuple[int, int]] = []
            no_status = 0
            first_log = None
            t0 = time.time_ns()
            offset = None  # max-rate: new = old + offset, fixed from the first message of each image's group
            bar = tqdm(total=n_images, desc="bag replay", unit="frame", disable=not progress)
            conns = images + others
            for conn, log_ns, raw in _images_last(reader.messages(connections=conns), img_topic):
                if len(sent) >= n_images:
                    break
                if first_log is None:
                    first_log = log_ns
                if rate is None:
                    if offset is None:
                        offset = time.time_ns() - log_ns
                    fn = (lambda o, off=offset: o + off)
                else:
                    fn = (lambda o: t0 + int((o - first_log) / rate))
                    wait = (t0 + (log_ns - first_log) / rate - time.time_ns()) / 1e9
                    if wait > 0:
                        time.sleep(wait)
                pub, msgtype = player.pubs[conn.topic]
                msg = deserialize_message(raw, pub.msg_type)
                if msgtype == "tf2_msgs/msg/TFMessage":  # transforms from the map frame are ground truth
                    msg.transforms = [t for t in msg.transforms if t.header.frame_id.lstrip("/") != gt_frame]
                    if not msg.transforms:
                        continue
                old = _rebase(msg, msgtype, fn)
                pub.publish(msg)
                if conn.topic == img_topic:
                    new = stamp_to_ns(msg.header.stamp)
                    sent.append((old[0], new))
                    bar.update(1)
                    if rate is None:
                        timeout = start_timeout_s if len(sent) == 1 else frame_timeout_s
                        if not collector.wait_for_status(new, timeout):
                            no_status += 1
                        offset = None
            bar.close()
            collector.wait_quiet(quiet_s=2.0 if rate is not None else 0.5, timeout_s=60.0)
            t_end = time.time_ns()
        finally:
            executor.shutdown(timeout_sec=1.0)
            spin.join(timeout=2.0)

    to_old = {new: old for old, new in sent}

    def _orig(rec: dict) -> dict:
        new = rec["stamp_ns"]
        return dict(rec, stamp_ns=to_old.get(new, new), stamp_replay_ns=new,
                    receive_latency_ms=(rec["receive_ns"] - new) / 1e6)

    records = {"bag": str(bag), "rate": rate, "mode": "max-rate" if rate is None else f"x{rate:g}",
               "image_topic": img_topic, "localizer": localizer, "wall_start_ns": t0, "wall_end_ns": t_end,
               "sent": sent, "frames_without_status_before_timeout": no_status,
               "poses": [_orig(p) for p in collector.poses], "statuses": [_orig(s) for s in collector.statuses],
               "tf": [_orig(t) for t in collector.tf]}
    player.destroy_node()
    collector.destroy_node()
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="reloc-eval-bag-player", description=__doc__.split("\n\n")[0])
    p.add_argument("--bag", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="records JSON to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    g.add_argument("--max-rate", action="store_true", help="each frame as soon as the node answered the last")
    p.add_argument("--localizer", default="reloc_localizer", help="localizer node name (its ~/pose, ~/status)")
    p.add_argument("--image-topic", help="image topic when the bag has several")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--frame-timeout", type=float, default=20.0)
    p.add_argument("--limit", type=int, help="play the first N images only")
    p.add_argument("--gt-frame", default="map", help="TF parent frame whose transforms are ground truth (dropped)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rclpy.init()
    try:
        rec = play_bag(args.bag, None if args.max_rate else args.rate, args.localizer, args.image_topic,
                       args.start_timeout, args.frame_timeout, args.limit, progress=not args.no_progress,
                       gt_frame=args.gt_frame)
    except (TimeoutError, ValueError) as e:
        print(f"bag player: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(args.out)
    print(f"bag player: {len(rec['sent'])} frames sent, {len(rec['statuses'])} statuses, {len(rec['poses'])} poses "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

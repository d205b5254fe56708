"""Measured robustness of the localizer node over real DDS: fuzz, soak and faults (figures + JSON, not tests).

    python benchmarks/reliability.py fuzz   [--per-class 800] [--json F]
    python benchmarks/reliability.py soak   [--seconds 600] [--hz 60] [--json F]
    python benchmarks/reliability.py faults [--json F]

The node runs in its own process (``reloc_ros.ros.runner.start_localizer``) on the map and scene of ``make demo``
(``--map out/demo/ace.map.safetensors --dataset out/demo/scene``, query.txt frames as the good frames); the
publisher and the recorder are a test-side rclpy client (``test/ros_helpers.Client``).

- fuzz: ≥ 10⁴ malformed messages in classes (encodings, sizes, step, truncation, intrinsics, CameraInfo missing /
  for another resolution / changing, duplicate / out-of-order / future stamps, missing TF). After each class, good
  frames must be accepted again ("recovered"). Reports per class: sent, statuses by reason, poses published for a
  bad frame (must be 0); node alive, RSS / threads / fds before and after.
- soak: good frames at ``--hz`` (faster than the node localizes) for ``--seconds``: per minute the stamp→pose latency
  p50/p95, poses/s, RSS, threads, fds.
- faults: kill -9 mid-stream and restart (time from activation to the first pose); ~/reload_map with a corrupt and
  a mismatched file (the old map keeps serving); reloc-map interrupted by SIGINT / SIGKILL at random points and
  resumed (every file at --out loads; the resumed run finishes).
Results: benchmarks/RESULTS_reliability.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO))

GOOD_CAM = "good_cam"     # frame with odom -> good_cam on /tf_static
NO_TF_CAM = "no_tf_cam"   # frame nobody publishes: missing_tf


def ns_of(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def process_figures(pid: int) -> dict:
    p = psutil.Process(pid)
    return {"rss_mb": p.memory_info().rss / 2 ** 20, "threads": p.num_threads(), "fds": p.num_fds()}


class Harness:
    """The node (own process, own domain) + a client publishing images / camera_info / tf_static and recording."""

    def __init__(self, map_path: Path, dataset: Path, work: Path, overrides: dict | None = None, name="reloc_rel"):
        from reloc_ros.datasets import open_dataset
        from reloc_ros.ros.runner import ros_env
        self.env = ros_env(domain_id=150 + os.getpid() % 50)
        os.environ.update({k: self.env[k] for k in ("HOME", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                                                     "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE") if k in self.env})
        ds = open_dataset(dataset, frames=str(dataset / "query.txt"))
        self.good = [ds[i] for i in range(0, len(ds), max(1, len(ds) // 12))][:12]
        self.map_path, self.work, self.name = map_path, work, name
        self.overrides = {"map_path": str(map_path), "image_qos": "reliable", "queue_depth": 1000,
                          "odom_frame": "odom", "base_frame": "", "tf_timeout": 0.05, "diagnostics_period": 1.0,
                          "min_confidence": 0.0, **(overrides or {})}
        self.node = None
        self.last_ns = time.time_ns()
        self.mark = self.last_ns  # first_pose_after_activation counts statuses stamped after this
        self.start_node()
        self._client()

    def start_node(self):
        from reloc_ros.ros.runner import start_localizer
        self.node = start_localizer(REPO / "config" / "localizer.yaml", self.overrides, env=self.env, name=self.name,
                                    remaps={"image": "/rel/image", "camera_info": "/rel/camera_info"},
                                    log_path=self.work / f"{self.name}_{time.time_ns()}.log")
        return self.node.wait_active(timeout=300)

    def _client(self):
        from geometry_msgs.msg import TransformStamped
        from ros_helpers import Client
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        from reloc_ros.ros.qos import tf_static_qos
        self.cl = Client(int(self.env["ROS_DOMAIN_ID"]), self.name)
        self.img_pub, self.info_pub = self.cl.publisher(Image, "/rel/image"), self.cl.publisher(CameraInfo,
                                                                                                "/rel/camera_info")
        tf_pub = self.cl.node.create_publisher(TFMessage, "/tf_static", tf_static_qos())
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = "odom", GOOD_CAM
        t.transform.rotation.w = 1.0
        tf_pub.publish(TFMessage(transforms=[t]))
        self._tf_pub = tf_pub
        self.cl.wait_matched([self.img_pub, self.info_pub], 60, "the node's image and camera_info subscriptions")
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.poses = self.cl.record(PoseWithCovarianceStamped, f"/{self.name}/pose",
                                    QoSProfile(depth=10000, reliability=ReliabilityPolicy.RELIABLE))

    # ---- messages ----------------------------------------------------------------------------------------------
    def next_stamp(self) -> int:
        self.last_ns = max(self.last_ns + 1_000_000, time.time_ns())
        return self.last_ns

    def camera_info(self, cam=None, k=None, width=None, height=None):
        from sensor_msgs.msg import CameraInfo
        cam = cam or self.good[0].camera
        m = CameraInfo(width=width or cam.width, height=height or cam.height, distortion_model="plumb_bob")
        m.k = [float(v) for v in (k if k is not None else cam.K.ravel())]
        m.d = [0.0] * 5
        m.header.frame_id = GOOD_CAM
        return m

    def image(self, rgb=None, w=64, h=48, enc="rgb8", step=None, data=None, stamp_ns=None, frame_id=GOOD_CAM):
        from sensor_msgs.msg import Image
        if rgb is not None:
            h, w = rgb.shape[:2]
        m = Image(width=w, height=h, encoding=enc)
        m.step = step if step is not None else w * 3
        if data is None:
            data = rgb.tobytes() if rgb is not None else bytes(m.step * h)
        m.data = data
        stamp_ns = self.next_stamp() if stamp_ns is None else stamp_ns
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        m.header.frame_id = frame_id
        return m

    def good_image(self, k: int, stamp_ns=None, pad: int = 0):
        rgb = self.good[k % len(self.good)].image
        if pad:
            rows = np.zeros((rgb.shape[0], rgb.shape[1] * 3 + pad), np.uint8)
            rows[:, : rgb.shape[1] * 3] = rgb.reshape(rgb.shape[0], -1)
            return self.image(rgb=rgb, step=rows.shape[1], data=rows.tobytes(), stamp_ns=stamp_ns)
        return self.image(rgb=rgb, stamp_ns=stamp_ns)

    def status_of(self, stamp_ns: int, timeout=60.0):
        self.cl.wait(lambda: any(ns_of(s.header.stamp) == stamp_ns for s in self.cl.statuses), timeout,
                     f"the status of {stamp_ns}")
        with self.cl.lock:
            return next(s for s in self.cl.statuses if ns_of(s.header.stamp) == stamp_ns)

    def recover(self, tries: int = 10) -> bool:
        """Good camera_info, then good frames one at a time until one is accepted."""
        self.info_pub.publish(self.camera_info())
        time.sleep(0.2)
        for k in range(tries):
            m = self.good_image(k)
            self.img_pub.publish(m)
            try:
                if self.status_of(ns_of(m.header.stamp), 120).accepted:
                    return True
            except AssertionError:
                return False
        return False

    def close(self):
        self.cl.close()
        if self.node is not None:
            self.node.stop()


# ---- fuzz --------------------------------------------------------------------------------------------------------
def fuzz_classes(h: Harness, n: int) -> list[tuple[str, object, object, int]]:
    """(class, camera_info to publish first or None, make(i) -> Image, count). Junk images are 64x48."""
    info64 = h.camera_info(k=[50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1], width=64, height=48)

    def bad_info(**kw):
        return h.camera_info(width=64, height=48, **kw)
    k64 = np.array(info64.k)
    future = {"base": None}

    def future_image(i):
        if future["base"] is None:
            future["base"] = time.time_ns() + 3600 * 10 ** 9
        return h.image(stamp_ns=future["base"] + i * 1_000_000)
    back = {"base": None}

    def back_image(i):
        if back["base"] is None:
            back["base"] = h.last_ns - 10 ** 9
        return h.image(stamp_ns=back["base"] - i * 1_000_000)
    dup = {"stamp": None}

    def dup_image(i):
        if dup["stamp"] is None:
            dup["stamp"] = h.next_stamp()
        return h.good_image(0, stamp_ns=dup["stamp"])
    flip = [h.camera_info(width=64, height=48, k=list(k64)), bad_info(k=[float("nan")] + list(k64[1:]))]

    def changing(i):
        h.info_pub.publish(flip[i % 2])
        return h.image()
    few = max(50, n // 4)   # classes of full-size frames that reach the worker
    return [
        ("camera_info_missing", None, lambda i: h.image(), n),
        ("intrinsics_nan", bad_info(k=[float("nan")] + list(k64[1:])), lambda i: h.image(), n),
        ("intrinsics_zero_focal", bad_info(k=[0.0] + list(k64[1:])), lambda i: h.image(), n),
        ("intrinsics_negative_focal", bad_info(k=[-50.0] + list(k64[1:])), lambda i: h.image(), n),
        ("camera_info_other_resolution", h.camera_info(width=320, height=240), lambda i: h.image(), n),
        ("encoding_unknown", info64, lambda i: h.image(enc="yuv422_weird"), n),
        ("encoding_16UC1_depth", info64, lambda i: h.image(enc="16UC1", step=128), n),
        ("encoding_32FC1_depth", info64, lambda i: h.image(enc="32FC1", step=256), n),
        ("step_too_small", info64, lambda i: h.image(step=64 * 3 - 1, data=bytes(191 * 48)), n),
        ("step_padding_truncated", info64, lambda i: h.image(step=64 * 3 + 16, data=bytes(64 * 3 * 48)), n),
        ("data_truncated", info64, lambda i: h.image(data=bytes(64 * 3 * 48 - 5)), n),
        ("header_size_lies", info64, lambda i: h.image(w=128, h=96, data=bytes(64 * 3 * 48)), n),
        ("empty_image", info64, lambda i: h.image(w=0, h=0, data=b""), n),
        ("camera_info_changing", None, changing, n),
        ("stamp_out_of_order", info64, back_image, n),
        ("stamp_far_future", info64, future_image, n),
        ("stamp_duplicate", h.camera_info(), dup_image, few),
        ("tf_missing", h.camera_info(), lambda i: h.image(rgb=h.good[i % len(h.good)].image, frame_id=NO_TF_CAM),
         few),
    ]


def run_fuzz(h: Harness, per_class: int) -> dict:
    from tqdm import tqdm
    before = process_figures(h.node.pid)
    classes, bad_stamps = {}, {}   # stamp -> class
    dup_stamp = None
    for name, info, make, count in tqdm(fuzz_classes(h, per_class), desc="fuzz", unit="class"):
        if info is not None:
            h.info_pub.publish(info)
            time.sleep(0.3)  # camera_info and image are separate topics: let the info land first
        start = len(h.cl.statuses)
        stamps = []
        for i in range(count):
            m = make(i)
            h.img_pub.publish(m)
            stamps.append(ns_of(m.header.stamp))
        if name == "stamp_duplicate":
            dup_stamp = stamps[0]  # every copy has this stamp: the first is a good frame (one pose expected)
        else:
            bad_stamps.update(dict.fromkeys(stamps, name))
        h.cl.wait(lambda: len(h.cl.statuses) >= start + count, 300, f"the statuses of {name}")
        with h.cl.lock:
            got = h.cl.statuses[start:]
        reasons: dict = {}
        for s in got:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        recovered = h.recover()
        classes[name] = {"sent": count, "statuses": len(got), "reasons": reasons, "recovered_after": recovered,
                         "node_alive": h.node.alive()}
        tqdm.write(f"  {name:30s} sent {count:5d}  statuses {len(got):5d}  {reasons}  recovered {recovered}")
    time.sleep(1.0)
    with h.cl.lock:
        poses = [ns_of(p.header.stamp) for p in h.poses]
    by_class: dict = {}
    for s in poses:
        if s in bad_stamps:
            by_class[bad_stamps[s]] = by_class.get(bad_stamps[s], 0) + 1
    # a frame whose only fault is the missing odom->camera TF still has a valid map-frame pose: it is published
    # (status missing_tf) without map->odom, by design (robot_localization fuses ~/pose without /tf)
    bad_poses = sum(v for k, v in by_class.items() if k != "tf_missing")
    dup_poses = sum(1 for s in poses if s == dup_stamp)
    after = process_figures(h.node.pid)
    total = sum(c["sent"] for c in classes.values())
    return {"messages": total, "classes": classes, "node_alive": h.node.alive(), "poses_from_bad_frames": bad_poses,
            "poses_by_class": by_class,
            "poses_for_the_duplicated_stamp": dup_poses, "every_class_recovered": all(
                c["recovered_after"] for c in classes.values()),
            "every_message_has_a_status": all(c["statuses"] >= c["sent"] for c in classes.values()),
            "process_before": before, "process_after": after}


# ---- soak --------------------------------------------------------------------------------------------------------
def run_soak(h: Harness, seconds: float, hz: float, warmup_s: float = 60.0) -> dict:
    from tqdm import tqdm
    h.recover()
    t0 = time.monotonic()
    minutes, k, next_t = [], 0, t0
    figures = [(0.0, process_figures(h.node.pid))]
    bar = tqdm(total=int(seconds), desc="soak", unit="s")
    last_minute, seen = 0, 0
    while (now := time.monotonic()) - t0 < seconds:
        if now < next_t:
            time.sleep(min(next_t - now, 0.005))
            continue
        next_t += 1.0 / hz
        h.img_pub.publish(h.good_image(k))
        k += 1
        minute = int((now - t0) // 60)
        if minute != last_minute:
            figures.append((now - t0, process_figures(h.node.pid)))
            last_minute = minute
        bar.n = int(now - t0)
        bar.refresh()
    bar.close()
    time.sleep(2.0)
    figures.append((time.monotonic() - t0, process_figures(h.node.pid)))
    with h.cl.lock:
        statuses = list(h.cl.statuses)
    t_start = statuses[0].header.stamp
    base = ns_of(t_start)
    per_min: dict = {}
    for s in statuses:
        m = int((ns_of(s.header.stamp) - base) / 60e9)
        d = per_min.setdefault(m, {"lat": [], "accepted": 0, "statuses": 0})
        d["statuses"] += 1
        if s.accepted:
            d["accepted"] += 1
            d["lat"].append(s.latency_since_stamp_ms)
    for m, d in sorted(per_min.items()):
        lat = np.array(d.pop("lat")) if d["lat"] else np.array([np.nan])
        minutes.append({"minute": m, "poses_per_s": d["accepted"] / 60.0, "statuses": d["statuses"],
                        "latency_p50_ms": float(np.nanmedian(lat)), "latency_p95_ms": float(np.nanpercentile(lat, 95))})
    rss = [(t, f["rss_mb"]) for t, f in figures]
    warm = [r for t, r in rss if t >= warmup_s] or [rss[-1][1]]
    return {"seconds": seconds, "hz": hz, "frames_sent": k, "per_minute": minutes, "process": figures,
            "rss_growth_after_warmup_pct": 100.0 * (warm[-1] - warm[0]) / warm[0],
            "threads_first_last": [figures[0][1]["threads"], figures[-1][1]["threads"]],
            "fds_first_last": [figures[0][1]["fds"], figures[-1][1]["fds"]], "node_alive": h.node.alive()}


# ---- faults ------------------------------------------------------------------------------------------------------
def first_pose_after_activation(h: Harness, timeout=60.0) -> float:
    """Seconds from an active node to its first accepted pose, feeding good frames at 10 Hz."""
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < timeout:
        h.info_pub.publish(h.camera_info())
        h.img_pub.publish(h.good_image(k))
        k += 1
        time.sleep(0.1)
        with h.cl.lock:
            if any(s.accepted and ns_of(s.header.stamp) > h.mark for s in h.cl.statuses):
                return time.monotonic() - t0
    return float("inf")


def fault_kill9(h: Harness, rounds: int = 3) -> list[dict]:
    out = []
    for r in range(rounds):
        h.mark = h.last_ns
        for k in range(20):  # mid-stream
            h.img_pub.publish(h.good_image(k))
            time.sleep(0.05)
        os.kill(h.node.pid, signal.SIGKILL)
        h.node.proc.wait(10)
        t0 = time.monotonic()
        h.start_node()
        activated_s = time.monotonic() - t0
        h.mark = h.last_ns
        out.append({"round": r, "restart_to_active_s": activated_s,
                    "active_to_first_pose_s": first_pose_after_activation(h)})
        print(f"  kill -9 round {r}: active after {activated_s:.1f} s, first pose "
              f"{out[-1]['active_to_first_pose_s']:.2f} s after activation", flush=True)
    return out


def fault_reload(h: Harness, work: Path) -> list[dict]:
    from std_srvs.srv import Trigger
    corrupt = work / "corrupt.map.safetensors"
    corrupt.write_bytes(h.map_path.read_bytes()[: h.map_path.stat().st_size // 2])
    foreign = work / "foreign.map.safetensors"
    from reloc_ros.map_file import save_map
    import torch
    save_map(foreign, {"x": torch.zeros(3)}, {"front_end": "ace"})
    out = []
    for label, path in (("truncated", corrupt), ("mismatched_metadata", foreign), ("missing", work / "nope.map")):
        h.cl.set_params(h.name, map_path=str(path))
        res = h.cl.call(Trigger, f"/{h.name}/reload_map", timeout=120)
        h.mark = h.last_ns
        served = first_pose_after_activation(h, 30)
        out.append({"file": label, "reload_success": bool(res.success), "message": res.message,
                    "old_map_serves_s": served})
        print(f"  reload {label}: success={res.success} ({res.message[:110]}); old map serves a pose after "
              f"{served:.2f} s", flush=True)
    h.cl.set_params(h.name, map_path=str(h.map_path))
    return out


def fault_mapping(dataset: Path, work: Path, kills: int = 4, seed: int = 0) -> list[dict]:
    """reloc-map on the demo scene (ACE, 1500 iterations, checkpoint every 5 s) interrupted ``kills`` times at random
    points by SIGINT / SIGKILL, then run to the end; after every interruption --out must be absent or load."""
    from reloc_ros.localizer import Localizer
    rng = random.Random(seed)
    out_map = work / "interrupted.map.safetensors"
    cmd = [sys.executable, "-m", "reloc_ros.mapping.cli", "--dataset", str(dataset), "--out", str(out_map),
           "--no-reference", "--set", "iterations=1500", "--set", "checkpoint_every_s=5", "--set", "buffer_size=200000"]
    events = []
    for i in range(kills + 1):
        log = work / f"map_run{i}.log"
        with open(log, "wb") as f:
            # SIGINT default in the child: a shell's background job inherits it ignored, and Python then never
            # raises KeyboardInterrupt (the interrupt would be lost)
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            if i < kills:
                time.sleep(rng.uniform(8, 40))
                sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
                p.send_signal(sig)
            code = p.wait(1800)
        text = log.read_text(errors="replace")
        loads = None
        if out_map.exists():
            try:
                Localizer.from_map(out_map)
                loads = True
            except Exception as e:  # noqa: BLE001 - recorded
                loads = f"{type(e).__name__}: {e}"
        events.append({"run": i, "signal": None if i == kills else ("SIGINT" if i % 2 == 0 else "SIGKILL"),
                       "exit_code": code, "resumed": "resumed from" in text,
                       "checkpoint_saved_on_interrupt": "checkpoint saved" in text, "out_exists": out_map.exists(),
                       "out_loads": loads, "traceback": "Traceback" in text})
        print(f"  reloc-map run {i}: {events[-1]}", flush=True)
    return events


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("fuzz", "soak", "faults"))
    p.add_argument("--map", type=Path, default=REPO / "out" / "demo" / "ace.map.safetensors")
    p.add_argument("--dataset", type=Path, default=REPO / "out" / "demo" / "scene")
    p.add_argument("--per-class", type=int, default=800)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--hz", type=float, default=60.0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not a.map.is_file() or not a.dataset.is_dir():
        print(f"reliability: error: {a.map} / {a.dataset} missing: run `make demo` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix=f"reloc_{a.what}_"))
    h = Harness(a.map, a.dataset, work)
    try:
        if a.what == "fuzz":
            res = run_fuzz(h, a.per_class)
        elif a.what == "soak":
            res = run_soak(h, a.seconds, a.hz)
        else:
            res = {"kill9": fault_kill9(h), "reload_map": fault_reload(h, work)}
            h.close()
            h = None
            res["reloc_map_interrupted"] = fault_mapping(a.dataset, work)
    finally:
        if h is not None:
            h.close()
    from reloc_ros.evaluation.report import machine_info
    res.update(command=" ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])), machine=machine_info())
    text = json.dumps(res, indent=1, default=float)
    print(json.dumps({k: v for k, v in res.items() if k not in ("process", "classes", "machine")}, indent=1,
                     default=float))
    out = a.json or REPO / "benchmarks" / "results" / f"reliability_{a.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    shutil.rmtree(work, ignore_errors=True) if a.what != "faults" else None
    return 0


if __name__ == "__main__":
    sys.exit(main())

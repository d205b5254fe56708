"""``reloc-eval-bag``: replay a rosbag2 through the live localizer node and measure what a robot would get.

    reloc-eval-bag --bag BAG --map MAP [--rate R | --max-rate] [--params config/localizer.yaml] [--refine]
                   [--device D] [--limit N] --json OUT [--plots DIR] [--tum DIR] [-p name:=value ...]

Three processes: the localizer node (``reloc_ros.ros.runner.start_localizer``, the same runner as the demo,
``autostart`` so that it configures and activates itself), the player/collector
(``python -m reloc_ros.ros.bag_player``: republishes images, CameraInfo and non-ground-truth TF with re-based
stamps, records ``~/pose``, ``~/status``, ``/tf``), and this one (pure core, no rclpy): it samples the node's CPU
and RSS with psutil, reads the ground truth from the bag (encoding: reloc_ros/datasets/bag_writer.py) and
computes the metrics (``replay_metrics``).

Frames: a bag whose ``/tf_static`` holds ``base → camera`` (``reloc-bag-from-dataset --odom-tf``) is replayed with
the node reporting the base pose through ``odom`` (its default REP-105 setup); the camera pose is then
``T_map_base · T_base_camera`` and the published covariance is moved to the camera with the same lever arm.
Otherwise the node reports the camera pose directly (``odom_frame`` and ``base_frame`` empty).

JSON: the reloc-eval keys plus availability, false_accept_rate, dropped_frames, nees_inside_95, node_cpu_percent
(mean over the replay, 100 = one core), node_rss_mb (peak), latency (status ``latency_since_stamp_ms`` of
accepted frames: image stamp, re-based to the replay clock, to pose publication).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from ..cli_args import HelpFormatter, UsageError, check_eval_paths, check_input_file, number
from ..geometry.pose import T_from_pos_quat, covariance_to_body_point
from ..resources import share_file
from .replay_metrics import replay_metrics
from .report import machine_info, map_bytes, print_summary, refinement_summary, write_json, write_tum

__all__ = ["read_bag_ground_truth", "read_bag_layout", "NodeMonitor", "run_bag_replay", "main"]

GT_POSE_TOPIC = "/ground_truth/pose"


class _Reader:
    """rosbag2 reader (folder, whatever its name) with ``deserialize`` from the ROS 2 typestore."""

    def __init__(self, bag):
        from rosbags.rosbag2 import Reader

        from ..datasets.bag_writer import get_typestore
        self._r = Reader(Path(bag))
        self._ts = get_typestore()

    def __enter__(self):
        self._r.open()
        return self

    def __exit__(self, *exc):
        self._r.close()

    @property
    def connections(self):
        return self._r.connections

    def messages(self, connections):
        if not connections:  # rosbags reads every connection when given none
            return iter(())
        return self._r.messages(connections=connections)

    def deserialize(self, raw, msgtype):
        return self._ts.deserialize_cdr(raw, msgtype)


def _reader(bag):
    return _Reader(bag)


def read_bag_ground_truth(bag, topic: str = GT_POSE_TOPIC) -> tuple[np.ndarray, np.ndarray, str]:
    """``(stamps_ns (N,), T_map_camera (N, 4, 4), map_frame)`` from the bag's ground-truth PoseStamped topic."""
    stamps, poses, frame = [], [], ""
    with _reader(bag) as r:
        conns = [c for c in r.connections if c.topic == topic]
        if not conns:
            raise ValueError(f"{bag}: no ground-truth topic {topic} (write the bag with reloc-bag-from-dataset from "
                             f"a posed dataset); topics: {sorted(c.topic for c in r.connections)}")
        for conn, _, raw in r.messages(connections=conns):
            m = r.deserialize(raw, conn.msgtype)
            stamps.append(int(m.header.stamp.sec) * 1_000_000_000 + int(m.header.stamp.nanosec))
            p, o = m.pose.position, m.pose.orientation
            poses.append(T_from_pos_quat(np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])))
            frame = m.header.frame_id
    return np.array(stamps, dtype=np.int64), np.array(poses).reshape(-1, 4, 4), frame


def read_bag_layout(bag) -> dict:
    """Image topic and type, CameraInfo topic, and the static ``base → camera`` extrinsic when present."""
    out = {"image_topic": None, "compressed": False, "info_topic": None, "n_images": 0, "T_base_camera": None,
           "base_frame": None, "camera_frame": None}
    with _reader(bag) as r:
        for c in r.connections:
            if c.msgtype in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
                if out["image_topic"] is not None and out["image_topic"] != c.topic:
                    raise ValueError(f"{bag}: several image topics ({out['image_topic']}, {c.topic})")
                out.update(image_topic=c.topic, compressed=c.msgtype.endswith("CompressedImage"),
                           n_images=out["n_images"] + c.msgcount)
            elif c.msgtype == "sensor_msgs/msg/CameraInfo":
                out["info_topic"] = c.topic
        static = [c for c in r.connections if c.topic == "/tf_static"]
        for conn, _, raw in r.messages(connections=static):
            for t in r.deserialize(raw, conn.msgtype).transforms:
                tr, q = t.transform.translation, t.transform.rotation
                out.update(T_base_camera=T_from_pos_quat(np.array([tr.x, tr.y, tr.z]), np.array([q.x, q.y, q.z, q.w])),
                           base_frame=t.header.frame_id, camera_frame=t.child_frame_id)
    if out["image_topic"] is None:
        raise ValueError(f"{bag}: no sensor_msgs/Image or CompressedImage topic")
    if out["info_topic"] is None:
        raise ValueError(f"{bag}: no sensor_msgs/CameraInfo topic (the node needs intrinsics)")
    return out


class NodeMonitor:
    """Samples a process's CPU % (100 = one core) and RSS every ``period_s`` in a background thread."""

    def __init__(self, pid: int, period_s: float = 0.5):
        import psutil
        self.proc = psutil.Process(pid)
        self.period_s = period_s
        self.cpu: list[float] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil
        try:
            self.proc.cpu_percent(None)
            while not self._stop.wait(self.period_s):
                self.cpu.append(self.proc.cpu_percent(None))
                self.rss.append(self.proc.memory_info().rss / 1e6)
        except psutil.Error:
            pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2.0)

    def summary(self) -> dict:
        return {"node_cpu_percent": float(np.mean(self.cpu)) if self.cpu else float("nan"),
                "node_cpu_percent_p95": float(np.percentile(self.cpu, 95)) if self.cpu else float("nan"),
                "node_rss_mb": float(np.max(self.rss)) if self.rss else float("nan")}


def _camera_poses(records: dict, T_base_camera: np.ndarray | None) -> list[dict]:
    """Published poses as camera poses (moving pose and covariance from the base to the camera when needed)."""
    out = []
    for p in records["poses"]:
        T = np.asarray(p["T"], dtype=np.float64)
        cov = np.asarray(p["covariance"], dtype=np.float64)
        if T_base_camera is not None:
            cov = covariance_to_body_point(T, cov, T_base_camera)
            T = T @ T_base_camera
        out.append({"stamp_ns": p["stamp_ns"], "T": T, "covariance": cov,
                    "receive_latency_ms": p.get("receive_latency_ms")})
    return out


def run_bag_replay(bag, map_path, rate: float | None = None, params=None, overrides: dict | None = None,
                   refine: bool | None = None, device: str | None = None, limit: int | None = None,
                   json_out=None, plots_dir=None, tum_dir=None, work_dir=None, domain_id: int | None = None,
                   start_timeout_s: float = 180.0, progress: bool = True) -> dict:
    """Start the localizer on ``map_path``, replay ``bag`` (``rate=None``: as fast as the node keeps up),
    return (and optionally write) the metrics. Raises ``RuntimeError`` with the node's log tail on failure."""
    from ..ros.runner import ros_env, start_localizer  # subprocess helpers only: no rclpy in this process

    bag, map_path = Path(bag), Path(map_path)
    if not map_path.is_file():
        raise FileNotFoundError(f"{map_path}: map file not found")
    layout = read_bag_layout(bag)
    gt_stamps, gt_poses, map_frame = read_bag_ground_truth(bag)
    params = Path(params) if params is not None else share_file("config/localizer.yaml")
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="reloc_eval_bag_"))
    work.mkdir(parents=True, exist_ok=True)
    ov = {"map_path": str(map_path.resolve()), "autostart": True, "map_frame": map_frame or "map",
          "camera_frame": "", "max_frame_age": 0.0}
    if layout["T_base_camera"] is not None:
        ov.update(base_frame=layout["base_frame"], odom_frame="odom", camera_to_base=[0.0])
    else:
        ov.update(base_frame="", odom_frame="")
    if refine is not None:
        ov["refine"] = bool(refine)
    if device is not None:
        ov["device"] = device
    ov.update(overrides or {})
    remaps = {("image/compressed" if layout["compressed"] else "image"): layout["image_topic"],
              "camera_info": layout["info_topic"]}
    if layout["compressed"]:
        ov["image_transport"] = "compressed"
    if domain_id is None:
        domain_id = 100 + os.getpid() % 100
    env = ros_env(domain_id=domain_id)
    node_log, records_path = work / "localizer.log", work / "records.json"
    print(f"[reloc-eval-bag] starting the localizer on {map_path.name} (log: {node_log})", flush=True)
    node = start_localizer(params, ov, env=env, remaps=remaps, log_path=node_log)
    try:
        cmd = [sys.executable, "-m", "reloc_ros.ros.bag_player", "--bag", str(bag), "--out", str(records_path),
               "--start-timeout", str(start_timeout_s), "--gt-frame", map_frame or "map"]
        cmd += ["--max-rate"] if rate is None else ["--rate", str(rate)]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        if not progress:
            cmd += ["--no-progress"]
        with NodeMonitor(node.pid) as mon:
            player = subprocess.Popen(cmd, env=env)
            while player.poll() is None:
                failed = node.configure_errors()
                if failed:
                    player.kill()
                    player.wait()
                    raise RuntimeError("the localizer's configure failed:\n" + "\n".join(failed))
                if not node.alive():
                    player.kill()
                    player.wait()
                    raise RuntimeError(f"the localizer exited (code {node.returncode}) during the replay:\n"
                                       f"{node.log_tail()}")
                time.sleep(0.2)
        if player.returncode != 0:
            raise RuntimeError(f"the bag player failed (code {player.returncode}); localizer log tail:\n"
                               f"{node.log_tail()}")
    finally:
        node.stop()
    records = json.loads(records_path.read_text())
    T_bc = layout["T_base_camera"]
    m = replay_metrics(gt_stamps, gt_poses, [s[0] for s in records["sent"]], _camera_poses(records, T_bc),
                       records["statuses"])
    arrays = m.pop("_arrays")
    m.update(mon.summary())
    fe = [s.get("front_end") for s in records["statuses"] if s.get("front_end")]
    m.update({"front_end": fe[0] if fe else None, "refine": bool(ov.get("refine", False)),
              "device": ov.get("device", "cpu"), "map": str(map_path), "map_bytes": map_bytes(map_path),
              "bag": str(bag), "mode": records["mode"], "n_tf_published": len(records["tf"]),
              "replay_seconds": (records["wall_end_ns"] - records["wall_start_ns"]) / 1e9,
              "pose_frame": "base" if T_bc is not None else "camera", "node_log": str(node_log),
              "machine": machine_info()})
    stage = {}
    for key in ("latency_preprocess_ms", "latency_front_end_ms", "latency_refinement_ms", "latency_total_ms"):
        v = [s[key] for s in records["statuses"] if s.get("accepted")]
        stage[key.replace("latency_", "").replace("_ms", "")] = float(np.median(v)) if v else float("nan")
    m["latency_stage_ms_median"] = stage
    m.update(refinement_summary(records["statuses"]))
    if plots_dir is not None:
        from .plots import plot_all
        m["plots"] = plot_all(plots_dir, arrays["gt_stamps_ns"], arrays["gt_poses"], arrays["est_stamps_ns"],
                              arrays["est_poses"], arrays["gt_stamps_ns"], arrays["t_err_m"], arrays["r_err_deg"],
                              arrays["latency_ms"], title=f"{m['front_end']} via node ({records['mode']})")
    if tum_dir is not None:
        write_tum(Path(tum_dir) / "groundtruth.tum", arrays["gt_stamps_ns"], arrays["gt_poses"])
        write_tum(Path(tum_dir) / "estimate.tum", arrays["est_stamps_ns"], arrays["est_poses"])
    if json_out is not None:
        write_json(json_out, m)
    return m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="reloc-eval-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--bag", required=True, type=Path, help="rosbag2 written by reloc-bag-from-dataset")
    p.add_argument("--map", required=True, type=Path, help="map file (reloc-map output)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=number(float, min=0, min_exclusive=True),
                   help="play at the bag's timing scaled by R (1 = real time)")
    g.add_argument("--max-rate", action="store_true", help="next frame as soon as the node answered (default)")
    p.add_argument("--params", type=Path, help="localizer parameter YAML (default config/localizer.yaml)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE", help="parameter override")
    p.add_argument("--refine", action="store_true", default=None, help="enable the featuremetric refinement")
    p.add_argument("--device", help="cpu | cuda")
    p.add_argument("--limit", type=number(int, min=1), help="replay the first N frames only")
    p.add_argument("--json", required=True, type=Path, help="where to write the results JSON")
    p.add_argument("--plots", type=Path, help="folder for the PNG plots")
    p.add_argument("--tum", type=Path, help="folder for TUM trajectories (evo_ape tum groundtruth.tum estimate.tum)")
    p.add_argument("--work-dir", type=Path, help="where the node log and raw records go (default: a temp dir)")
    p.add_argument("--domain-id", type=number(int, min=0, max=232),
                   help="ROS_DOMAIN_ID (default: 100 + pid %% 100)")
    args = p.parse_args(argv)
    try:
        if not args.bag.exists():
            raise UsageError(f"--bag {args.bag}: no such rosbag2 file or folder")
        check_eval_paths(args)
        if args.params is not None:
            check_input_file(args.params, "--params")
    except UsageError as e:
        print(f"reloc-eval-bag: error: {e}", file=sys.stderr)
        return 2
    from ..ros.runner import parse_ros_pairs  # subprocess helpers only: no rclpy in this process
    # typed here (not verbatim) because the replay also reads some of them (e.g. refine) for its report
    overrides = {k: yaml.safe_load(v) for k, v in parse_ros_pairs(args.param).items()}
    try:
        res = run_bag_replay(args.bag, args.map, None if args.rate is None else args.rate, args.params,
                             overrides, args.refine, args.device, args.limit, args.json, args.plots,
                             args.tum, args.work_dir or args.json.parent / (args.json.stem + "_work"), args.domain_id)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"reloc-eval-bag: error: {e}", file=sys.stderr)
        return 2
    print_summary("reloc-eval-bag", res, f"through the node, {res['mode']} ({res['n_sent']} frames)", args.json,
                  args.plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())

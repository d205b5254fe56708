"""rosbag2 reader (sqlite3 and mcap, via ``rosbags``): images + camera_info + ground-truth poses as ``Frame``s.

- Images: ``sensor_msgs/Image`` (any encoding ``rosbags-image`` converts to rgb8) or ``CompressedImage``;
  ``image_topic`` defaults to the bag's only image topic. Images are decoded lazily (a time-range query per frame).
- Intrinsics: the first message of ``info_topic`` (default: ``<image topic namespace>/camera_info``, or the only
  CameraInfo topic); all CameraInfo messages must agree. Without one, pass ``intrinsics``.
- Pose (``T_world_cam`` = ``T_map_camera``), in order of preference:
  1. ``pose_topic`` (``geometry_msgs/PoseStamped``: the camera optical frame's pose in ``header.frame_id``);
  2. TF: the chain ``map_frame`` → … → ``camera_frame`` over ``/tf`` + ``/tf_static`` (``camera_frame`` defaults to
     the images' ``header.frame_id``); chains through ``odom`` are fine, and ``extra_tf_topics`` adds
     ``TransformStamped`` topics to the tree (e.g. ``/ground_truth/map_odom`` written by ``--odom-tf``);
  3. the bag's only PoseStamped topic.
  Poses are associated with an image by its header stamp: linear/slerp interpolation between the samples that
  bracket it when they are at most ``max_gap_s`` apart, else the nearest sample within ``tolerance_s``, else None.
  Use ``pose_source`` (``"auto"``, ``"topic"``, ``"tf"``, ``"none"``) to force one.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from ..geometry.camera import Camera, InvalidCameraError
from ..geometry.pose import T_from_pos_quat, invert_T, project_to_so3
from .base import Dataset, DatasetError, Frame
from .io import check_image_size, resolve_camera

__all__ = ["RosbagDataset", "TimedTransforms", "TfTree"]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _T_from_msg(t) -> np.ndarray:
    """4×4 from geometry_msgs Transform or Pose."""
    p = t.translation if hasattr(t, "translation") else t.position
    q = t.rotation if hasattr(t, "rotation") else t.orientation
    return T_from_pos_quat([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


class TimedTransforms:
    """Samples of one transform over time; ``at(t)`` interpolates (lerp + slerp) between bracketing samples."""

    def __init__(self):
        self.stamps: list[int] = []
        self.T: list[np.ndarray] = []

    def add(self, ns: int, T: np.ndarray) -> None:
        k = bisect.bisect_right(self.stamps, ns)
        self.stamps.insert(k, ns)
        self.T.insert(k, T)

    def at(self, ns: int, tolerance_ns: int, max_gap_ns: int) -> np.ndarray | None:
        if not self.stamps:
            return None
        k = bisect.bisect_left(self.stamps, ns)
        if k < len(self.stamps) and self.stamps[k] == ns:
            return self.T[k].copy()
        if 0 < k < len(self.stamps):
            t0, t1 = self.stamps[k - 1], self.stamps[k]
            if t1 - t0 <= max_gap_ns:
                a = (ns - t0) / (t1 - t0)
                T0, T1 = self.T[k - 1], self.T[k]
                out = np.eye(4)
                out[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
                slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]])))
                out[:3, :3] = slerp([a]).as_matrix()[0]
                return out
        cands = [j for j in (k - 1, k) if 0 <= j < len(self.stamps)]
        j = min(cands, key=lambda j: abs(self.stamps[j] - ns))
        if abs(self.stamps[j] - ns) <= tolerance_ns:
            return self.T[j].copy()
        return None


class TfTree:
    """A minimal TF buffer: per child frame one parent, static or time-indexed; ``lookup(target, source, t)``
    returns ``T_target_source`` by composing along the tree (via the common ancestor)."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.static: dict[str, np.ndarray] = {}
        self.dynamic: dict[str, TimedTransforms] = {}

    def add(self, parent: str, child: str, ns: int, T: np.ndarray, static: bool) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        old = self.parent.get(child)
        if old is not None and old != parent:
            raise DatasetError(f"TF: frame {child!r} has two parents ({old!r} and {parent!r})")
        self.parent[child] = parent
        if static:
            self.static[child] = T
        else:
            self.dynamic.setdefault(child, TimedTransforms()).add(ns, T)

    def _to_root(self, frame: str, ns: int, tol: int, gap: int):
        """[(frame, T_frame_start)] up to the root; T None where a link is unavailable at ``ns``."""
        chain = [(frame, np.eye(4))]
        T = np.eye(4)
        seen = {frame}
        while frame in self.parent:
            if frame in self.static:
                link = self.static[frame]
            else:
                link = self.dynamic[frame].at(ns, tol, gap)
                if link is None:
                    return chain, False
            T = link @ T
            frame = self.parent[frame]
            if frame in seen:
                raise DatasetError(f"TF: cycle through frame {frame!r}")
            seen.add(frame)
            chain.append((frame, T.copy()))
        return chain, True

    def can_connect(self, target: str, source: str) -> bool:
        def anc(f):
            out = {f}
            while f in self.parent:
                f = self.parent[f]
                out.add(f)
            return out
        return bool(anc(target.lstrip("/")) & anc(source.lstrip("/")))

    def lookup(self, target: str, source: str, ns: int, tolerance_ns: int, max_gap_ns: int) -> np.ndarray | None:
        cs, _ = self._to_root(source.lstrip("/"), ns, tolerance_ns, max_gap_ns)
        ct, _ = self._to_root(target.lstrip("/"), ns, tolerance_ns, max_gap_ns)
        ts = dict(ct)
        for f, T_f_source in cs:
            if f in ts:
                return invert_T(ts[f]) @ T_f_source
        return None


class RosbagDataset(Dataset):
    """Lazy rosbag2 dataset; see the module docstring. Call ``close()`` (or use ``with``) to release the bag."""

    def __init__(self, path, image_topic: str | None = None, info_topic: str | None = None,
                 pose_topic: str | None = None, map_frame: str = "map", camera_frame: str | None = None,
                 pose_source: str = "auto", tolerance_s: float = 0.02, max_gap_s: float = 0.5, intrinsics=None,
                 extra_tf_topics: tuple[str, ...] = ()):
        from rosbags.highlevel import AnyReader

        from .bag_writer import get_typestore

        self.root = Path(path)
        self._reader = AnyReader([self.root], default_typestore=get_typestore())
        try:
            self._reader.open()
        except Exception as e:  # rosbags raises its own ReaderError / AnyReaderError
            raise DatasetError(f"{self.root}: cannot open rosbag2 ({e})") from None
        r = self._reader
        conns = r.connections
        by_topic = {c.topic: c for c in conns}
        if image_topic is None:
            imgs = [c for c in conns if c.msgtype in IMAGE_TYPES]
            if len(imgs) != 1:
                raise DatasetError(f"{self.root}: {len(imgs)} image topics ({[c.topic for c in imgs]}); "
                                   "pass image_topic")
            image_topic = imgs[0].topic
        if image_topic not in by_topic or by_topic[image_topic].msgtype not in IMAGE_TYPES:
            raise DatasetError(f"{self.root}: no image topic {image_topic!r} (topics: {sorted(by_topic)})")
        self.image_topic = image_topic
        self._img_conn = by_topic[image_topic]
        # camera info
        infos = [c for c in conns if c.msgtype == "sensor_msgs/msg/CameraInfo"]
        if info_topic is None:
            ns_ = image_topic.rstrip("/").rsplit("/", 1)[0]
            if ns_.endswith("/image_raw"):  # .../image_raw/compressed
                ns_ = ns_.rsplit("/", 1)[0]
            pref = [c for c in infos if c.topic == f"{ns_}/camera_info"]
            info_conn = pref[0] if pref else (infos[0] if len(infos) == 1 else None)
        else:
            if info_topic not in by_topic:
                raise DatasetError(f"{self.root}: no camera_info topic {info_topic!r}")
            info_conn = by_topic[info_topic]
        # index pass: image stamps (bag time, header stamp), camera info, poses, TF
        self._bag_ts: list[int] = []
        self._stamps: list[int] = []
        self._frame_ids: list[str] = []
        info_cam = None
        pose_series: dict[str, TimedTransforms] = {}
        pose_frames: dict[str, str] = {}
        tf = TfTree()
        wanted = [self._img_conn] + ([info_conn] if info_conn else [])
        wanted += [c for c in conns if c.msgtype == "geometry_msgs/msg/PoseStamped"]
        wanted += [c for c in conns if c.topic in ("/tf", "/tf_static") and c.msgtype == "tf2_msgs/msg/TFMessage"]
        for topic in extra_tf_topics:
            if topic not in by_topic or by_topic[topic].msgtype != "geometry_msgs/msg/TransformStamped":
                raise DatasetError(f"{self.root}: no TransformStamped topic {topic!r}")
            wanted.append(by_topic[topic])
        for c, t, raw in r.messages(connections=wanted):
            if c is self._img_conn:
                # header is at the start of the CDR; deserialising the whole message is simplest and cheap enough
                msg = r.deserialize(raw, c.msgtype)
                self._bag_ts.append(t)
                self._stamps.append(_ns(msg.header.stamp))
                self._frame_ids.append(msg.header.frame_id)
            elif info_conn is not None and c is info_conn:
                msg = r.deserialize(raw, c.msgtype)
                try:
                    cam = Camera.from_camera_info({"k": msg.k, "d": msg.d, "width": msg.width, "height": msg.height,
                                                   "distortion_model": msg.distortion_model})
                except InvalidCameraError as e:
                    raise DatasetError(f"{self.root}: {c.topic}: {e}") from None
                if info_cam is None:
                    info_cam = cam
                elif not (np.allclose(cam.K, info_cam.K) and np.allclose(cam.dist, info_cam.dist)
                          and cam.size == info_cam.size):
                    raise DatasetError(f"{self.root}: {c.topic} changes during the bag (only one camera supported)")
            elif c.msgtype == "geometry_msgs/msg/PoseStamped":
                msg = r.deserialize(raw, c.msgtype)
                pose_series.setdefault(c.topic, TimedTransforms()).add(_ns(msg.header.stamp), _T_from_msg(msg.pose))
                pose_frames[c.topic] = msg.header.frame_id
            else:
                msg = r.deserialize(raw, c.msgtype)
                for tr in (msg.transforms if hasattr(msg, "transforms") else [msg]):
                    tf.add(tr.header.frame_id, tr.child_frame_id, _ns(tr.header.stamp), _T_from_msg(tr.transform),
                           static=c.topic == "/tf_static")
        if not self._stamps:
            raise DatasetError(f"{self.root}: image topic {image_topic} has no messages")
        self.names = [f"{image_topic.strip('/').replace('/', '_')}_{s}" for s in self._stamps]
        self._occurrence = [self._bag_ts[:i].count(t) for i, t in enumerate(self._bag_ts)] \
            if len(set(self._bag_ts)) != len(self._bag_ts) else [0] * len(self._bag_ts)
        # camera
        if intrinsics is not None:
            if isinstance(intrinsics, Camera):
                self.camera = intrinsics
            else:
                first = self._decode(0)
                self.camera = resolve_camera(intrinsics, first.shape[1], first.shape[0], str(intrinsics))
        elif info_cam is not None:
            self.camera = info_cam
        else:
            raise DatasetError(f"{self.root}: no CameraInfo topic for {image_topic}: pass info_topic or intrinsics")
        # poses
        tol, gap = int(tolerance_s * 1e9), int(max_gap_s * 1e9)
        self.camera_frame = camera_frame or self._frame_ids[0]
        self.map_frame = map_frame
        source = pose_source
        if source == "auto":
            if pose_topic is not None:
                source = "topic"
            elif tf.can_connect(map_frame, self.camera_frame):
                source = "tf"
            elif len(pose_series) == 1:
                source, pose_topic = "topic", next(iter(pose_series))
            else:
                source = "none"
        if source == "topic":
            if pose_topic is None and len(pose_series) == 1:
                pose_topic = next(iter(pose_series))
            if pose_topic not in pose_series:
                raise DatasetError(f"{self.root}: no PoseStamped messages on {pose_topic!r} "
                                   f"(PoseStamped topics: {sorted(pose_series)})")
            ser = pose_series[pose_topic]
            self._T = [ser.at(s, tol, gap) for s in self._stamps]
        elif source == "tf":
            if not tf.can_connect(map_frame, self.camera_frame):
                raise DatasetError(f"{self.root}: TF has no chain {map_frame!r} -> {self.camera_frame!r}")
            self._T = [tf.lookup(map_frame, self.camera_frame, s, tol, gap) for s in self._stamps]
        elif source == "none":
            self._T = [None] * len(self._stamps)
        else:
            raise ValueError(f"pose_source must be auto|topic|tf|none, got {pose_source!r}")
        for k, T in enumerate(self._T):
            if T is not None:
                T[:3, :3] = project_to_so3(T[:3, :3])
        self.pose_source = source
        self.pose_topic = pose_topic

    def _decode(self, i: int) -> np.ndarray:
        from rosbags.image import message_to_cvimage

        t = self._bag_ts[i]
        k = 0
        for c, _, raw in self._reader.messages(connections=[self._img_conn], start=t, stop=t + 1):
            if k == self._occurrence[i]:
                msg = self._reader.deserialize(raw, c.msgtype)
                try:
                    img = message_to_cvimage(msg, "rgb8")
                except Exception as e:  # rosbags-image raises ImageConversionError / cv2 errors
                    raise DatasetError(f"{self.root}: {self.image_topic} at {self._stamps[i]} ns: "
                                       f"unconvertible image ({e})") from None
                return np.ascontiguousarray(img)
            k += 1
        raise DatasetError(f"{self.root}: image at bag time {t} ns vanished")

    def _load(self, i: int) -> Frame:
        img = self._decode(i)
        check_image_size(img, self.camera.width, self.camera.height, Path(f"{self.root}:{self.names[i]}"))
        T = self._T[i]
        return Frame(name=self.names[i], image=img, camera=self.camera, T_world_cam=None if T is None else T.copy(),
                     stamp_ns=self._stamps[i])

    @property
    def stamps_ns(self) -> np.ndarray:
        return np.array(self._stamps, dtype=np.int64)

    def poses(self) -> np.ndarray:
        return np.stack([np.full((4, 4), np.nan) if T is None else T for T in self._T])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

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

from pathlib import Path

import numpy as np

from ..geometry.camera import Camera, InvalidCameraError
from ..geometry.pose import T_from_pos_quat, project_to_so3
from ..tf_buffer import TfBuffer, TfError
from .base import Dataset, DatasetError, Frame
from .io import check_image_size, resolve_camera

__all__ = ["RosbagDataset"]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _T_from_msg(t) -> np.ndarray:
    """4×4 from geometry_msgs Transform or Pose."""
    p = t.translation if hasattr(t, "translation") else t.position
    q = t.rotation if hasattr(t, "rotation") else t.orientation
    return T_from_pos_quat([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


_FOREVER_S = 1e9   # an offline buffer keeps every sample


def _lookup(buf: TfBuffer, target: str, source: str, ns: int, tol: int, gap: int) -> np.ndarray | None:
    """``T_target_source`` at ``ns`` (interpolated within ``gap``, else the nearest sample within ``tol``) or None."""
    try:
        return buf.lookup(target, source, ns, max_gap_ns=gap, tolerance_ns=tol)
    except TfError:
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
        poses = TfBuffer(_FOREVER_S)   # one edge per PoseStamped topic: "<topic>" -> "<topic>/pose"
        pose_frames: dict[str, str] = {}
        tf = TfBuffer(_FOREVER_S)
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
                poses.set_transform(c.topic, c.topic + "/pose", _ns(msg.header.stamp), _T_from_msg(msg.pose))
                pose_frames[c.topic] = msg.header.frame_id
            else:
                msg = r.deserialize(raw, c.msgtype)
                for tr in (msg.transforms if hasattr(msg, "transforms") else [msg]):
                    try:
                        tf.set_transform(tr.header.frame_id, tr.child_frame_id, _ns(tr.header.stamp),
                                         _T_from_msg(tr.transform), static=c.topic == "/tf_static")
                    except ValueError as e:
                        raise DatasetError(f"{self.root}: {c.topic}: {e}") from None
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
            elif tf.connected(map_frame, self.camera_frame):
                source = "tf"
            elif len(pose_frames) == 1:
                source, pose_topic = "topic", next(iter(pose_frames))
            else:
                source = "none"
        if source == "topic":
            if pose_topic is None and len(pose_frames) == 1:
                pose_topic = next(iter(pose_frames))
            if pose_topic not in pose_frames:
                raise DatasetError(f"{self.root}: no PoseStamped messages on {pose_topic!r} "
                                   f"(PoseStamped topics: {sorted(pose_frames)})")
            self._T = [_lookup(poses, pose_topic, pose_topic + "/pose", s, tol, gap) for s in self._stamps]
        elif source == "tf":
            if not tf.connected(map_frame, self.camera_frame):
                raise DatasetError(f"{self.root}: TF has no chain {map_frame!r} -> {self.camera_frame!r}")
            self._T = [_lookup(tf, map_frame, self.camera_frame, s, tol, gap) for s in self._stamps]
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

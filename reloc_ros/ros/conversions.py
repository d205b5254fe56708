"""Message <-> core conversions: images, CameraInfo, stamps, poses, transforms, covariances.

Functions take message objects duck-typed (rclpy classes, rosbags classes or anything with the same fields), so
they are testable without DDS. Bad input raises ``InputError`` whose ``reason`` is the status token published on
``~/status`` (``bad_encoding``, ``size_mismatch``, ``bad_intrinsics``, ...).

Conventions (docs/architecture.md): ``T_a_b`` maps points from ``b`` to ``a``; quaternions ``(x, y, z, w)`` as in
geometry_msgs; a 6×6 covariance is over ``(x, y, z, rx, ry, rz)`` = position (m) and a left rotation about the
fixed (header frame) axes (rad) — the same order as ROS' ``PoseWithCovariance.covariance`` (x, y, z, rotation about
X, Y, Z), stored row-major in 36 floats.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..geometry.camera import Camera, InvalidCameraError
from ..geometry.pose import pos_quat_from_T, R_from_quat_xyzw, make_T

__all__ = [
    "InputError", "check_image_msg", "image_msg_to_rgb", "compressed_msg_to_rgb", "camera_info_to_camera",
    "check_image_against_camera",
    "stamp_to_ns", "ns_to_stamp", "T_to_pose", "pose_to_T", "T_to_transform", "transform_to_T",
    "covariance_to_ros", "covariance_from_ros", "rgb_to_image_msg", "SUPPORTED_ENCODINGS",
]

# encoding -> (channels, numpy dtype, channel order for RGB output)
_ENCODINGS = {
    "rgb8": (3, np.uint8, (0, 1, 2)), "bgr8": (3, np.uint8, (2, 1, 0)),
    "rgba8": (4, np.uint8, (0, 1, 2)), "bgra8": (4, np.uint8, (2, 1, 0)),
    "mono8": (1, np.uint8, None), "8uc1": (1, np.uint8, None), "8uc3": (3, np.uint8, (2, 1, 0)),
    "mono16": (1, np.uint16, None),
}
# 16UC1 / 32FC1 are depth images (REP-118), never a colour or grey camera: refused as bad_encoding.
SUPPORTED_ENCODINGS = tuple(k for k in _ENCODINGS if k not in ("8uc1", "8uc3"))


class InputError(ValueError):
    """Input the node rejects; ``reason`` is the short status token."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _raw_bytes(data) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except TypeError:
        return memoryview(bytes(data))


def check_image_msg(msg) -> tuple[int, int]:
    """Validate an Image's metadata (encoding, size, step, data length) without touching the pixels; returns
    ``(width, height)``. Raises InputError('bad_encoding' | 'bad_image')."""
    enc = str(msg.encoding).lower()
    if enc not in _ENCODINGS:
        raise InputError("bad_encoding", f"unsupported image encoding {msg.encoding!r} "
                                         f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    ch, dtype, _ = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * ch * np.dtype(dtype).itemsize
    if h <= 0 or w <= 0:
        raise InputError("bad_image", f"image has size {w}x{h}")
    if step < row:
        raise InputError("bad_image", f"image step {step} < width*bytes_per_pixel {row}")
    n = len(msg.data)
    if n < step * (h - 1) + row:
        raise InputError("bad_image", f"image data has {n} bytes, {w}x{h} {enc} with step {step} needs "
                                      f"{step * h}")
    return w, h


def image_msg_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``(H, W, 3) uint8 RGB``. Supports rgb8, bgr8, rgba8, bgra8, mono8 (grey replicated),
    mono16 (top 8 bits), row padding (``step``) and ``is_bigendian``. Raises InputError('bad_encoding' | 'bad_image')."""
    check_image_msg(msg)
    enc = str(msg.encoding).lower()
    ch, dtype, order = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    row = w * ch * itemsize
    buf = _raw_bytes(msg.data)
    a = np.frombuffer(buf, dtype=np.uint8, count=step * (h - 1) + row)
    a = np.lib.stride_tricks.as_strided(a, shape=(h, row), strides=(step, 1))
    px = np.ascontiguousarray(a).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    px = px.reshape(h, w, ch)
    if itemsize == 2:
        px = (px.astype(np.uint16) >> 8).astype(np.uint8)
    if ch == 1:
        return np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(px[..., list(order)])


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png) -> ``(H, W, 3) uint8 RGB``; raises InputError('bad_encoding')."""
    buf = np.frombuffer(_raw_bytes(msg.data), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise InputError("bad_encoding", f"compressed image (format {msg.format!r}, {buf.size} bytes) could not be "
                                         "decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rgb_to_image_msg(rgb: np.ndarray, msg_cls, stamp_ns: int = 0, frame_id: str = "", encoding: str = "rgb8"):
    """``(H, W, 3) uint8 RGB`` -> ``msg_cls`` (sensor_msgs/Image) in ``rgb8`` or ``bgr8``."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding {encoding!r}: only rgb8/bgr8")
    a = np.ascontiguousarray(rgb if encoding == "rgb8" else rgb[..., ::-1])
    m = msg_cls()
    m.header.stamp = ns_to_stamp(stamp_ns, type(m.header.stamp))
    m.header.frame_id = frame_id
    m.height, m.width = a.shape[:2]
    m.encoding, m.is_bigendian, m.step = encoding, 0, a.shape[1] * 3
    m.data = a.tobytes()
    return m


def camera_info_to_camera(msg) -> Camera:
    """``sensor_msgs/CameraInfo`` -> ``Camera`` (K, plumb_bob D, width, height); raises InputError('bad_intrinsics')."""
    try:
        return Camera.from_camera_info({"k": list(msg.k), "d": list(msg.d), "width": int(msg.width),
                                        "height": int(msg.height), "distortion_model": msg.distortion_model})
    except (InvalidCameraError, ValueError) as err:
        raise InputError("bad_intrinsics", f"camera_info rejected: {err}") from err


def check_image_against_camera(width: int, height: int, camera: Camera) -> None:
    """Raise InputError('size_mismatch') when the image size differs from the CameraInfo size."""
    if (int(width), int(height)) != (camera.width, camera.height):
        raise InputError("size_mismatch", f"image is {width}x{height} but camera_info says "
                                          f"{camera.width}x{camera.height}")


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp_cls):
    s = stamp_cls()
    s.sec, s.nanosec = divmod(int(ns), 1_000_000_000)
    return s


def T_to_pose(T: np.ndarray, pose) -> object:
    """Fill a geometry_msgs/Pose from a 4×4 transform (position = translation, orientation = (x, y, z, w))."""
    p, q = pos_quat_from_T(T)
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def pose_to_T(pose) -> np.ndarray:
    o, p = pose.orientation, pose.position
    return make_T(R_from_quat_xyzw([o.x, o.y, o.z, o.w]), [p.x, p.y, p.z])


def T_to_transform(T: np.ndarray, transform) -> object:
    """Fill a geometry_msgs/Transform from a 4×4 transform."""
    p, q = pos_quat_from_T(T)
    transform.translation.x, transform.translation.y, transform.translation.z = (float(v) for v in p)
    r = transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return transform


def transform_to_T(transform) -> np.ndarray:
    r, t = transform.rotation, transform.translation
    return make_T(R_from_quat_xyzw([r.x, r.y, r.z, r.w]), [t.x, t.y, t.z])


def covariance_to_ros(cov: np.ndarray) -> list[float]:
    """6×6 (x, y, z, rx, ry, rz) covariance -> the 36 row-major floats of PoseWithCovariance (same order).
    Symmetrised; raises ValueError on a wrong shape or non-finite values."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        raise ValueError(f"covariance must be a finite 6x6 matrix, got shape {cov.shape}")
    return [float(v) for v in (0.5 * (cov + cov.T)).reshape(-1)]


def covariance_from_ros(values) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size != 36:
        raise ValueError(f"a pose covariance has 36 values, got {a.size}")
    return a.reshape(6, 6)

"""Pinhole camera with plumb_bob (OpenCV k1 k2 p1 p2 k3) distortion.

Pixel convention: integer coordinates are pixel centres (OpenCV). Camera axes: OpenCV (x right, y down, z forward).
Built from a ``sensor_msgs/CameraInfo``-shaped dict (``k``/``K``, ``d``/``D``, ``width``, ``height``) or a COLMAP camera.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Camera", "InvalidCameraError"]


class InvalidCameraError(ValueError):
    """Intrinsics that cannot describe a camera (NaN, zero or negative focal length, bad size)."""


def _float_array(value, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidCameraError(f"{what} must be numbers, got {value!r}") from None


def _pixels(value, what: str) -> int:
    """An image side in pixels: an integer (an integral float is accepted), else InvalidCameraError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidCameraError(f"image {what} must be an integer number of pixels, got {value!r}") from None
    if not v.is_integer():
        raise InvalidCameraError(f"image {what} must be an integer number of pixels, got {value!r}")
    return int(v)


@dataclass
class Camera:
    """Intrinsics of one image: ``K`` (3×3, pixels), plumb_bob ``dist`` (5,), image ``width`` × ``height``."""

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def __post_init__(self):
        self.K = _float_array(self.K, "K")
        if self.K.size != 9:
            raise InvalidCameraError(f"K must be 3x3 (9 values, row-major), got {self.K.size} values")
        self.K = self.K.reshape(3, 3)
        d = np.zeros(5)
        dist = _float_array(self.dist, "distortion").reshape(-1)
        if dist.size > 5:
            if np.any(dist[5:] != 0):
                raise InvalidCameraError(f"only plumb_bob (5 coefficients) is supported, got {dist.size} non-zero")
            dist = dist[:5]
        d[: dist.size] = dist
        self.dist = d
        self.width, self.height = _pixels(self.width, "width"), _pixels(self.height, "height")
        self.validate()

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int, dist=None) -> "Camera":
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        return cls(width, height, K, np.zeros(5) if dist is None else dist)

    @classmethod
    def from_camera_info(cls, info: dict) -> "Camera":
        """From a CameraInfo-shaped dict: keys ``k`` or ``K`` (9 values, row-major), ``d`` or ``D`` (plumb_bob or
        empty), ``width``, ``height``; optional ``distortion_model`` ('plumb_bob', 'rational_polynomial' with zero
        extra terms, or '' / 'none')."""
        model = str(info.get("distortion_model", "plumb_bob") or "plumb_bob").lower()
        if model not in ("plumb_bob", "rational_polynomial", "none", "equidistant") or model == "equidistant":
            raise InvalidCameraError(f"distortion model {model!r} is not supported (plumb_bob only)")
        K = info.get("k", info.get("K"))
        D = info.get("d", info.get("D", []))
        if K is None:
            raise InvalidCameraError("camera info has no 'k' (intrinsic matrix)")
        missing = [k for k in ("width", "height") if info.get(k) is None]
        if missing:
            raise InvalidCameraError(f"camera info has no {' / '.join(repr(m) for m in missing)} (image size)")
        return cls(info["width"], info["height"], K, D if D is not None else [])

    @classmethod
    def from_colmap(cls, cam) -> "Camera":
        """From a ``pycolmap.Camera`` (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV)."""
        model = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
        p = np.asarray(cam.params, dtype=np.float64)
        # COLMAP puts the pixel-grid origin at the corner of the top-left pixel; OpenCV at its centre.
        if model == "SIMPLE_PINHOLE":
            f, cx, cy = p
            fx = fy = f
            dist = np.zeros(5)
        elif model == "PINHOLE":
            fx, fy, cx, cy = p
            dist = np.zeros(5)
        elif model == "SIMPLE_RADIAL":
            f, cx, cy, k = p
            fx = fy = f
            dist = np.array([k, 0, 0, 0, 0])
        elif model == "RADIAL":
            f, cx, cy, k1, k2 = p
            fx = fy = f
            dist = np.array([k1, k2, 0, 0, 0])
        elif model == "OPENCV":
            fx, fy, cx, cy, k1, k2, p1, p2 = p
            dist = np.array([k1, k2, p1, p2, 0])
        else:
            raise InvalidCameraError(f"COLMAP camera model {model} is not supported "
                                     "(SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV)")
        return cls.from_pinhole(fx, fy, cx - 0.5, cy - 0.5, cam.width, cam.height, dist)

    def to_colmap(self) -> tuple[str, list[float]]:
        """COLMAP model name and parameters (the inverse of ``from_colmap``: principal point +0.5 px to COLMAP's
        corner origin): PINHOLE without distortion, OPENCV with k3 = 0, FULL_OPENCV otherwise (plumb_bob exactly,
        k4..k6 = 0; ``from_colmap`` does not read FULL_OPENCV back)."""
        fx, fy, cx, cy = self.fx, self.fy, self.cx + 0.5, self.cy + 0.5
        k1, k2, p1, p2, k3 = self.dist.tolist()
        if not self.is_distorted:
            return "PINHOLE", [fx, fy, cx, cy]
        if k3 == 0:
            return "OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2]
        return "FULL_OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]

    def to_camera_info(self) -> dict:
        """CameraInfo-shaped dict (``k``, ``d``, ``p``, ``r``, ``width``, ``height``, ``distortion_model``)."""
        P = np.zeros((3, 4))
        P[:3, :3] = self.K
        return {"width": self.width, "height": self.height, "distortion_model": "plumb_bob",
                "k": self.K.reshape(-1).tolist(), "d": self.dist.tolist(), "r": np.eye(3).reshape(-1).tolist(),
                "p": P.reshape(-1).tolist()}

    # ---- checks and properties ----------------------------------------------------------------------------------
    def validate(self) -> None:
        if not (np.all(np.isfinite(self.K)) and np.all(np.isfinite(self.dist))):
            raise InvalidCameraError("intrinsics contain NaN or inf")
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise InvalidCameraError(f"focal lengths must be positive, got fx={self.K[0, 0]}, fy={self.K[1, 1]}")
        if self.width <= 0 or self.height <= 0:
            raise InvalidCameraError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def is_distorted(self) -> bool:
        return bool(np.any(self.dist != 0))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    # ---- geometry -----------------------------------------------------------------------------------------------
    def scaled(self, sx: float, sy: float | None = None) -> "Camera":
        """The camera of the image resized by ``sx`` (and ``sy``); distortion is unchanged (it acts on
        normalised coordinates)."""
        sy = sx if sy is None else sy
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return Camera(round(self.width * sx), round(self.height * sy), K, self.dist.copy())

    def resized(self, width: int, height: int) -> "Camera":
        """The camera of the image resized to ``width`` × ``height``."""
        return self.scaled(width / self.width, height / self.height)

    def project(self, X_cam: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) camera-frame points to (N, 2) pixels; ``valid`` marks points in front (z > eps)."""
        X = np.asarray(X_cam, dtype=np.float64).reshape(-1, 3)
        z = X[:, 2]
        valid = z > eps
        zs = np.where(valid, z, 1.0)
        xn = X[:, :2] / zs[:, None]
        xd = self._distort(xn)
        uv = xd * [self.fx, self.fy] + [self.cx, self.cy]
        return uv, valid

    def _distort(self, xn: np.ndarray) -> np.ndarray:
        if not self.is_distorted:
            return xn
        k1, k2, p1, p2, k3 = self.dist
        x, y = xn[:, 0], xn[:, 1]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], -1)

    def normalize(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N, 2) undistorted normalised coordinates (x/z, y/z)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if not self.is_distorted:
            return (uv - [self.cx, self.cy]) / [self.fx, self.fy]
        xd = (uv - [self.cx, self.cy]) / [self.fx, self.fy]
        return self._undistort_normalized(xd)

    def _undistort_normalized(self, xd: np.ndarray, iterations: int = 20) -> np.ndarray:
        """Invert the plumb_bob model by Newton's method on (x, y) with the analytic 2×2 Jacobian."""
        k1, k2, p1, p2, k3 = self.dist
        x = xd.copy()
        for _ in range(iterations):
            u, v = x[:, 0], x[:, 1]
            r2 = u * u + v * v
            rad = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
            drad = k1 + 2 * k2 * r2 + 3 * k3 * r2 ** 2  # d rad / d r2
            f = self._distort(x) - xd
            a = rad + 2 * u * u * drad + 2 * p1 * v + 6 * p2 * u
            b = 2 * u * v * drad + 2 * p1 * u + 2 * p2 * v
            d = rad + 2 * v * v * drad + 6 * p1 * v + 2 * p2 * u
            det = a * d - b * b
            det = np.where(np.abs(det) < 1e-12, 1e-12, det)
            step = np.stack([(d * f[:, 0] - b * f[:, 1]) / det, (a * f[:, 1] - b * f[:, 0]) / det], -1)
            x = x - step
            if np.abs(step).max() < 1e-14:
                break
        return x

    def undistort_points(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) distorted pixels -> (N, 2) pixels of the ideal pinhole camera with the same ``K``."""
        return self.normalize(uv) * [self.fx, self.fy] + [self.cx, self.cy]

    def backproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(N, 2) pixels + (N,) depth along the optical axis (z, metres) -> (N, 3) camera-frame points."""
        xn = self.normalize(uv)
        d = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
        return np.concatenate([xn * d, d], -1)

    def pixel_grid(self, stride: int = 1) -> np.ndarray:
        """(H/stride · W/stride, 2) pixel centres of a regular grid of cells of ``stride`` pixels (row-major)."""
        us = np.arange(stride / 2 - 0.5, self.width, stride)
        vs = np.arange(stride / 2 - 0.5, self.height, stride)
        u, v = np.meshgrid(us, vs)
        return np.stack([u.ravel(), v.ravel()], -1)

    def undistort_image(self, image: np.ndarray) -> np.ndarray:
        """Image as seen by the ideal pinhole camera with the same ``K`` (identity when there is no distortion)."""
        if not self.is_distorted:
            return image
        return cv2.undistort(image, self.K, self.dist)

"""Training augmentation: colour jitter and in-plane rotation with a consistent pose label.

In-plane rotation. Rotating the camera about its optical axis by ``θ`` gives a new camera frame ``c'`` with
``X_c' = Rz(θ)·X_c`` (``Rz`` the rotation about z, OpenCV axes). A pixel ``p`` (homogeneous) of the old image
maps to ``p' = K·Rz(θ)·K⁻¹·p`` in the new one; the third row of that matrix is ``(0, 0, 1)``, so it is the affine
warp ``(K Rz K⁻¹)[:2]`` — exact for a pinhole camera, about the principal point, and also correct when fx ≠ fy.
The new pose is ``T_world_cam' = T_world_cam · [Rz(θ)ᵀ | 0]`` (since ``X_c = Rz(θ)ᵀ X_c'``). Positive ``θ`` turns
image content clockwise on screen (x right, y down). Pixels whose source falls outside the image are black.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["rotz", "rotation_warp", "rotate_in_plane", "colour_jitter"]


def rotz(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_warp(K: np.ndarray, theta: float) -> np.ndarray:
    """2×3 affine pixel map (old image → new image) of an in-plane camera rotation by ``theta`` (rad)."""
    A = K @ rotz(theta) @ np.linalg.inv(K)
    return A[:2].copy()


def rotate_in_plane(image: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray, theta: float,
                    interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``image`` (H, W, C) about the principal point of ``K`` by ``theta`` rad; returns the new image (same
    size and intrinsics) and the consistent ``T_world_cam'`` (4×4)."""
    H, W = image.shape[:2]
    M = rotation_warp(K, theta)
    out = cv2.warpAffine(image, M, (W, H), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    T_cam_new = np.eye(4)
    T_cam_new[:3, :3] = rotz(theta).T
    return out, np.asarray(T_world_cam, dtype=np.float64) @ T_cam_new


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.3, contrast: float = 0.3,
                  saturation: float = 0.3) -> np.ndarray:
    """Random brightness / contrast / saturation factors in ``[1 − a, 1 + a]`` applied to a uint8 RGB image."""
    x = image.astype(np.float32)
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    x *= b
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - gray.mean()) * c + gray.mean()
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)

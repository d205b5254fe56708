"""The one check of an input image: (H, W, 3) uint8 RGB, optionally of its camera's size."""
from __future__ import annotations

import numpy as np

__all__ = ["InputImageError", "check_rgb_image", "rgb_batch"]


class InputImageError(ValueError):
    """An image that cannot be used as given (wrong type, dtype or shape, size different from the camera's)."""


def check_rgb_image(image, camera=None, what: str = "image") -> np.ndarray:
    """``image`` if it is an (H, W, 3) uint8 RGB array whose (W, H) is ``camera``'s size (when given); else
    InputImageError naming ``what`` (e.g. "frame-000123")."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputImageError(f"{what}: expected an (H, W, 3) uint8 RGB image, got {desc}")
    h, w = image.shape[:2]
    if camera is not None and (w, h) != (camera.width, camera.height):
        raise InputImageError(f"{what} is {w}x{h} but the camera intrinsics are for {camera.width}x{camera.height}")
    return image


def rgb_batch(images) -> np.ndarray:
    """(H, W, 3) uint8 RGB, a (B, H, W, 3) batch or a list of equally sized images -> a contiguous, writable
    (B, H, W, 3) uint8 array (a read-only input, e.g. ``np.asarray(PIL image)``, is copied); InputImageError
    otherwise."""
    arr = np.stack(images) if isinstance(images, list) else np.asarray(images)
    arr = arr[None] if arr.ndim == 3 else arr
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        shape = arr.shape[1:] if arr.ndim == 4 else arr.shape
        raise InputImageError(f"expected (H, W, 3) uint8 RGB images, got {shape} {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()

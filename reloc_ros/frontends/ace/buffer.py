"""ACE training buffer: encoder features of random cells of augmented, posed mapping images.

Each view is a mapping image resized to ``image_height`` (and undistorted if its camera is distorted), then
augmented by an in-plane rotation ``θ`` about the principal point and a scale ``s`` (the image size changes by
``s``), plus brightness/contrast jitter. The warp ``u' = c' + diag(s·f)·Rθ·diag(1/f)·(u − c)`` is exactly the image
of a pinhole camera with ``K' = [s·f, c' = (c + 0.5)·s − 0.5]`` rotated by ``Rθ`` about its optical axis, so the
augmented view keeps a consistent ``K'`` and ``T_cam'_world = [Rz(θ) | 0] · T_cam_world``. Cells whose 8×8 block
leaves the warped image are not sampled.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ...geometry.pose import invert_T
from .encoders import STRIDE, DenseEncoder, cell_centers, rgb_to_gray_tensor

__all__ = ["TrainingBuffer", "augment_view", "prepare_image", "fill_buffer"]


@dataclass
class TrainingBuffer:
    """features (M, C) fp16; uv (M, 2) float32 pixels of the augmented view; view (M,) int64 index into
    K (V, 3, 3) float32 and T_cam_world (V, 4, 4) float32 (world -> camera of the augmented view)."""

    features: torch.Tensor
    uv: torch.Tensor
    view: torch.Tensor
    K: torch.Tensor
    T_cam_world: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("features", "uv", "view", "K", "T_cam_world")}


def prepare_image(image: np.ndarray, camera, image_height: int):
    """Undistort (if needed) and resize an RGB image to ``image_height`` rows; returns (image, K (3, 3))."""
    image = camera.undistort_image(image)
    s = image_height / image.shape[0]
    cam = camera.scaled(s) if abs(s - 1) > 1e-9 else camera
    if abs(s - 1) > 1e-9:
        image = cv2.resize(image, (cam.width, cam.height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return image, cam.K.copy()


def augment_view(image: np.ndarray, K: np.ndarray, rng: np.random.Generator, rot_deg: float, scale_range,
                 brightness: float, contrast: float):
    """Random rotation/scale/colour view; returns (image', K', R_rot (3, 3) camera -> camera', valid mask)."""
    h, w = image.shape[:2]
    s = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    th = math.radians(rng.uniform(-rot_deg, rot_deg))
    w2, h2 = max(STRIDE, round(w * s)), max(STRIDE, round(h * s))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    K2 = np.array([[fx * s, 0, (cx + 0.5) * s - 0.5], [0, fy * s, (cy + 0.5) * s - 0.5], [0, 0, 1.0]])
    Rz = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    A2 = np.diag([fx * s, fy * s]) @ Rz @ np.diag([1 / fx, 1 / fy])
    A = np.concatenate([A2, (K2[:2, 2] - A2 @ np.array([cx, cy]))[:, None]], 1)
    out = cv2.warpAffine(image, A, (w2, h2), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpAffine(np.ones((h, w), np.uint8), A, (w2, h2), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT)
    if brightness > 0 or contrast > 0:
        b = rng.uniform(1 - brightness, 1 + brightness)
        c = rng.uniform(1 - contrast, 1 + contrast)
        f = out.astype(np.float32) * b
        f = (f - f.mean()) * c + f.mean()
        out = np.clip(f, 0, 255).astype(np.uint8)
    R3 = np.eye(3)
    R3[:2, :2] = Rz
    return out, K2, R3, valid


def fill_buffer(dataset, encoder: DenseEncoder, conf: dict, rng: np.random.Generator, device="cpu",
                progress: bool = True, deadline: float | None = None) -> TrainingBuffer:
    """Sample ``conf['buffer_size']`` cells (``conf['cells_per_view']`` per augmented view) from posed frames.

    ``deadline`` (a ``time.perf_counter()`` value): stop early, with a smaller buffer, once it has passed (frames are
    visited in random order, so a partial buffer still covers the scene evenly).
    """
    poses = dataset.poses()
    idx = np.flatnonzero(np.all(np.isfinite(poses.reshape(len(poses), -1)), 1))
    if len(idx) == 0:
        raise ValueError("the mapping dataset has no posed frames")
    size, per_view = int(conf["buffer_size"]), int(conf["cells_per_view"])
    n_views = math.ceil(size / per_view)
    feats, uvs, views, Ks, Ts = [], [], [], [], []
    order = np.concatenate([rng.permutation(idx) for _ in range(math.ceil(n_views / len(idx)))])[:n_views]
    got = 0
    bar = tqdm(total=size, desc="ACE buffer", unit="feat", disable=not progress, mininterval=2.0)
    cache: dict[int, tuple] = {}
    with torch.inference_mode():
        for v, i in enumerate(order):
            if got >= size:
                break
            if deadline is not None and got > 0 and time.perf_counter() > deadline:
                print(f"[ace] buffer time budget spent: {got} of {size} features from {v} views", flush=True)
                break
            if int(i) not in cache:  # a view of every frame is made before any frame repeats: keep only one decoded
                cache.clear()
                frame = dataset[int(i)]
                img, K = prepare_image(frame.image, frame.camera, int(conf["image_height"]))
                cache[int(i)] = (img, K, invert_T(frame.T_world_cam))
            img, K, T_cw = cache[int(i)]
            aug, K2, R3, valid = augment_view(img, K, rng, conf["aug_rotation_deg"], conf["aug_scale"],
                                              conf["aug_brightness"], conf["aug_contrast"])
            gray = rgb_to_gray_tensor(aug, device)
            f, _ = encoder(gray)
            C, hh, ww = f.shape[1:]
            # cells entirely inside the warped image
            vm = valid[: hh * STRIDE, : ww * STRIDE].reshape(hh, STRIDE, ww, STRIDE).min(axis=(1, 3)).reshape(-1)
            cand = np.flatnonzero(vm)
            if len(cand) == 0:
                continue
            take = rng.choice(cand, size=min(per_view, len(cand), size - got), replace=False)
            f = f[0].reshape(C, -1)[:, torch.from_numpy(take).to(f.device)].T
            feats.append(f.to(torch.float16).cpu())
            uvs.append(torch.from_numpy(cell_centers(hh, ww)[take].astype(np.float32)))
            views.append(torch.full((len(take),), len(Ks), dtype=torch.int64))
            T2 = T_cw.copy()
            T2[:3] = R3 @ T_cw[:3]
            Ks.append(K2)
            Ts.append(T2)
            got += len(take)
            bar.update(len(take))
    bar.close()
    return TrainingBuffer(torch.cat(feats), torch.cat(uvs), torch.cat(views),
                          torch.as_tensor(np.stack(Ks), dtype=torch.float32),
                          torch.as_tensor(np.stack(Ts), dtype=torch.float32))

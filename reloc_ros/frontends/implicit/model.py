"""The implicit-geometry pose network: MobileNetV3 features → per-cell global scene coordinates, depth and weight;
pose by weighted Kabsch between back-projected camera points and the scene coordinates.

Per output cell i (one every ``output_stride`` pixels, centred as in ``Camera.pixel_grid(stride)``):
- ``scene_i`` (3): world point (metres) = ``centre + extent · raw_xyz`` (``centre``/``extent`` from the mapping
  poses, stored in the map metadata);
- ``depth_i`` (1): metres along the optical axis, ``d_min + (d_max − d_min)·sigmoid(raw)``;
- ``weight_i`` (1): ``sigmoid(raw)`` ∈ (0, 1).
Camera points ``P_i = ray_i · depth_i`` with ``ray_i = (x_n, y_n, 1)`` from the (undistorted) intrinsics of the
network input; ``(R, t) = weighted_kabsch(P, scene, weight)`` is ``T_world_cam`` (closed form, differentiable).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ...geometry.camera import Camera
from ...geometry.kabsch import weighted_kabsch
from .mobilenetv3 import MobileNetV3

__all__ = ["ImplicitPoseNet", "normalize_images", "camera_rays", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: np.ndarray | torch.Tensor, device="cpu", channels_last: bool = True) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 RGB → (B, 3, H, W) float32, ImageNet-normalised, on ``device``."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # e.g. np.asarray(PIL image): torch warns about (and cannot share) read-only memory
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x[None]
    if x.dtype != torch.uint8 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images (B, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def camera_rays(camera: Camera, stride: int) -> np.ndarray:
    """(N, 3) rays ``(x_n, y_n, 1)`` of the output cells (row-major, ``Camera.pixel_grid(stride)``) of an image
    seen by ``camera`` (distortion is honoured, so rays are those of the undistorted directions)."""
    uv = camera.pixel_grid(stride)
    xn = camera.normalize(uv)
    return np.concatenate([xn, np.ones((len(xn), 1))], -1)


class ImplicitPoseNet(nn.Module):
    """Backbone + 5-channel head. ``forward`` returns scene (B, N, 3) m, depth (B, N) m, weight (B, N).

    Args:
        arch / output_stride / dilated: MobileNetV3 options (see ``mobilenetv3.MobileNetV3``).
        head_channels: width of the head (3×3 conv then ``head_layers`` 1×1 convs, hard-swish).
        centre (3,), extent (m): scene normalisation of the XYZ output.
        d_min, d_max (m): depth range; ``depth_init`` (m) sets the initial depth bias.
    """

    def __init__(self, arch: str = "large", output_stride: int = 8, dilated: bool = False, head_channels: int = 128,
                 head_layers: int = 2, centre=(0.0, 0.0, 0.0), extent: float = 1.0, d_min: float = 0.1,
                 d_max: float = 10.0, depth_init: float = 2.0):
        super().__init__()
        if not 0 < d_min < d_max:
            raise ValueError(f"depth range must satisfy 0 < d_min < d_max, got {d_min}, {d_max}")
        if not extent > 0:
            raise ValueError(f"scene extent must be positive, got {extent}")
        self.backbone = MobileNetV3(arch, output_stride, dilated)
        c = self.backbone.out_channels
        layers: list[nn.Module] = [nn.Conv2d(c, head_channels, 3, padding=1), nn.Hardswish(inplace=True)]
        for _ in range(head_layers):
            layers += [nn.Conv2d(head_channels, head_channels, 1), nn.Hardswish(inplace=True)]
        self.head = nn.Sequential(*layers)
        self.out = nn.Conv2d(head_channels, 5, 1)
        nn.init.normal_(self.out.weight, std=1e-3)
        with torch.no_grad():
            self.out.bias.zero_()
            p = min(max((depth_init - d_min) / (d_max - d_min), 1e-3), 1 - 1e-3)
            self.out.bias[3] = math.log(p / (1 - p))
        self.output_stride = output_stride
        self.d_min, self.d_max = float(d_min), float(d_max)
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(3).clone())
        self.register_buffer("extent", torch.tensor(float(extent), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.head(self.backbone(x))
        o = self.out(f).float()  # (B, 5, h, w); geometry in fp32 even under bf16 autocast
        B = o.shape[0]
        o = o.permute(0, 2, 3, 1).reshape(B, -1, 5)
        scene = self.centre + self.extent * o[..., :3]
        depth = self.d_min + (self.d_max - self.d_min) * torch.sigmoid(o[..., 3])
        weight = torch.sigmoid(o[..., 4])
        return {"scene": scene, "depth": depth, "weight": weight}

    @staticmethod
    def camera_points(depth: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        """depth (B, N) m, rays (B, N, 3) or (N, 3) → camera-frame points (B, N, 3) m."""
        return rays * depth[..., None]

    @staticmethod
    def solve(cam_pts: torch.Tensor, scene: torch.Tensor, weight: torch.Tensor, check: bool = True,
              min_weight: float = 1e-6):
        """Weighted Kabsch → (R (B, 3, 3), t (B, 3)) of ``T_world_cam``; done in float64 for stability."""
        w = weight.double() + (min_weight if not check else 0.0)
        return weighted_kabsch(cam_pts.double(), scene.double(), w, check=check)

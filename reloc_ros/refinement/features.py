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
    """Separable Gaussian blur (std ``sigma`` cells, radius ⌈2σ⌉, replicate padding) of an (h, w, C)
    channels-last map, as weighted sums of shifted slices (faster on a CPU than a grouped convolution)."""
    if sigma <= 0:
        return fmap
    r = max(1, int(np.ceil(2 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).tolist()
    out = fmap
    for dim in (0, 1):
        n = out.shape[dim]
        first, last = out.narrow(dim, 0, 1), out.narrow(dim, n - 1, 1)
        reps = [1, 1, 1]
        reps[dim] = r
        padded = torch.cat([first.repeat(*reps), out, last.repeat(*reps)], dim)
        acc = padded.narrow(dim, 0, n) * k[0]
        for i in range(1, 2 * r + 1):
            acc.add_(padded.narrow(dim, i, n), alpha=k[i])
        out = acc
    return out


def reduce_and_normalize(fmap: torch.Tensor, mean: torch.Tensor | None = None, proj: torch.Tensor | None = None,
                         blur_sigma: float = 0.0) -> torch.Tensor:
    """(C, h, w) raw features -> (h, w, D) channels-last: blurred (``blur_sigma`` cells), PCA-reduced
    (``(f − mean) @ proj``, proj (C, D)) when given, and L2-normalised per pixel. The PCA runs before the blur
    (the same map: the blur is linear with unit gain), so that the blur sees D channels, not C."""
    f = fmap.permute(1, 2, 0)
    if proj is not None:
        h, w, C = f.shape
        f = torch.addmm(-(mean @ proj).view(1, -1), f.reshape(h * w, C), proj).view(h, w, -1)
    return F.normalize(gaussian_blur(f, blur_sigma), dim=-1).contiguous()


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

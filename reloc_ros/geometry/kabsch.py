"""Weighted Kabsch (Umeyama without scale): the closed-form rigid alignment used by the implicit front end."""
from __future__ import annotations

import torch

__all__ = ["weighted_kabsch", "DegenerateWeightsError"]


class DegenerateWeightsError(ValueError):
    """The weights cannot define a rigid alignment (all ~0, negative, non-finite, or < 3 effective points)."""


def weighted_kabsch(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8,
                    check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid ``(R, t)`` minimising ``Σ w_i ‖R·src_i + t − dst_i‖²``; batched and differentiable.

    Args:
        src: (B, N, 3) or (N, 3) points in the source frame (e.g. back-projected camera points, metres).
        dst: same shape, the target frame (e.g. predicted scene coordinates, world frame).
        weights: (B, N) or (N,) non-negative weights.
        check: validate the weights (raises ``DegenerateWeightsError``); set False inside training loops that
            guarantee positive weights (the check synchronises with the device).
    Returns:
        R (B, 3, 3), t (B, 3) so that ``dst ≈ src @ R^T + t``. With src = camera points and dst = world points
        this is ``T_world_cam``.
    """
    squeeze = src.dim() == 2
    if squeeze:
        src, dst, weights = src[None], dst[None], weights[None]
    if src.shape != dst.shape or src.shape[-1] != 3 or weights.shape != src.shape[:2]:
        raise ValueError(f"weighted_kabsch: shapes src {tuple(src.shape)}, dst {tuple(dst.shape)}, "
                         f"weights {tuple(weights.shape)} do not match (B, N, 3), (B, N, 3), (B, N)")
    if check:
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise DegenerateWeightsError("weighted_kabsch: weights must be finite and non-negative")
        wsum = weights.sum(-1)
        if (wsum <= eps).any():
            raise DegenerateWeightsError(f"weighted_kabsch: total weight {wsum.min().item():.3g} <= {eps}: "
                                         "no correspondence carries weight")
        n_eff = wsum ** 2 / (weights ** 2).sum(-1).clamp_min(1e-30)
        if (n_eff < 3 - 1e-6).any():
            raise DegenerateWeightsError(f"weighted_kabsch: effective number of points {n_eff.min().item():.2f} < 3")
    w = weights / weights.sum(-1, keepdim=True).clamp_min(eps)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    S = (src - mu_s[:, None]) * w[..., None]
    H = S.transpose(1, 2) @ (dst - mu_d[:, None])  # (B, 3, 3) = Σ w s d^T
    U, _, Vh = torch.linalg.svd(H)
    V = Vh.transpose(1, 2)
    d = torch.sign(torch.det(V @ U.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = V @ D @ U.transpose(1, 2)
    t = mu_d - (R @ mu_s[..., None])[..., 0]
    if squeeze:
        return R[0], t[0]
    return R, t

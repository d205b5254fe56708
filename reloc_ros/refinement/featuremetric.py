"""The featuremetric cost of a camera pose and its Gauss-Newton normal equations (analytic Jacobians).

For reference points ``X_w`` with reference features ``f_ref`` (N, D) and a query feature map ``F`` (h, w, D) of a
level with stride ``s``, the residual of point ``i`` is ``r_i = F(π(T⁻¹ X_i)) − f_ref_i`` (D,), and the cost is
``E(T) = Σ_i w_i ρ(‖r_i‖²)`` over the points that project inside the map, with a robust ``ρ`` (Cauchy by default)
and optional per-point weights ``w_i``. The pose is perturbed on the right, ``T·Exp(ρ, φ)``
(``geometry.pose.se3_exp_right``); the Jacobian of ``r_i`` is ``∂F/∂xy · (1/s) · ∂uv/∂X_c · ∂X_c/∂(ρ, φ)``, and
the normal equations are assembled through the 2×2 products ``Gᵀ G`` (G = ∂F/∂xy, D×2) so that no (N, D, 6)
tensor is formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry.pose import so3_exp_torch
from ..geometry.projection_torch import project_with_jacobian, world_to_camera
from .features import pixel_to_level, sample_bilinear_parts

__all__ = ["robust_loss", "LevelCost", "evaluate_level", "se3_exp_right_torch", "residuals"]


def robust_loss(s: torch.Tensor, kind: str = "cauchy", scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ρ(s), ρ'(s))`` of squared residual norms ``s`` (N,), with ``scale`` the squared-norm scale c².

    cauchy: ``c² log(1 + s/c²)``; huber: ``s`` below c², ``2c√s − c²`` above; l2: ``s``.
    """
    if kind == "cauchy":
        x = s / scale
        return scale * torch.log1p(x), 1.0 / (1.0 + x)
    if kind == "huber":
        root = torch.sqrt(s.clamp_min(1e-12))
        c = scale ** 0.5
        inl = s <= scale
        return torch.where(inl, s, 2 * c * root - scale), torch.where(inl, torch.ones_like(s), c / root)
    if kind == "l2":
        return s, torch.ones_like(s)
    raise ValueError(f"unknown robust loss {kind!r} (cauchy, huber, l2)")


def se3_exp_right_torch(T: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """Torch twin of ``geometry.pose.se3_exp_right``: ``R' = R·Exp(φ)``, ``t' = t + R·ρ`` for ``xi = (ρ, φ)``."""
    out = T.clone()
    out[:3, :3] = T[:3, :3] @ so3_exp_torch(xi[3:])
    out[:3, 3] = T[:3, 3] + T[:3, :3] @ xi[:3]
    return out


def residuals(T: torch.Tensor, X_w: torch.Tensor, f_ref: torch.Tensor, fmap: torch.Tensor, stride: float,
              intr: torch.Tensor, dist: torch.Tensor | None, with_jac: bool = True):
    """Residuals ``r`` (N, D), ``valid`` (N,) and, when ``with_jac``, ``G = ∂F/∂xy`` (N, D, 2) and
    ``P = ∂xy/∂(ρ, φ)`` (N, 2, 6) (the full residual Jacobian is ``G @ P``)."""
    r, valid, gx, gy, P = _residual_parts(T, X_w, f_ref, fmap, stride, intr, dist, with_jac)
    return r, valid, (torch.stack([gx, gy], -1) if with_jac else None), P


def _residual_parts(T, X_w, f_ref, fmap, stride, intr, dist, with_jac):
    """``residuals`` with ``G`` as its two columns ``∂F/∂x``, ``∂F/∂y`` (N, D)."""
    X_c = world_to_camera(T, X_w)
    uv, valid_z, Jp = project_with_jacobian(X_c, intr, dist, with_jac=with_jac)
    xy = pixel_to_level(uv, stride)
    f, gx, gy, valid_s = sample_bilinear_parts(fmap, xy.to(fmap.dtype), with_grad=with_jac)
    r = f - f_ref
    valid = valid_z & valid_s
    if not with_jac:
        return r, valid, None, None, None
    # ∂uv/∂(ρ, φ) = Jp·[−I | [X_c]_×]; row a of Jp·[X_c]_× is (Jp_a × X_c) (see pose_jacobian_right)
    P = torch.cat([-Jp, torch.linalg.cross(Jp, X_c[:, None, :].expand_as(Jp), dim=-1)], -1) / stride
    return r, valid, gx, gy, P


@dataclass
class LevelCost:
    """Cost at one pose and level: ``cost`` (mean robust cost over valid points), ``num_valid``, ``H`` (6, 6) and
    ``g`` (6,) of the normal equations (float64; None when not requested), ``sq_norms`` (N,), ``valid`` (N,),
    ``weighted_sq_sum`` (Σ wρ'‖r‖²), ``meat`` (6, 6) ``Σᵢ sᵢ sᵢᵀ`` of the per-point gradients ``sᵢ = wᵢρ'ᵢ Jᵢᵀ rᵢ``
    (the sandwich covariance's, ``uncertainty.sandwich_covariance``; None without the Jacobian). Arrays are torch tensors from ``evaluate_level``, numpy arrays from
    ``featuremetric_cpu.evaluate_level_cpu``."""

    cost: float
    num_valid: int
    H: torch.Tensor | None
    g: torch.Tensor | None
    sq_norms: torch.Tensor
    valid: torch.Tensor
    weighted_sq_sum: float
    meat: torch.Tensor | None = None


def evaluate_level(T: torch.Tensor, X_w: torch.Tensor, f_ref: torch.Tensor, fmap: torch.Tensor, stride: float,
                   intr: torch.Tensor, dist: torch.Tensor | None, loss: str = "cauchy", scale: float = 0.1,
                   weights: torch.Tensor | None = None, with_jac: bool = True) -> LevelCost:
    """Robust cost of pose ``T`` (4×4 float64 ``T_world_cam``) and, when ``with_jac``, its normal equations
    ``H = Σ w ρ' Jᵀ J``, ``g = Σ w ρ' Jᵀ r`` (for the minimisation of ½ Σ w ρ(‖r‖²))."""
    r, valid, gx, gy, P = _residual_parts(T, X_w, f_ref, fmap, stride, intr, dist, with_jac)
    s = (r * r).sum(-1)
    rho, drho = robust_loss(s, loss, scale)
    w = valid.to(r.dtype)
    if weights is not None:
        w = w * weights
    n = int(valid.sum())
    cost = float((w * rho).sum()) / max(n, 1)
    wd = w * drho
    wsq = float((wd * s).sum())
    if not with_jac:
        return LevelCost(cost, n, None, None, s, valid, wsq)
    # Per point, GᵀG = [[a, b], [b, d]] and Gᵀr = (ex, ey); H = Σ wρ' Pᵀ GᵀG P, g = Σ wρ' Pᵀ Gᵀr, with the
    # (N, 2, 2) and (N, 2) products written out (batched tiny matmuls are slow on CPU).
    a, b, d = (gx * gx).sum(-1), (gx * gy).sum(-1), (gy * gy).sum(-1)
    ex, ey = (gx * r).sum(-1), (gy * r).sum(-1)
    P = P.to(r.dtype)
    P0, P1 = P[:, 0], P[:, 1]                                     # (N, 6) each
    P0w, P1w = P0 * wd[:, None], P1 * wd[:, None]
    H = P0w.T @ (a[:, None] * P0 + b[:, None] * P1) + P1w.T @ (b[:, None] * P0 + d[:, None] * P1)
    g = P0w.T @ ex + P1w.T @ ey
    S = P0w * ex[:, None] + P1w * ey[:, None]                     # (N, 6) per-point gradients
    return LevelCost(cost, n, H.to(torch.float64), g.to(torch.float64), s, valid, wsq,
                     (S.T @ S).to(torch.float64))

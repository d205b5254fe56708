"""Batched torch camera projection with analytic Jacobians, for Gauss-Newton / LM over a camera pose.

Frames and conventions (docs/architecture.md): ``T_world_cam`` is camera-to-world; camera axes are OpenCV's;
pixels have their origin at the centre of the top-left pixel. The pose is perturbed on the right,
``T·Exp(ρ, φ)`` with ``R' = R·Exp(φ)``, ``t' = t + R·ρ`` (``geometry.pose.se3_exp_right``), so a camera-frame point
``X_c = Rᵀ(X_w − t)`` moves as ``X_c' = Exp(−φ)(X_c − ρ)``: ``∂X_c/∂ρ = −I``, ``∂X_c/∂φ = [X_c]_×``.
Distortion is plumb_bob (OpenCV k1 k2 p1 p2 k3).
"""
from __future__ import annotations

import torch

from .camera import Camera

__all__ = ["world_to_camera", "project", "project_with_jacobian", "pose_jacobian_right", "camera_params_torch"]


def camera_params_torch(camera: Camera, dtype=torch.float64, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(fx, fy, cx, cy)`` and ``(k1, k2, p1, p2, k3)`` of ``camera`` as tensors."""
    f = torch.tensor([camera.fx, camera.fy, camera.cx, camera.cy], dtype=dtype, device=device)
    d = torch.as_tensor(camera.dist, dtype=dtype, device=device)
    return f, d


def world_to_camera(T_world_cam: torch.Tensor, X_w: torch.Tensor) -> torch.Tensor:
    """(N, 3) world points -> (N, 3) camera-frame points ``Rᵀ(X_w − t)``."""
    R = T_world_cam[:3, :3]
    t = T_world_cam[:3, 3]
    return (X_w - t) @ R


def _distort(xn: torch.Tensor, dist: torch.Tensor, with_jac: bool):
    """Normalised (N, 2) -> distorted normalised (N, 2) and, optionally, its (N, 2, 2) Jacobian."""
    k1, k2, p1, p2, k3 = dist.unbind()
    x, y = xn[:, 0], xn[:, 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    out = torch.stack([xd, yd], -1)
    if not with_jac:
        return out, None
    drad_dr2 = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    # d r2 / dx = 2x, d r2 / dy = 2y
    dxd_dx = radial + x * drad_dr2 * 2 * x + 2 * p1 * y + p2 * 6 * x
    dxd_dy = x * drad_dr2 * 2 * y + 2 * p1 * x + p2 * 2 * y
    dyd_dx = y * drad_dr2 * 2 * x + p1 * 2 * x + 2 * p2 * y
    dyd_dy = radial + y * drad_dr2 * 2 * y + p1 * 6 * y + 2 * p2 * x
    J = torch.stack([torch.stack([dxd_dx, dxd_dy], -1), torch.stack([dyd_dx, dyd_dy], -1)], -2)
    return out, J


def project(X_c: torch.Tensor, intr: torch.Tensor, dist: torch.Tensor | None = None, eps: float = 1e-6):
    """(N, 3) camera-frame points -> (N, 2) pixels and (N,) ``valid`` (z > eps)."""
    uv, valid, _ = project_with_jacobian(X_c, intr, dist, eps, with_jac=False)
    return uv, valid


def project_with_jacobian(X_c: torch.Tensor, intr: torch.Tensor, dist: torch.Tensor | None = None,
                          eps: float = 1e-6, with_jac: bool = True):
    """Project (N, 3) camera-frame points with intrinsics ``intr = (fx, fy, cx, cy)`` and plumb_bob ``dist``.

    Returns ``uv`` (N, 2) pixels, ``valid`` (N,) bool (z > eps) and ``J`` (N, 2, 3) = ∂uv/∂X_c (None unless
    ``with_jac``). Invalid points get z clamped to ``eps`` so that the outputs stay finite.
    """
    z = X_c[:, 2]
    valid = z > eps
    zc = torch.where(valid, z, torch.full_like(z, eps))
    iz = 1.0 / zc
    xn = X_c[:, :2] * iz[:, None]
    distorted = dist is not None and bool(torch.any(dist != 0))
    if distorted:
        xd, Jd = _distort(xn, dist, with_jac)
    else:
        xd, Jd = xn, None
    f = intr[:2]
    uv = xd * f + intr[2:]
    if not with_jac:
        return uv, valid, None
    # ∂xn/∂X = [[1/z, 0, -x/z²], [0, 1/z, -y/z²]]
    zero = torch.zeros_like(iz)
    Jn = torch.stack([
        torch.stack([iz, zero, -xn[:, 0] * iz], -1),
        torch.stack([zero, iz, -xn[:, 1] * iz], -1),
    ], -2)
    if Jd is not None:
        Jn = Jd @ Jn
    J = Jn * f[None, :, None]
    return uv, valid, J


def pose_jacobian_right(X_c: torch.Tensor) -> torch.Tensor:
    """(N, 3, 6) ∂X_c/∂(ρ, φ) of a camera-frame point under the right perturbation ``T·Exp(ρ, φ)``:
    ``[−I | [X_c]_×]``."""
    N = X_c.shape[0]
    J = X_c.new_zeros(N, 3, 6)
    J[:, 0, 0] = -1
    J[:, 1, 1] = -1
    J[:, 2, 2] = -1
    x, y, z = X_c.unbind(-1)
    # [X]_× = [[0, -z, y], [z, 0, -x], [-y, x, 0]]
    J[:, 0, 4] = -z
    J[:, 0, 5] = y
    J[:, 1, 3] = z
    J[:, 1, 5] = -x
    J[:, 2, 3] = -y
    J[:, 2, 4] = x
    return J

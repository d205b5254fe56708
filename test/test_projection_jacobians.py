"""Analytic Jacobians of the featuremetric refinement against torch.autograd and finite differences:
projection (with plumb_bob distortion), the SE(3) right perturbation, bilinear feature sampling, the full residual
and the normal equations' gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reloc_ros.geometry.camera import Camera
from reloc_ros.geometry.pose import se3_exp_right
from reloc_ros.geometry.projection_torch import (camera_params_torch, pose_jacobian_right, project,
                                                  project_with_jacobian, world_to_camera)
from reloc_ros.refinement.featuremetric import evaluate_level, residuals, robust_loss, se3_exp_right_torch
from reloc_ros.refinement.features import sample_bilinear

DT = torch.float64


def _points(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 3, generator=g, dtype=DT) * torch.tensor([2.0, 1.5, 3.0], dtype=DT) \
        - torch.tensor([1.0, 0.75, -1.0], dtype=DT)
    return X


@pytest.mark.parametrize("dist", [None, [0.1, -0.05, 0.002, -0.001, 0.01]])
def test_projection_jacobian_matches_autograd_and_camera(dist):
    cam = Camera.from_pinhole(520.0, 510.0, 321.0, 239.0, 640, 480, dist=dist)
    intr, d = camera_params_torch(cam)
    X = _points()
    uv, valid, J = project_with_jacobian(X, intr, d if dist else None)
    assert valid.all()
    # Agrees with the numpy Camera (the project's reference projection).
    uv_np, _ = cam.project(X.numpy())
    np.testing.assert_allclose(uv.numpy(), uv_np, atol=1e-9)
    J_auto = torch.autograd.functional.jacobian(lambda x: project(x, intr, d if dist else None)[0], X)
    J_auto = torch.einsum("nanb->nab", J_auto)  # per-point blocks
    torch.testing.assert_close(J, J_auto, rtol=1e-9, atol=1e-9)


def test_points_behind_the_camera_are_invalid_but_finite():
    intr = torch.tensor([500.0, 500.0, 320.0, 240.0], dtype=DT)
    X = torch.tensor([[0.1, 0.2, -1.0], [0.0, 0.0, 0.0], [0.1, 0.1, 2.0]], dtype=DT)
    uv, valid, J = project_with_jacobian(X, intr)
    assert valid.tolist() == [False, False, True]
    assert torch.isfinite(uv).all() and torch.isfinite(J).all()


def test_pose_jacobian_matches_finite_differences_of_se3_right_update():
    rng = np.random.default_rng(1)
    T = se3_exp_right(np.eye(4), rng.normal(size=6) * 0.5)
    X_w = _points(20, seed=2)
    Tt = torch.as_tensor(T)
    J = pose_jacobian_right(world_to_camera(Tt, X_w))
    eps = 1e-6
    for k in range(6):
        xi = np.zeros(6)
        xi[k] = eps
        Xp = world_to_camera(torch.as_tensor(se3_exp_right(T, xi)), X_w)
        Xm = world_to_camera(torch.as_tensor(se3_exp_right(T, -xi)), X_w)
        torch.testing.assert_close(J[:, :, k], (Xp - Xm) / (2 * eps), rtol=1e-6, atol=1e-7)
    # the torch update is the numpy one
    xi = torch.tensor(rng.normal(size=6) * 0.3, dtype=DT)
    np.testing.assert_allclose(se3_exp_right_torch(Tt, xi).numpy(), se3_exp_right(T, xi.numpy()), atol=1e-12)


def test_bilinear_sampling_matches_grid_sample_and_its_gradient():
    g = torch.Generator().manual_seed(3)
    h, w, C = 9, 13, 5
    fmap = torch.randn(h, w, C, generator=g, dtype=DT)
    xy = torch.rand(40, 2, generator=g, dtype=DT) * torch.tensor([w - 1, h - 1], dtype=DT)
    f, G, valid = sample_bilinear(fmap, xy)
    assert valid.all()

    def ref(p):  # independent implementation: grid_sample with align_corners=True (integers at cell centres)
        grid = torch.stack([p[:, 0] / (w - 1) * 2 - 1, p[:, 1] / (h - 1) * 2 - 1], -1)
        return F.grid_sample(fmap.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                             align_corners=True)[0, :, 0].T

    torch.testing.assert_close(f, ref(xy), rtol=1e-10, atol=1e-10)
    G_auto = torch.einsum("ncnb->ncb", torch.autograd.functional.jacobian(ref, xy))
    torch.testing.assert_close(G, G_auto, rtol=1e-8, atol=1e-8)
    # and central finite differences (points are away from cell borders with high probability; use a small step)
    eps = 1e-7
    for k in range(2):
        d = torch.zeros(2, dtype=DT)
        d[k] = eps
        fd = (sample_bilinear(fmap, xy + d, False)[0] - sample_bilinear(fmap, xy - d, False)[0]) / (2 * eps)
        torch.testing.assert_close(G[..., k], fd, rtol=1e-5, atol=1e-5)
    # outside the map: flagged, finite
    f2, _, v2 = sample_bilinear(fmap, torch.tensor([[-0.5, 2.0], [3.0, h - 0.5], [w - 1.0, h - 1.0]], dtype=DT))
    assert v2.tolist() == [False, False, True] and torch.isfinite(f2).all()


@pytest.mark.parametrize("kind", ["cauchy", "huber", "l2"])
def test_robust_loss_derivative(kind):
    s = torch.linspace(0.001, 2.0, 50, dtype=DT, requires_grad=True)
    rho, drho = robust_loss(s, kind, 0.1)
    (grad,) = torch.autograd.grad(rho.sum(), s)
    torch.testing.assert_close(drho, grad, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="unknown robust loss"):
        robust_loss(s, "tukey")


def _smooth_problem(dist=None):
    """A smooth synthetic feature map (sums of sines) and points whose reference features come from a pose."""
    cam = Camera.from_pinhole(200.0, 200.0, 79.5, 59.5, 160, 120, dist=dist)
    intr, d = camera_params_torch(cam)
    stride = 4.0
    h, w, C = 30, 40, 6
    yy, xx = torch.meshgrid(torch.arange(h, dtype=DT), torch.arange(w, dtype=DT), indexing="ij")
    g = torch.Generator().manual_seed(4)
    a = torch.rand(C, 4, generator=g, dtype=DT)
    fmap = torch.stack([torch.sin(0.3 * (1 + a[c, 0]) * xx + 0.25 * (1 + a[c, 1]) * yy + 6 * a[c, 2])
                        + 0.5 * torch.cos(0.2 * (1 + a[c, 3]) * yy) for c in range(C)], -1)
    T = se3_exp_right(np.eye(4), np.array([0.02, -0.01, 0.03, 0.01, -0.02, 0.015]))
    Tt = torch.as_tensor(T)
    X_c = torch.rand(60, 3, generator=g, dtype=DT) * torch.tensor([0.8, 0.6, 1.0], dtype=DT) \
        + torch.tensor([-0.4, -0.3, 1.5], dtype=DT)
    X_w = X_c @ Tt[:3, :3].T + Tt[:3, 3]
    f_ref = torch.randn(60, C, generator=g, dtype=DT) * 0.1 + sample_bilinear(fmap, (project(X_c, intr, d)[0] + 0.5)
                                                                                / stride - 0.5, False)[0]
    return Tt, X_w, f_ref, fmap, stride, intr, (d if dist else None)


@pytest.mark.parametrize("dist", [None, [0.05, -0.02, 0.001, 0.0005, 0.0]])
def test_full_residual_jacobian_matches_finite_differences(dist):
    T, X_w, f_ref, fmap, stride, intr, d = _smooth_problem(dist)
    r, valid, G, P = residuals(T, X_w, f_ref, fmap, stride, intr, d)
    assert valid.all()
    J = G @ P  # (N, D, 6)
    eps = 1e-7
    for k in range(6):
        xi = torch.zeros(6, dtype=DT)
        xi[k] = eps
        rp = residuals(se3_exp_right_torch(T, xi), X_w, f_ref, fmap, stride, intr, d, False)[0]
        rm = residuals(se3_exp_right_torch(T, -xi), X_w, f_ref, fmap, stride, intr, d, False)[0]
        fd = (rp - rm) / (2 * eps)
        # bilinear derivatives jump at cell borders: compare on the points that stayed inside one cell
        close = ((J[..., k] - fd).abs().amax(-1) < 1e-4).double().mean()
        assert close > 0.9, f"direction {k}: only {close:.0%} of points match finite differences"


def test_gradient_of_normal_equations_is_gradient_of_half_robust_cost():
    T, X_w, f_ref, fmap, stride, intr, d = _smooth_problem()
    lc = evaluate_level(T, X_w, f_ref, fmap, stride, intr, d, "cauchy", 0.1)
    assert torch.allclose(lc.H, lc.H.T) and torch.linalg.eigvalsh(lc.H).min() > 0
    n = lc.num_valid
    eps = 1e-7
    fd = torch.zeros(6, dtype=DT)
    for k in range(6):
        xi = torch.zeros(6, dtype=DT)
        xi[k] = eps
        cp = evaluate_level(se3_exp_right_torch(T, xi), X_w, f_ref, fmap, stride, intr, d, with_jac=False).cost
        cm = evaluate_level(se3_exp_right_torch(T, -xi), X_w, f_ref, fmap, stride, intr, d, with_jac=False).cost
        fd[k] = 0.5 * n * (cp - cm) / (2 * eps)  # cost is the mean of ρ; g is the gradient of ½ Σ ρ
    cos = torch.dot(lc.g, fd) / (lc.g.norm() * fd.norm())
    assert cos > 0.99, f"analytic gradient direction differs from finite differences (cos {cos:.4f})"
    torch.testing.assert_close(lc.g, fd, rtol=0.05, atol=1e-3 * float(fd.abs().max()))

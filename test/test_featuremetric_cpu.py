"""The numba CPU kernel of the featuremetric cost (``featuremetric_cpu.py``) against the torch reference
implementation (``featuremetric.py``, itself checked against finite differences in test_projection_jacobians.py):
same cost, valid set, squared norms, H and g, with and without distortion, per-point weights, every robust loss,
points behind the camera and outside the map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reloc_ros.geometry.pose import se3_exp_right
from reloc_ros.refinement.featuremetric import evaluate_level
from reloc_ros.refinement.featuremetric_cpu import evaluate_level_cpu


def _problem(seed=0, N=300, D=16, h=30, w=40):
    rng = np.random.default_rng(seed)
    fmap = rng.standard_normal((h, w, D)).astype(np.float32)
    fmap /= np.linalg.norm(fmap, axis=-1, keepdims=True)
    # most points in view; some far outside the image, a few behind the camera
    X_c = np.c_[rng.uniform(-1.2, 1.2, N), rng.uniform(-0.9, 0.9, N), rng.uniform(1.0, 3.0, N)]
    X_c[:10, 2] = -X_c[:10, 2]
    T = se3_exp_right(np.eye(4), np.array([0.3, -0.1, 0.2, 0.05, -0.1, 0.02]))
    X_w = X_c @ T[:3, :3].T + T[:3, 3]
    f_ref = rng.standard_normal((N, D)).astype(np.float32) * 0.3
    intr = np.array([200.0, 210.0, 159.5, 119.5])  # 320x240 image, stride 8 -> 40x30 map
    return rng, T, X_w, f_ref, fmap, intr


@pytest.mark.parametrize("loss", ["cauchy", "huber", "l2"])
@pytest.mark.parametrize("distorted", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_cpu_kernel_matches_torch_reference(loss, distorted, weighted):
    rng, T, X_w, f_ref, fmap, intr = _problem()
    dist = np.array([0.05, -0.02, 0.001, 0.0005, 0.01]) if distorted else None
    wts = rng.uniform(0.1, 1.0, len(X_w)) if weighted else None
    T_eval = se3_exp_right(T, np.array([0.01, 0.02, -0.01, 0.01, 0.005, -0.01]))
    got = evaluate_level_cpu(T_eval, X_w, f_ref, fmap, 8.0, intr, dist, loss, 0.1, wts)
    t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    exp = evaluate_level(t(T_eval), t(X_w), t(f_ref), t(fmap), 8.0, t(intr), t(dist), loss, 0.1, t(wts))
    assert 10 < got.num_valid < len(X_w) - 10  # the problem has both valid and invalid points
    assert got.num_valid == exp.num_valid
    np.testing.assert_array_equal(got.valid, exp.valid.numpy())
    np.testing.assert_allclose(got.sq_norms[got.valid], exp.sq_norms.numpy()[got.valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.cost, exp.cost, rtol=1e-5)
    np.testing.assert_allclose(got.weighted_sq_sum, exp.weighted_sq_sum, rtol=1e-5)
    scale_H, scale_g = np.abs(exp.H.numpy()).max(), np.abs(exp.g.numpy()).max()
    np.testing.assert_allclose(got.H, exp.H.numpy(), rtol=0, atol=1e-5 * scale_H)
    np.testing.assert_allclose(got.g, exp.g.numpy(), rtol=0, atol=1e-5 * scale_g)
    np.testing.assert_array_equal(got.H, got.H.T)
    # the sandwich meat Σ sᵢsᵢᵀ (per-point gradients sᵢ sum to g): the same in both, symmetric, PSD
    scale_M = np.abs(exp.meat.numpy()).max()
    np.testing.assert_allclose(got.meat, exp.meat.numpy(), rtol=0, atol=1e-5 * scale_M)
    np.testing.assert_array_equal(got.meat, got.meat.T)
    assert np.linalg.eigvalsh(got.meat).min() > -1e-9 * scale_M
    assert np.trace(got.meat) >= got.g @ got.g / got.num_valid * (1 - 1e-6)   # Cauchy-Schwarz
    no_jac = evaluate_level_cpu(T_eval, X_w, f_ref, fmap, 8.0, intr, dist, loss, 0.1, wts, with_jac=False)
    assert no_jac.H is None and no_jac.g is None and no_jac.meat is None and no_jac.cost == got.cost


def test_cpu_kernel_rejects_unknown_loss():
    _, T, X_w, f_ref, fmap, intr = _problem()
    with pytest.raises(ValueError, match="unknown robust loss"):
        evaluate_level_cpu(T, X_w, f_ref, fmap, 8.0, intr, None, "tukey")


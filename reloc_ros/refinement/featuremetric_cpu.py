"""CPU kernel of the featuremetric cost and its normal equations: ``featuremetric.evaluate_level`` fused into one
loop over the points and compiled with numba.

The torch implementation (``featuremetric.py``) is the reference: it runs on any device and is what the Jacobian
tests check against finite differences. On a CPU its ~40 small tensor ops per evaluation cost ~0.6 ms of dispatch
for ~1000 points; this kernel does the same arithmetic (projection with plumb_bob distortion, bilinear sampling
with its derivative, robust loss, ``H = Σ wρ' Jᵀ J`` and ``g = Σ wρ' Jᵀ r`` through the 2×2 ``GᵀG`` blocks, and the sandwich meat ``Σ sᵢsᵢᵀ``) in
~0.1 ms (1024 points, 32 channels). ``test_featuremetric_cpu.py`` checks it against the torch implementation.

Conventions as in ``featuremetric.py``: ``T`` is ``T_world_cam`` (4×4, metres), OpenCV camera axes, the pose is
perturbed on the right ``T·Exp(ρ, φ)``; ``fmap`` is (h, w, D) channels-last with level coordinates
``(uv + 0.5) / stride − 0.5``. Geometry and accumulation are float64, features float32.
The first call compiles the kernel (a few seconds; cached on disk by numba afterwards): ``warm_up()`` does it early.
"""
from __future__ import annotations

import numba
import numpy as np

from .featuremetric import LevelCost

__all__ = ["LOSS_CODES", "evaluate_level_cpu", "warm_up"]

LOSS_CODES = {"cauchy": 0, "huber": 1, "l2": 2}
_EPS_Z = 1e-6


@numba.njit(cache=True, nogil=True, fastmath=True)
def _pose_jacobian_row(j0, j1, j2, xc, yc, zc, stride, out):  # pragma: no cover - compiled
    """One row of ∂xy/∂(ρ, φ) = Jp · [−I | [X_c]_×] / stride from the row ``(j0, j1, j2)`` of Jp = ∂uv/∂X_c:
    the row of Jp·[X_c]_× is ``Jp_row × X_c``."""
    out[0] = -j0 / stride
    out[1] = -j1 / stride
    out[2] = -j2 / stride
    out[3] = (j1 * zc - j2 * yc) / stride
    out[4] = (j2 * xc - j0 * zc) / stride
    out[5] = (j0 * yc - j1 * xc) / stride


@numba.njit(cache=True, nogil=True, fastmath=True)
def _kernel(T, X_w, f_ref, fmap, stride, intr, dist, distorted, loss, scale, weights, use_weights, with_jac,
            H, g, M, sq_norms, valid):  # pragma: no cover - compiled
    N, D = f_ref.shape
    h, w = fmap.shape[0], fmap.shape[1]
    fx, fy, cx, cy = intr[0], intr[1], intr[2], intr[3]
    k1, k2, p1, p2, k3 = dist[0], dist[1], dist[2], dist[3], dist[4]
    ddx = 1 if w > 1 else 0
    ddy = 1 if h > 1 else 0
    cost = 0.0
    wsq = 0.0
    n = 0
    for i in range(6):
        g[i] = 0.0
        for j in range(6):
            H[i, j] = 0.0
            M[i, j] = 0.0
    P0 = np.empty(6)
    P1 = np.empty(6)
    gi = np.empty(6)
    for i in range(N):
        # camera frame X_c = Rᵀ (X_w − t)
        dx = X_w[i, 0] - T[0, 3]
        dy = X_w[i, 1] - T[1, 3]
        dz = X_w[i, 2] - T[2, 3]
        xc = T[0, 0] * dx + T[1, 0] * dy + T[2, 0] * dz
        yc = T[0, 1] * dx + T[1, 1] * dy + T[2, 1] * dz
        zc = T[0, 2] * dx + T[1, 2] * dy + T[2, 2] * dz
        ok = zc > _EPS_Z
        iz = 1.0 / (zc if ok else _EPS_Z)
        xn = xc * iz
        yn = yc * iz
        r2 = 0.0
        radial = 1.0
        if distorted:
            r2 = xn * xn + yn * yn
            radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
            xd = xn * radial + 2.0 * p1 * xn * yn + p2 * (r2 + 2.0 * xn * xn)
            yd = yn * radial + p1 * (r2 + 2.0 * yn * yn) + 2.0 * p2 * xn * yn
        else:
            xd = xn
            yd = yn
        lx = (fx * xd + cx + 0.5) / stride - 0.5
        ly = (fy * yd + cy + 0.5) / stride - 0.5
        ok = ok and lx >= 0.0 and lx <= w - 1 and ly >= 0.0 and ly <= h - 1
        lxc = min(max(lx, 0.0), w - 1 - 1e-4)
        lyc = min(max(ly, 0.0), h - 1 - 1e-4)
        x0 = int(np.floor(lxc))
        y0 = int(np.floor(lyc))
        ax = lxc - x0
        ay = lyc - y0
        x1 = x0 + ddx
        y1 = y0 + ddy
        s = 0.0
        a = 0.0
        b = 0.0
        d = 0.0
        ex = 0.0
        ey = 0.0
        for c in range(D):
            f00 = fmap[y0, x0, c]
            f10 = fmap[y0, x1, c]
            f01 = fmap[y1, x0, c]
            f11 = fmap[y1, x1, c]
            top = f00 + ax * (f10 - f00)
            bot = f01 + ax * (f11 - f01)
            r = top + ay * (bot - top) - f_ref[i, c]
            gx = (f10 - f00) + ay * ((f11 - f01) - (f10 - f00))
            gy = bot - top
            s += r * r
            a += gx * gx
            b += gx * gy
            d += gy * gy
            ex += gx * r
            ey += gy * r
        sq_norms[i] = s
        valid[i] = ok
        if not ok:
            continue
        n += 1
        if loss == 0:
            x = s / scale
            rho = scale * np.log1p(x)
            drho = 1.0 / (1.0 + x)
        elif loss == 1:
            if s <= scale:
                rho = s
                drho = 1.0
            else:
                root = np.sqrt(max(s, 1e-12))
                rho = 2.0 * np.sqrt(scale) * root - scale
                drho = np.sqrt(scale) / root
        else:
            rho = s
            drho = 1.0
        wt = weights[i] if use_weights else 1.0
        cost += wt * rho
        wd = wt * drho
        wsq += wd * s
        if not with_jac or wd == 0.0:
            continue
        # ∂(xd, yd)/∂X_c = Jd · [[1/z, 0, −xn/z], [0, 1/z, −yn/z]]
        if distorted:
            drad = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)
            j00 = radial + 2.0 * xn * xn * drad + 2.0 * p1 * yn + 6.0 * p2 * xn
            j01 = 2.0 * xn * yn * drad + 2.0 * p1 * xn + 2.0 * p2 * yn
            j10 = 2.0 * xn * yn * drad + 2.0 * p1 * xn + 2.0 * p2 * yn
            j11 = radial + 2.0 * yn * yn * drad + 6.0 * p1 * yn + 2.0 * p2 * xn
        else:
            j00 = 1.0
            j01 = 0.0
            j10 = 0.0
            j11 = 1.0
        # rows of ∂uv/∂X_c (pixels per metre)
        u0 = fx * j00 * iz
        u1 = fx * j01 * iz
        u2 = -fx * (j00 * xn + j01 * yn) * iz
        v0 = fy * j10 * iz
        v1 = fy * j11 * iz
        v2 = -fy * (j10 * xn + j11 * yn) * iz
        _pose_jacobian_row(u0, u1, u2, xc, yc, zc, stride, P0)
        _pose_jacobian_row(v0, v1, v2, xc, yc, zc, stride, P1)
        for k in range(6):
            gi[k] = wd * (ex * P0[k] + ey * P1[k])
        for k in range(6):
            q0 = wd * (a * P0[k] + b * P1[k])
            q1 = wd * (b * P0[k] + d * P1[k])
            g[k] += gi[k]
            for m in range(k, 6):
                H[k, m] += q0 * P0[m] + q1 * P1[m]
                M[k, m] += gi[k] * gi[m]
    for k in range(6):
        for m in range(k):
            H[k, m] = H[m, k]
            M[k, m] = M[m, k]
    return cost, n, wsq


def evaluate_level_cpu(T: np.ndarray, X_w: np.ndarray, f_ref: np.ndarray, fmap: np.ndarray, stride: float,
                       intr: np.ndarray, dist: np.ndarray | None, loss: str = "cauchy", scale: float = 0.1,
                       weights: np.ndarray | None = None, with_jac: bool = True) -> LevelCost:
    """``featuremetric.evaluate_level`` on numpy arrays: ``T`` (4, 4) float64 ``T_world_cam``, ``X_w`` (N, 3)
    float64 world points (m), ``f_ref`` (N, D) and ``fmap`` (h, w, D) float32 (C-contiguous), ``intr`` (fx, fy,
    cx, cy), ``dist`` plumb_bob (k1, k2, p1, p2, k3) or None. Returns a ``LevelCost`` of numpy arrays (``H``, ``g``
    float64; None unless ``with_jac``)."""
    if loss not in LOSS_CODES:
        raise ValueError(f"unknown robust loss {loss!r} (cauchy, huber, l2)")
    N = X_w.shape[0]
    H = np.empty((6, 6))
    M = np.empty((6, 6))
    g = np.empty(6)
    sq = np.empty(N)
    valid = np.empty(N, dtype=np.bool_)
    d = np.zeros(5) if dist is None else np.asarray(dist, dtype=np.float64)
    wts = np.ones(1) if weights is None else np.asarray(weights, dtype=np.float64)
    cost, n, wsq = _kernel(np.ascontiguousarray(T, dtype=np.float64), X_w, f_ref, fmap, float(stride),
                           np.asarray(intr, dtype=np.float64), d, bool(np.any(d != 0)), LOSS_CODES[loss],
                           float(scale), wts, weights is not None, bool(with_jac), H, g, M, sq, valid)
    if not with_jac:
        H = g = M = None
    return LevelCost(cost / max(n, 1), int(n), H, g, sq, valid, wsq, M)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel for the argument types the refiner uses."""
    rng = np.random.default_rng(0)
    fmap = rng.standard_normal((4, 5, 3)).astype(np.float32)
    X = np.array([[0.0, 0.0, 2.0], [0.1, -0.1, 2.5]])
    for dist in (None, np.array([0.01, 0.0, 0.0, 0.0, 0.0])):
        for w in (None, np.ones(2)):
            evaluate_level_cpu(np.eye(4), X, rng.standard_normal((2, 3)).astype(np.float32), fmap, 8.0,
                               np.array([10.0, 10.0, 16.0, 12.0]), dist, "cauchy", 0.1, w, True)

"""Rigid transforms — the one place the pose conventions live.

Conventions (see docs/architecture.md):
- ``T_a_b`` is a 4×4 float64 matrix mapping points from frame ``b`` to frame ``a``: ``X_a = T_a_b @ X_b``.
  ``T_world_cam`` is camera-to-world; its translation is the camera centre in the world frame (metres).
- Camera axes are OpenCV's (x right, y down, z forward).
- Quaternions are ``(x, y, z, w)`` (ROS and scipy order).
- A 6×6 pose covariance is over ``(x, y, z, rx, ry, rz)``: position error in the world frame (m) and a small
  rotation about the world axes applied on the left (rad): ``T_true = [Exp(δθ)·R̂ | ĉ + δc]``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = [
    "make_T", "invert_T", "transform_points", "project_to_so3", "validate_rigid", "NonRigidTransformError",
    "quat_xyzw_from_R", "R_from_quat_xyzw", "T_from_pos_quat", "pos_quat_from_T", "so3_exp", "so3_log",
    "se3_exp_right", "perturb_T", "rotation_angle_deg", "view_distance", "covariance_right_to_world",
    "covariance_to_body_point", "so3_exp_torch", "skew_torch",
]


class NonRigidTransformError(ValueError):
    """A 4×4 matrix that is not a rigid transform (non-orthonormal rotation, bad last row, NaN)."""


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4×4 transform from a 3×3 rotation and a translation (3,)."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t).reshape(3)
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (works on (..., 4, 4))."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Ti = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    Ti[..., :3, :3] = Rt
    Ti[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    Ti[..., 3, 3] = 1.0
    return Ti


def transform_points(T: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Apply ``T_a_b`` to points ``X_b`` of shape (N, 3); returns ``X_a`` (N, 3)."""
    X = np.asarray(X)
    return X @ T[:3, :3].T + T[:3, 3]


def project_to_so3(R: np.ndarray) -> np.ndarray:
    """Nearest rotation matrix (Frobenius norm) to a 3×3 matrix, via SVD."""
    U, _, Vt = np.linalg.svd(R)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def validate_rigid(T: np.ndarray, name: str = "transform", tol: float = 1e-2) -> np.ndarray:
    """Check that ``T`` is a 4×4 rigid transform (to ``tol``) and return it with its rotation projected onto SO(3).

    Raises NonRigidTransformError naming ``name`` (e.g. the file it came from) and the problem.
    """
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise NonRigidTransformError(f"{name}: expected a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise NonRigidTransformError(f"{name}: matrix contains NaN or inf")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
        raise NonRigidTransformError(f"{name}: last row is {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    ortho = np.abs(R.T @ R - np.eye(3)).max()
    if ortho > tol:
        raise NonRigidTransformError(f"{name}: rotation block is not orthonormal (max |R^T R - I| = {ortho:.3g})")
    if np.linalg.det(R) < 0:
        raise NonRigidTransformError(f"{name}: rotation block is a reflection (det < 0)")
    out = T.copy()
    out[:3, :3] = project_to_so3(R)
    return out


def quat_xyzw_from_R(R: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(R).as_quat()


def R_from_quat_xyzw(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"invalid quaternion {q.tolist()} (zero norm or NaN)")
    return Rotation.from_quat(q / n).as_matrix()


def T_from_pos_quat(p: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    return make_T(R_from_quat_xyzw(q_xyzw), p)


def pos_quat_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return T[:3, 3].copy(), quat_xyzw_from_R(T[:3, :3])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (rad)."""
    return Rotation.from_rotvec(np.asarray(w, dtype=np.float64)).as_matrix()


def so3_log(R: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(R).as_rotvec()


def se3_exp_right(T: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """Right (camera-frame) update ``T·Exp(ρ, φ)`` used by the estimators: ``R' = R·Exp(φ)``, ``t' = t + R·ρ``.

    ``xi = (ρ (m), φ (rad))``. This decoupled parametrisation is what ``covariance_right_to_world`` assumes.
    """
    xi = np.asarray(xi, dtype=np.float64)
    out = T.copy()
    out[:3, :3] = T[:3, :3] @ so3_exp(xi[3:])
    out[:3, 3] = T[:3, 3] + T[:3, :3] @ xi[:3]
    return out


def perturb_T(T: np.ndarray, trans_m: float, rot_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Perturb a pose by exactly ``trans_m`` metres and ``rot_deg`` degrees in random directions (world frame)."""
    d = rng.normal(size=3)
    a = rng.normal(size=3)
    out = T.copy()
    out[:3, 3] += trans_m * d / np.linalg.norm(d)
    out[:3, :3] = so3_exp(np.deg2rad(rot_deg) * a / np.linalg.norm(a)) @ T[:3, :3]
    return out


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (deg) of ``R_a^T R_b``, well-conditioned near 0 (2·atan2(|q_xyz|, |q_w|), not arccos of the trace)."""
    q = Rotation.from_matrix(project_to_so3(R_a.T @ R_b)).as_quat()
    return float(np.degrees(2.0 * np.arctan2(np.linalg.norm(q[:3]), abs(q[3]))))


def view_distance(T_a: np.ndarray, T_b: np.ndarray, angle_weight_m: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """How far apart two sets of camera views are: ``(‖c_a − c_b‖ + angle_weight_m · angle, angle)``, both (A, B),
    for (A, 4, 4) and (B, 4, 4) ``T_world_cam`` (camera centres in m, the angle between the optical axes in rad;
    ``angle_weight_m`` is metres per radian). Used to pick nearby reference views."""
    c_a, c_b = T_a[:, :3, 3], T_b[:, :3, 3]
    angle = np.arccos(np.clip(T_a[:, :3, 2] @ T_b[:, :3, 2].T, -1.0, 1.0))
    return np.linalg.norm(c_a[:, None] - c_b[None], axis=-1) + angle_weight_m * angle, angle


def covariance_right_to_world(T_world_cam: np.ndarray, cov_right: np.ndarray) -> np.ndarray:
    """Convert a covariance of a right perturbation ``T·Exp(ρ, φ)`` (see ``se3_exp_right``) to the world
    convention ``(δc, δθ)``: ``δc = R ρ``, ``δθ = R φ`` (first order)."""
    R = T_world_cam[:3, :3]
    J = np.zeros((6, 6))
    J[:3, :3] = R
    J[3:, 3:] = R
    return J @ cov_right @ J.T


def covariance_to_body_point(T_world_cam: np.ndarray, cov_world: np.ndarray, T_cam_body: np.ndarray) -> np.ndarray:
    """Covariance (world convention) of ``T_world_body = T_world_cam @ T_cam_body`` given that of ``T_world_cam``.

    The body position is ``c + R·p`` with ``p`` the body origin in the camera frame; a left rotation δθ moves it by
    ``δθ × (R p)``, so ``δc_body = δc − [R p]_× δθ`` and the rotation error is unchanged.
    """
    Rp = T_world_cam[:3, :3] @ T_cam_body[:3, 3]
    S = np.array([[0, -Rp[2], Rp[1]], [Rp[2], 0, -Rp[0]], [-Rp[1], Rp[0], 0]])
    J = np.eye(6)
    J[:3, 3:] = -S
    return J @ cov_world @ J.T


def skew_torch(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([z, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], z, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def so3_exp_torch(w: torch.Tensor) -> torch.Tensor:
    """Batched Rodrigues formula, (..., 3) rad -> (..., 3, 3); differentiable, Taylor-safe at 0."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-8
    A = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    B = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    K = skew_torch(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + A * K + B * (K @ K)

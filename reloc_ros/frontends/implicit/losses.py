"""Training losses of the implicit-geometry front end (all supervised by ground-truth poses only).

- pose: ``‖t̂ − t‖`` (m, camera centre in the world) + ``angle(R̂ᵀR)`` (rad);
- consistency: mean over cells of ``‖T_world_cam^gt · P_cam_i − scene_i‖`` (m): the camera points, moved by the
  ground-truth pose, must coincide with the predicted global points (this is what makes the geometry "implicit");
- reprojection: mean over cells of the pixel distance between the cell centre and the projection of ``scene_i``
  with the ground-truth pose (clamped at ``max_px``; points behind the camera count as ``max_px``).
Default weights 1, 1, 0.001. ``position_only`` keeps only the translation term (frames with positions only).
"""
from __future__ import annotations

import torch

__all__ = ["rotation_angle", "pose_loss", "consistency_loss", "reprojection_loss", "total_loss"]


def rotation_angle(R_a: torch.Tensor, R_b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Angle (rad) between rotations, (B, 3, 3) each → (B,). Uses ``‖R_a − R_b‖_F = 2√2·sin(θ/2)``, which has a
    finite gradient near 0 (unlike arccos of the trace)."""
    d = ((R_a - R_b) ** 2).sum((-1, -2))
    s = torch.sqrt(d + eps) / (2 * 2 ** 0.5)
    return 2 * torch.asin(s.clamp(max=1.0 - 1e-7))


def pose_loss(R: torch.Tensor, t: torch.Tensor, T_gt: torch.Tensor, position_only: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, translation error m (B,), rotation error rad (B,)) of ``T_world_cam`` estimates vs ``T_gt``."""
    t_err = torch.sqrt(((t - T_gt[:, :3, 3]) ** 2).sum(-1) + 1e-12)
    r_err = rotation_angle(R, T_gt[:, :3, :3])
    loss = t_err.mean() if position_only else (t_err + r_err).mean()
    return loss, t_err.detach(), r_err.detach()


def consistency_loss(cam_pts: torch.Tensor, scene: torch.Tensor, T_gt: torch.Tensor) -> torch.Tensor:
    """cam_pts, scene (B, N, 3) m; T_gt (B, 4, 4) camera-to-world."""
    moved = cam_pts @ T_gt[:, :3, :3].transpose(1, 2) + T_gt[:, None, :3, 3]
    return torch.sqrt(((moved - scene) ** 2).sum(-1) + 1e-12).mean()


def reprojection_loss(scene: torch.Tensor, T_gt: torch.Tensor, K: torch.Tensor, uv: torch.Tensor,
                      max_px: float = 100.0, min_depth: float = 0.1) -> torch.Tensor:
    """scene (B, N, 3) world m; T_gt (B, 4, 4); K (B, 3, 3) of the network input; uv (N, 2) or (B, N, 2) cell
    centres (pixels) → mean clamped reprojection error (px)."""
    R = T_gt[:, :3, :3]
    c = T_gt[:, :3, 3]
    X = (scene - c[:, None]) @ R  # world → camera: Rᵀ(X − c), row-vector form
    z = X[..., 2]
    front = z > min_depth
    zs = torch.where(front, z, torch.ones_like(z))
    u = K[:, None, 0, 0] * X[..., 0] / zs + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * X[..., 1] / zs + K[:, None, 1, 2]
    uv = uv.expand(scene.shape[0], -1, -1) if uv.dim() == 2 else uv
    err = torch.sqrt((u - uv[..., 0]) ** 2 + (v - uv[..., 1]) ** 2 + 1e-12)
    err = torch.where(front, err.clamp(max=max_px), torch.full_like(err, max_px))
    return err.mean()


def total_loss(out: dict, cam_pts: torch.Tensor, R: torch.Tensor, t: torch.Tensor, T_gt: torch.Tensor,
               K: torch.Tensor, uv: torch.Tensor, w_pose: float = 1.0, w_consistency: float = 1.0,
               w_reprojection: float = 1e-3, position_only: bool = False) -> tuple[torch.Tensor, dict]:
    """Weighted sum and its parts (floats, for logging: pose, consistency, reprojection, t_err_m, r_err_deg)."""
    lp, t_err, r_err = pose_loss(R, t, T_gt, position_only)
    parts = {"pose": lp, "t_err_m": t_err.mean(), "r_err_deg": torch.rad2deg(r_err).mean()}
    loss = w_pose * lp
    if position_only:
        parts.update(consistency=torch.zeros(()), reprojection=torch.zeros(()))
    else:
        lc = consistency_loss(cam_pts.double(), out["scene"].double(), T_gt)
        lr = reprojection_loss(out["scene"].double(), T_gt, K, uv)
        loss = loss + w_consistency * lc + w_reprojection * lr
        parts.update(consistency=lc, reprojection=lr)
    return loss, {k: float(v.detach()) for k, v in parts.items()}

"""ACE mapping: fill a buffer of frozen-encoder features from augmented posed images, then train the scene head with
ACE's reprojection loss under a time budget, and write the map file.

Loss (ACE, Brachmann et al. 2023): a prediction ``X`` for a cell at pixel ``u`` of a view with ``K``,
``T_cam_world`` is *valid* if its camera depth is in ``[depth_min, depth_max]`` and its reprojection error
``e = ‖π(K·X_cam) − u‖₁ < repro_hard_clamp_px``; valid cells cost ``τ·tanh(e/τ)`` with the soft clamp ``τ`` annealed
from ``clamp_max_px`` to ``clamp_min_px``; invalid cells cost ``‖X_cam − depth_target·K⁻¹[u, 1]‖₁``.

Schedules run on *progress* ``p`` ∈ [0, 1]. Without ``max_iterations`` it is the elapsed share of the training
time budget. With ``max_iterations`` it is ``iteration / max_iterations``, so that a run with the same seed, buffer
and thread count trains the same head, unless the run falls behind the time budget (after ``WARMUP_ITERATIONS``
its elapsed share exceeds the iteration share), when the larger of the two takes over (see ``schedule_progress``).
The learning rate is a one-cycle (linear warm-up ``lr_min → lr_max`` until
``lr_warmup``, cosine to ~0 at p = 1) and the clamp a cosine from ``clamp_max_px`` to ``clamp_min_px`` reached at
``clamp_anneal_end`` (< 1: the findings note showed that annealing the clamp with the LR leaves it high until the LR
is nearly zero).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...map_file import atomic_torch_save, save_map
from ...precision import autocast_context
from .buffer import TrainingBuffer, fill_buffer
from .encoders import make_encoder
from .head import SceneCoordinateHead

__all__ = ["DEFAULT_CONF", "train", "ace_loss", "schedule", "schedule_progress"]

DEFAULT_CONF: dict = {
    # encoder
    "encoder": "xfeat",            # "xfeat" | "ace:PATH" (official ace_encoder_pretrained.pt) | "disk" (unavailable)
    "standardize_features": True,  # per-channel mean/std of the buffer, stored in the map and applied at inference
    "image_height": 480,           # images are resized to this many rows (mapping and localization)
    # head
    "head_width": 256,             # hidden width of the MLP (ACE: 512; 256 is ~4x cheaper per step on CPU)
    "head_blocks": 1,              # residual blocks after the first one (ACE default: 1)
    "homogeneous": True,           # homogeneous output (ACE)
    # buffer and augmentation
    "buffer_size": 1_000_000,      # features in the training buffer (ACE: 8M on a GPU)
    "cells_per_view": 2000,        # random cells sampled per augmented view (~1 view per image and 500 images)
    "aug_rotation_deg": 15.0,      # in-plane rotation ±deg about the principal point
    "aug_scale": [2 / 3, 3 / 2],   # log-uniform image scale range
    "aug_brightness": 0.1,         # ± relative brightness jitter
    "aug_contrast": 0.1,           # ± relative contrast jitter
    # optimisation
    "batch_size": 5120,
    "lr_min": 5e-4,                # one-cycle start / warm-up base learning rate
    "lr_max": 5e-3,                # one-cycle peak learning rate
    "lr_warmup": 0.25,             # progress at the LR peak
    "weight_decay": 0.01,          # AdamW
    "clamp_max_px": 50.0,          # soft clamp at the start (px)
    "clamp_min_px": 1.0,           # soft clamp at the end (px)
    "clamp_anneal_end": 0.75,      # progress at which the clamp reaches clamp_min_px
    "depth_min": 0.1,              # m, predictions closer than this are invalid
    "depth_max": 1000.0,           # m, predictions farther than this are invalid
    "depth_target": 10.0,          # m, invalid predictions are pulled to this depth on the pixel ray
    "repro_hard_clamp_px": 1000.0, # reprojection error above which a prediction is invalid
    # budget and runtime
    "minutes": 10.0,               # total wall-clock budget (buffer + training); training stops when it is spent
    "buffer_max_fraction": 0.4,    # the buffer stops filling (smaller than buffer_size) once this share of the
                                   # budget is spent, so that a short or loaded run still leaves time to train
    "max_iterations": None,        # optional cap on training iterations (None: time budget only)
    "precision": "bf16",           # "fp32" | "bf16" (CPU/CUDA autocast) | "fp16" (CUDA autocast + grad scaler)
    "device": "cpu",
    "num_threads": None,           # torch CPU threads during mapping (None: leave torch's setting; restored after)
    "seed": 0,
    "checkpoint_every_s": 60.0,    # atomic checkpoint <out>.ckpt.pt (+ buffer <out>.buffer.pt) for resuming
    "resume": True,                # resume from <out>.ckpt.pt if present (same conf)
    "keep_checkpoint": False,      # keep checkpoint and buffer files after the map is written
    "progress": True,              # tqdm bars
}


WARMUP_ITERATIONS = 50   # iterations before a time-bound run may take the schedule over from max_iterations


def schedule_progress(iteration: int, max_iterations: int | None, elapsed_s: float, budget_s: float) -> float:
    """Schedule progress in [0, 1] (see the module docstring). A pause of the process early in a run (a loaded
    machine) does not change the schedule of an iteration-capped run, which is what keeps it reproducible."""
    p_time = elapsed_s / budget_s
    if not max_iterations:
        return p_time
    p_it = iteration / int(max_iterations)
    if p_time >= 1.0 or (iteration >= WARMUP_ITERATIONS and p_time > p_it):
        return max(p_time, p_it)
    return p_it


def schedule(p: float, conf: dict) -> tuple[float, float]:
    """(learning rate, soft clamp px) at progress p ∈ [0, 1]."""
    p = min(max(p, 0.0), 1.0)
    w = conf["lr_warmup"]
    if p < w:
        lr = conf["lr_min"] + (conf["lr_max"] - conf["lr_min"]) * p / max(w, 1e-9)
    else:
        lr = conf["lr_max"] * 0.5 * (1 + math.cos(math.pi * (p - w) / max(1 - w, 1e-9)))
    q = min(p / max(conf["clamp_anneal_end"], 1e-9), 1.0)
    clamp = conf["clamp_min_px"] + (conf["clamp_max_px"] - conf["clamp_min_px"]) * 0.5 * (1 + math.cos(math.pi * q))
    return lr, clamp


def ace_loss(X_world: torch.Tensor, uv: torch.Tensor, K: torch.Tensor, T_cam_world: torch.Tensor, clamp: float,
             conf: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """ACE reprojection loss (see module docstring); X_world (N, 3), uv (N, 2), K (N, 3, 3), T_cam_world (N, 4, 4).
    Returns (mean loss, valid mask)."""
    Xc = torch.einsum("nij,nj->ni", T_cam_world[:, :3, :3], X_world) + T_cam_world[:, :3, 3]
    z = Xc[:, 2]
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    zc = z.clamp(min=conf["depth_min"])
    px = torch.stack([fx * Xc[:, 0] / zc + cx, fy * Xc[:, 1] / zc + cy], -1)
    err = (px - uv).abs().sum(-1)
    valid = (z >= conf["depth_min"]) & (z <= conf["depth_max"]) & (err < conf["repro_hard_clamp_px"])
    loss_valid = clamp * torch.tanh(err[valid] / clamp)
    d = conf["depth_target"]
    target = torch.stack([(uv[:, 0] - cx) / fx * d, (uv[:, 1] - cy) / fy * d, torch.full_like(z, d)], -1)
    loss_invalid = (Xc[~valid] - target[~valid]).abs().sum(-1)
    return (loss_valid.sum() + loss_invalid.sum()) / len(X_world), valid


def train(conf: dict, dataset, out_path: str | os.PathLike, buffer: TrainingBuffer | None = None) -> Path:
    """Map a scene: buffer → head training (time budget ``conf['minutes']``) → ``save_map(out_path)``.

    dataset: Sequence of posed ``Frame``s with ``.poses()``. Resumes from ``<out>.ckpt.pt`` when ``conf['resume']``
    and the checkpoint's conf matches. ``buffer``: a ready ``TrainingBuffer`` (e.g. from ``fill_buffer``, for
    comparing head options on identical data); its features must come from ``conf['encoder']``. Returns the map path.
    """
    unknown = sorted(set(conf) - set(DEFAULT_CONF))
    if unknown:
        raise ValueError(f"unknown ACE training option(s) {unknown}; known: {sorted(DEFAULT_CONF)}")
    conf = {**DEFAULT_CONF, **conf}
    t_start = time.perf_counter()
    out_path = Path(out_path)
    device = str(conf["device"])
    threads_before = torch.get_num_threads()
    if conf["num_threads"]:
        torch.set_num_threads(int(conf["num_threads"]))
    try:
        return _train(conf, dataset, out_path, t_start, device, buffer)
    finally:
        torch.set_num_threads(threads_before)


def _train(conf: dict, dataset, out_path: Path, t_start: float, device: str, buffer) -> Path:
    budget_s = float(conf["minutes"]) * 60.0
    ckpt_path = out_path.with_name(out_path.name + ".ckpt.pt")
    buf_path = out_path.with_name(out_path.name + ".buffer.pt")
    torch.manual_seed(int(conf["seed"]))
    rng = np.random.default_rng(int(conf["seed"]))
    progress = bool(conf["progress"])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")

    encoder = make_encoder(conf["encoder"], device)
    sig = {k: conf[k] for k in ("encoder", "image_height", "buffer_size", "cells_per_view", "aug_rotation_deg",
                                "aug_scale", "aug_brightness", "aug_contrast", "seed")}
    ckpt = None
    if conf["resume"] and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("buffer_sig") != sig or ckpt.get("head_config") is None:
            print(f"[ace] checkpoint {ckpt_path} was made with other options; starting over", flush=True)
            ckpt = None
    if buffer is None and ckpt is not None and buf_path.is_file():
        bd = torch.load(buf_path, map_location="cpu", weights_only=True)
        if bd.get("sig") == repr(sig):
            buffer = TrainingBuffer(**{k: bd[k] for k in ("features", "uv", "view", "K", "T_cam_world")})
    if buffer is None:
        deadline = t_start + float(conf["buffer_max_fraction"]) * budget_s
        buffer = fill_buffer(dataset, encoder, conf, rng, device, progress, deadline=deadline)
        if conf["checkpoint_every_s"] and (conf["keep_checkpoint"] or budget_s > 120):
            atomic_torch_save({**buffer.state_dict(), "sig": repr(sig)}, buf_path)
    t_buffer = time.perf_counter() - t_start

    feats = buffer.features
    if conf["standardize_features"]:
        f32 = feats[torch.randperm(len(feats))[:200_000]].float()
        f_mean, f_std = f32.mean(0), f32.std(0).clamp_min(1e-6)
    else:
        f_mean, f_std = torch.zeros(feats.shape[1]), torch.ones(feats.shape[1])
    poses = dataset.poses()
    ok = np.all(np.isfinite(poses.reshape(len(poses), -1)), 1)
    scene_mean = torch.as_tensor(poses[ok][:, :3, 3].mean(0), dtype=torch.float32)

    head = SceneCoordinateHead(feats.shape[1], conf["head_width"], conf["head_blocks"], conf["homogeneous"],
                               scene_mean).to(device)
    try:
        opt = torch.optim.AdamW(head.parameters(), lr=conf["lr_min"], weight_decay=conf["weight_decay"], fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(head.parameters(), lr=conf["lr_min"], weight_decay=conf["weight_decay"])
    it, train_s = 0, 0.0
    if ckpt is not None:
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["opt"])
        it, train_s = int(ckpt["iteration"]), float(ckpt["train_seconds"])
        f_mean, f_std = ckpt["feature_mean"], ckpt["feature_std"]
        print(f"[ace] resumed from {ckpt_path} at iteration {it} ({train_s:.0f} s trained)", flush=True)
        # the budget covers the remaining training time as planned by the first run
        budget_s = t_buffer + float(ckpt["train_budget_s"])
    train_budget = max(budget_s - t_buffer, 1.0) if ckpt is None else float(ckpt["train_budget_s"])
    max_it = conf["max_iterations"]
    scaler = torch.amp.GradScaler("cuda") if conf["precision"] == "fp16" else None

    feats_d = feats.to(device)
    uv_d, view_d = buffer.uv.to(device), buffer.view.to(device)
    K_d, T_d = buffer.K.to(device), buffer.T_cam_world.to(device)
    mean_d, std_d = f_mean.to(device), f_std.to(device)
    n = len(feats)
    bs = min(int(conf["batch_size"]), n)
    gen = torch.Generator(device="cpu").manual_seed(int(conf["seed"]) + it)
    perm, pos = torch.randperm(n, generator=gen), 0
    head.train()
    bar = tqdm(desc="ACE head", unit="it", disable=not progress, mininterval=2.0)
    last_ckpt = time.perf_counter()
    t0 = time.perf_counter() - train_s
    stats = {"loss": float("nan"), "valid": float("nan")}

    while True:
        p = schedule_progress(it, max_it, time.perf_counter() - t0, train_budget)
        if p >= 1.0:
            break
        lr, clamp = schedule(p, conf)
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs].to(device)
        pos += bs
        x = (feats_d[idx].float() - mean_d) / std_d
        v = view_d[idx]
        with autocast_context(device, conf["precision"]):
            X = head(x)
        loss, valid = ace_loss(X.float(), uv_d[idx], K_d[v], T_d[v], clamp, conf)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        it += 1
        if it % 50 == 0:
            stats = {"loss": float(loss.detach()), "valid": float(valid.float().mean())}
            bar.set_postfix(loss=f"{stats['loss']:.2f}", valid=f"{stats['valid']:.2f}", clamp=f"{clamp:.1f}",
                            lr=f"{lr:.1e}")
        bar.update(1)
        now = time.perf_counter()
        if conf["checkpoint_every_s"] and now - last_ckpt > float(conf["checkpoint_every_s"]):
            atomic_torch_save({"head": head.state_dict(), "opt": opt.state_dict(), "iteration": it,
                                "train_seconds": now - t0, "train_budget_s": train_budget, "buffer_sig": sig,
                                "head_config": head.config(), "feature_mean": f_mean, "feature_std": f_std}, ckpt_path)
            last_ckpt = now
    bar.close()
    train_s = time.perf_counter() - t0

    tensors = {f"head.{k}": v.detach().to(torch.float16) if v.is_floating_point() and k != "mean" else v.detach()
               for k, v in head.state_dict().items()}
    tensors["feature_mean"] = f_mean.float()
    tensors["feature_std"] = f_std.float()
    metadata = {
        "front_end": "ace",
        "encoder": encoder.spec if encoder.name == "ace" else encoder.name,
        "encoder_dim": int(feats.shape[1]),
        "standardize_features": bool(conf["standardize_features"]),
        "image_height": int(conf["image_height"]),
        "head": head.config(),
        "scene_mean": scene_mean.tolist(),
        "training": {"iterations": it, "train_seconds": round(train_s, 1), "buffer_seconds": round(t_buffer, 1),
                     "buffer_size": n, "n_frames": int(ok.sum()), "final_loss": stats["loss"],
                     "final_valid_fraction": stats["valid"], "precision": conf["precision"], "device": device,
                     "conf": {k: v for k, v in conf.items() if k not in ("device", "progress")}},
    }
    path = save_map(out_path, tensors, metadata)
    if not conf["keep_checkpoint"]:
        for p_ in (ckpt_path, buf_path):
            if p_.exists():
                p_.unlink()
    if progress:
        print(f"[ace] {it} iterations in {train_s:.0f} s (+{t_buffer:.0f} s buffer) -> {path}", flush=True)
    return path

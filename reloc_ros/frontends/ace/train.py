"""ACE mapping: fill a buffer of frozen-encoder features from augmented posed images, then train the scene head with
ACE's reprojection loss for a scheduled number of iterations (``minutes`` only as a cap), and write the map file.

Loss (ACE, Brachmann et al. 2023): a prediction ``X`` for a cell at pixel ``u`` of a view with ``K``,
``T_cam_world`` is *valid* if its camera depth is in ``[depth_min, depth_max]`` and its reprojection error
``e = ‖π(K·X_cam) − u‖₁ < repro_hard_clamp_px``; valid cells cost ``τ·tanh(e/τ)`` with the soft clamp ``τ`` annealed
from ``clamp_max_px`` to ``clamp_min_px``; invalid cells cost ``‖X_cam − depth_target·K⁻¹[u, 1]‖₁``.

Budget (``training_budget.py``): the schedule is ``iterations`` long. After ``TIMING_ITERATIONS`` iterations the run
knows its speed, prints the ETA, and when the ``minutes`` cap (buffer included) buys fewer iterations it shortens
the schedule to those (one warning line with the expected accuracy cost), so that it still warms up and anneals.
Schedules run on *progress* ``p = iteration / planned`` ∈ [0, 1]: a run with the same seed, buffer, thread count
and plan trains the same head. Only if the run later falls behind its cap (a machine that became loaded) does the clock take
over (``training_budget.schedule_progress``). ``minutes: None`` trains the full schedule without a cap.
The learning rate is a one-cycle (linear warm-up ``lr_min → lr_max`` until
``lr_warmup``, cosine to ~0 at p = 1) and the clamp a cosine from ``clamp_max_px`` to ``clamp_min_px`` reached at
``clamp_anneal_end`` (< 1: the findings note showed that annealing the clamp with the LR leaves it high until the LR
is nearly zero).
Precision (``precision.py``): "auto" measures the head's training step in fp32 and bf16 on this machine and takes
bf16 only where it is faster (AMX CPUs, GPUs); AVX2-only CPUs train in fp32 (bf16 is ~35x slower there).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...conf import merge_conf
from ...device import torch_threads
from ...map_file import atomic_torch_save, save_map
from ...precision import autocast_context, resolve_precision
from ...training_budget import PlanTimer, check_minutes, expected_recall, plan_message, schedule_progress
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
    "iterations": 9600,            # the schedule: training iterations (7-Scenes redkitchen: 9573 it -> 92 % within
                                   # 10 cm/5°, 4586 -> 86.5 %; ACE_RECALL_BY_ITERATIONS)
    "minutes": 10.0,               # wall-clock cap (buffer + training; None: no cap). When it buys fewer
                                   # iterations than the schedule, the schedule is shortened to them (with a warning)
    "buffer_max_fraction": 0.4,    # the buffer stops filling (smaller than buffer_size) once this share of the
                                   # cap is spent, so that a short or loaded run still leaves time to train
    "precision": "auto",           # "auto" (measured: bf16 only where faster, precision.py) | "fp32" | "bf16" |
                                   # "fp16" (CUDA autocast + grad scaler)
    "device": "cpu",
    "num_threads": None,           # torch CPU threads during mapping (None: leave torch's setting; restored after)
    "seed": 0,
    "checkpoint_every_s": 60.0,    # atomic checkpoint <out>.ckpt.pt (+ buffer <out>.buffer.pt) for resuming
    "resume": True,                # resume from <out>.ckpt.pt if present (same conf)
    "keep_checkpoint": False,      # keep checkpoint and buffer files after the map is written
    "progress": True,              # tqdm bars
}


TIMING_ITERATIONS = 12   # iterations timed (after 2 warm-up ones) before the plan is made
# Measured accuracy of the default head and batch on 7-Scenes redkitchen query.txt (dSLAM poses, share within 10 cm / 5°, %)
# after so many iterations (benchmarks/RESULTS_ace.md): the warning's expected cost of a shortened schedule.
ACE_RECALL_BY_ITERATIONS = [(1299, 64.5), (4586, 86.5), (9573, 92.0)]


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
    """Map a scene: buffer → head training (``conf['iterations']``, capped by ``conf['minutes']``) →
    ``save_map(out_path)``.

    dataset: Sequence of posed ``Frame``s with ``.poses()``. Resumes from ``<out>.ckpt.pt`` when ``conf['resume']``
    and the checkpoint's conf matches. ``buffer``: a ready ``TrainingBuffer`` (e.g. from ``fill_buffer``, for
    comparing head options on identical data); its features must come from ``conf['encoder']``. Returns the map path.
    """
    conf = merge_conf(DEFAULT_CONF, conf, "ACE training")
    conf["minutes"] = check_minutes(conf["minutes"], "ACE training option 'minutes'")
    if not isinstance(conf["iterations"], int) or isinstance(conf["iterations"], bool) or conf["iterations"] < 1:
        raise ValueError(f"ACE training option 'iterations' must be an integer >= 1, got {conf['iterations']!r}")
    t_start = time.perf_counter()
    out_path = Path(out_path)
    device = str(conf["device"])
    with torch_threads(conf["num_threads"]):
        return _train(conf, dataset, out_path, t_start, device, buffer)


def _buffer_signature(conf: dict) -> dict:
    return {k: conf[k] for k in ("encoder", "image_height", "buffer_size", "cells_per_view", "aug_rotation_deg",
                                 "aug_scale", "aug_brightness", "aug_contrast", "seed")}


def _load_checkpoint(conf: dict, ckpt_path: Path) -> dict | None:
    if not (conf["resume"] and ckpt_path.is_file()):
        return None
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if ckpt.get("buffer_sig") != _buffer_signature(conf) or ckpt.get("head_config") is None \
            or "iterations_planned" not in ckpt:
        print(f"[ace] checkpoint {ckpt_path} was made with other options; starting over", flush=True)
        return None
    return ckpt


def _get_buffer(conf, dataset, encoder, rng, device, buf_path: Path, ckpt, deadline: float | None, budget_s):
    """The training buffer: given, from the checkpoint's buffer file, or filled now (and saved for resuming)."""
    sig = _buffer_signature(conf)
    if ckpt is not None and buf_path.is_file():
        bd = torch.load(buf_path, map_location="cpu", weights_only=True)
        if bd.get("sig") == repr(sig):
            return TrainingBuffer(**{k: bd[k] for k in ("features", "uv", "view", "K", "T_cam_world")})
    buffer = fill_buffer(dataset, encoder, conf, rng, device, bool(conf["progress"]), deadline=deadline)
    if conf["checkpoint_every_s"] and (conf["keep_checkpoint"] or budget_s is None or budget_s > 120):
        atomic_torch_save({**buffer.state_dict(), "sig": repr(sig)}, buf_path)
    return buffer


def _feature_stats(feats: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not standardize:
        return torch.zeros(feats.shape[1]), torch.ones(feats.shape[1])
    f32 = feats[torch.randperm(len(feats))[:200_000]].float()
    return f32.mean(0), f32.std(0).clamp_min(1e-6)


def _make_optimizer(head: torch.nn.Module, conf: dict) -> torch.optim.Optimizer:
    try:
        return torch.optim.AdamW(head.parameters(), lr=conf["lr_min"], weight_decay=conf["weight_decay"], fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(head.parameters(), lr=conf["lr_min"], weight_decay=conf["weight_decay"])


def _resolve_training_precision(conf: dict, head: SceneCoordinateHead, device: str):
    """The head training step's ``PrecisionChoice``, probed on a scratch copy of the head at the real batch."""
    bs = int(conf["batch_size"])

    def step():
        scratch = SceneCoordinateHead(head.in_dim, head.width, head.num_blocks, head.homogeneous).to(device)
        scratch(torch.randn(bs, head.in_dim, device=device)).float().square().mean().backward()

    return resolve_precision(conf["precision"], device, "ace_train", step, f"w{head.width}_nb{head.num_blocks}_b{bs}")


class _Trainer:
    """The head's optimisation loop state: one ``step(p)`` per iteration on the next batch of the buffer."""

    def __init__(self, head, opt, buffer: TrainingBuffer, f_mean, f_std, conf: dict, device: str, precision: str,
                 it: int):
        self.head, self.opt, self.conf, self.device, self.precision = head, opt, conf, device, precision
        self.feats, self.uv = buffer.features.to(device), buffer.uv.to(device)
        self.view, self.K, self.T = buffer.view.to(device), buffer.K.to(device), buffer.T_cam_world.to(device)
        self.mean, self.std = f_mean.to(device), f_std.to(device)
        self.n = len(self.feats)
        self.bs = min(int(conf["batch_size"]), self.n)
        self.gen = torch.Generator(device="cpu").manual_seed(int(conf["seed"]) + it)
        self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def step(self, p: float) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """One iteration at schedule progress ``p``; returns (loss, valid mask, lr, clamp)."""
        lr, clamp = schedule(p, self.conf)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.pos + self.bs > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.bs].to(self.device)
        self.pos += self.bs
        x = (self.feats[idx].float() - self.mean) / self.std
        v = self.view[idx]
        with autocast_context(self.device, self.precision):
            X = self.head(x)
        loss, valid = ace_loss(X.float(), self.uv[idx], self.K[v], self.T[v], clamp, self.conf)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return loss, valid, lr, clamp


def _plan_message(plan, precision: str, conf: dict) -> str:
    """``training_budget.plan_message`` with the measured accuracy cost of a shortened schedule (quoted for the
    default head and batch only: the points were measured with them)."""
    measured_head = all(conf[k] == DEFAULT_CONF[k] for k in ("batch_size", "head_width", "head_blocks"))
    full = expected_recall(plan.scheduled, ACE_RECALL_BY_ITERATIONS) if measured_head else None
    got = expected_recall(plan.planned, ACE_RECALL_BY_ITERATIONS) if measured_head else None
    # a difference: the curve was measured on all mapping frames, and reloc-map's calibration hold-out lowers both
    # ends on some pose sets (benchmarks/RESULTS.md, thirteenth session)
    cost = (f"expect ~{full - got:.0f} points fewer 7-Scenes queries within 10 cm/5° than the full schedule gives"
            if got is not None and full is not None else "expect lower accuracy")
    return plan_message(plan, "[ace]", "iteration", precision, conf["minutes"], cost)


def _train(conf: dict, dataset, out_path: Path, t_start: float, device: str, buffer) -> Path:
    budget_s = None if conf["minutes"] is None else conf["minutes"] * 60.0
    ckpt_path = out_path.with_name(out_path.name + ".ckpt.pt")
    buf_path = out_path.with_name(out_path.name + ".buffer.pt")
    torch.manual_seed(int(conf["seed"]))
    rng = np.random.default_rng(int(conf["seed"]))
    progress = bool(conf["progress"])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")

    encoder = make_encoder(conf["encoder"], device)
    ckpt = _load_checkpoint(conf, ckpt_path)
    if buffer is None:
        deadline = None if budget_s is None else t_start + float(conf["buffer_max_fraction"]) * budget_s
        buffer = _get_buffer(conf, dataset, encoder, rng, device, buf_path, ckpt, deadline, budget_s)
    t_buffer = time.perf_counter() - t_start

    feats = buffer.features
    f_mean, f_std = _feature_stats(feats, conf["standardize_features"])
    poses = dataset.poses()
    ok = np.all(np.isfinite(poses.reshape(len(poses), -1)), 1)
    scene_mean = torch.as_tensor(poses[ok][:, :3, 3].mean(0), dtype=torch.float32)
    head = SceneCoordinateHead(feats.shape[1], conf["head_width"], conf["head_blocks"], conf["homogeneous"],
                               scene_mean).to(device)
    opt = _make_optimizer(head, conf)
    choice = _resolve_training_precision(conf, head, device)
    if progress:
        print(f"[ace] precision {choice.describe()}", flush=True)
    it, train_s, planned = 0, 0.0, None
    if ckpt is not None:
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["opt"])
        it, train_s = int(ckpt["iteration"]), float(ckpt["train_seconds"])
        # the same schedule continues its plan; a longer (or shorter) one is planned again from here
        planned = ckpt["iterations_planned"] if ckpt["iterations_scheduled"] == conf["iterations"] else None
        f_mean, f_std = ckpt["feature_mean"], ckpt["feature_std"]
        print(f"[ace] resumed from {ckpt_path} at iteration {it} of {planned or conf['iterations']} "
              f"({train_s:.0f} s trained)", flush=True)
    # the cap on training time: what the budget leaves after the buffer (a resumed run keeps its first plan)
    planned_budget = None if ckpt is None else ckpt.get("train_budget_s")
    train_budget = None if budget_s is None else (
        float(planned_budget) if planned_budget is not None else max(budget_s - t_buffer, 1.0))
    trainer = _Trainer(head, opt, buffer, f_mean, f_std, conf, device, choice.precision, it)
    loop = _run_loop(trainer, conf, it, train_s, planned, train_budget, ckpt_path, f_mean, f_std, choice)
    return _write_ace_map(out_path, conf, encoder, head, feats, f_mean, f_std, scene_mean, ok, t_buffer, loop,
                          choice, (ckpt_path, buf_path))


def _run_loop(trainer: _Trainer, conf: dict, it: int, train_s: float, planned: int | None, train_budget,
              ckpt_path: Path, f_mean, f_std, choice) -> dict:
    """Train until the plan is done (first timing ``TIMING_ITERATIONS`` to make it); returns the loop's record."""
    progress = bool(conf["progress"])
    scheduled = int(conf["iterations"])
    bar = tqdm(desc="ACE head", unit="it", total=planned or scheduled, initial=it, disable=not progress,
               mininterval=2.0)
    t0 = time.perf_counter() - train_s
    timer = PlanTimer(scheduled, it, TIMING_ITERATIONS) if planned is None else None
    state = {"it": it, "planned": planned, "stats": {"loss": float("nan"), "valid": float("nan")}}

    def checkpoint(now: float) -> None:
        atomic_torch_save({"head": trainer.head.state_dict(), "opt": trainer.opt.state_dict(),
                           "iteration": state["it"], "train_seconds": now - t0, "train_budget_s": train_budget,
                           "buffer_sig": _buffer_signature(conf), "head_config": trainer.head.config(),
                           "iterations_scheduled": scheduled, "iterations_planned": state["planned"],
                           "feature_mean": f_mean, "feature_std": f_std}, ckpt_path)
    try:
        _iterate(trainer, conf, state, scheduled, train_budget, t0, timer, bar, choice, checkpoint)
    except KeyboardInterrupt:
        bar.close()
        if state["planned"] is not None and conf["checkpoint_every_s"]:
            checkpoint(time.perf_counter())
            tqdm.write(f"[ace] interrupted at iteration {state['it']}; checkpoint saved to {ckpt_path} (rerun the "
                       "same command to resume)")
        raise
    bar.close()
    it, planned = state["it"], state["planned"]
    return {"iterations": it, "iterations_planned": int(planned or it), "iterations_scheduled": scheduled,
            "train_seconds": time.perf_counter() - t0, "stats": state["stats"],
            "plan": None if timer is None or timer.plan is None else timer.plan.as_dict(), "n_buffer": trainer.n}


def _iterate(trainer, conf, state: dict, scheduled, train_budget, t0, timer, bar, choice, checkpoint) -> None:
    """The training iterations, planning after the timed start and checkpointing every ``checkpoint_every_s``;
    ``state`` ("it", "planned", "stats") is kept current so that an interrupt checkpoints the last iteration."""
    last_ckpt = time.perf_counter()
    while True:
        plan = timer and timer.tick(state["it"],
                                    None if train_budget is None else train_budget - (time.perf_counter() - t0))
        if plan:
            state["planned"] = plan.planned
            bar.total = plan.planned
            tqdm.write(_plan_message(plan, choice.precision, conf))
        p = schedule_progress(state["it"], state["planned"] or scheduled, time.perf_counter() - t0, train_budget)
        if p >= 1.0:
            return
        loss, valid, lr, clamp = trainer.step(p)
        state["it"] += 1
        if state["it"] % 50 == 0:
            state["stats"] = {"loss": float(loss.detach()), "valid": float(valid.float().mean())}
            bar.set_postfix(loss=f"{state['stats']['loss']:.2f}", valid=f"{state['stats']['valid']:.2f}",
                            clamp=f"{clamp:.1f}", lr=f"{lr:.1e}")
        bar.update(1)
        now = time.perf_counter()
        if conf["checkpoint_every_s"] and state["planned"] is not None \
                and now - last_ckpt > float(conf["checkpoint_every_s"]):
            checkpoint(now)
            last_ckpt = now


def _write_ace_map(out_path: Path, conf, encoder, head, feats, f_mean, f_std, scene_mean, ok, t_buffer, loop: dict,
                   choice, temp_files) -> Path:
    tensors = {f"head.{k}": v.detach().to(torch.float16) if v.is_floating_point() and k != "mean" else v.detach()
               for k, v in head.state_dict().items()}
    tensors["feature_mean"] = f_mean.float()
    tensors["feature_std"] = f_std.float()
    train_s, stats = loop["train_seconds"], loop["stats"]
    metadata = {
        "front_end": "ace",
        "encoder": encoder.spec if encoder.name == "ace" else encoder.name,
        "encoder_dim": int(feats.shape[1]),
        "standardize_features": bool(conf["standardize_features"]),
        "image_height": int(conf["image_height"]),
        "head": head.config(),
        "scene_mean": scene_mean.tolist(),
        "training": {"iterations": loop["iterations"], "iterations_planned": loop["iterations_planned"],
                     "iterations_scheduled": loop["iterations_scheduled"], "plan": loop["plan"],
                     "train_seconds": round(train_s, 1), "buffer_seconds": round(t_buffer, 1),
                     "buffer_size": loop["n_buffer"], "n_frames": int(ok.sum()),
                     "final_loss": stats["loss"], "final_valid_fraction": stats["valid"],
                     "precision": choice.precision,
                     "precision_choice": choice.as_dict(), "device": str(conf["device"]),
                     "conf": {k: v for k, v in conf.items() if k not in ("device", "progress")}},
    }
    path = save_map(out_path, tensors, metadata)
    if not conf["keep_checkpoint"]:
        for p_ in temp_files:
            if p_.exists():
                p_.unlink()
    if conf["progress"]:
        print(f"[ace] {loop['iterations']} iterations in {train_s:.0f} s (+{t_buffer:.0f} s buffer) -> {path}",
              flush=True)
    return path

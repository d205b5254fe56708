"""Mapping for the implicit front end: train the pose network on posed images and write a map file.

``train(conf, dataset, out_path) -> Path``. Images are undistorted, resized once to ``image_width × image_height``
and kept in memory (uint8); each step draws a batch, applies colour jitter and an in-plane rotation (pose label
rotated consistently, see ``augment.py``), runs the network, solves the pose with weighted Kabsch and minimises
pose + consistency + reprojection losses (``losses.py``). Learning rate: linear warm-up then cosine decay over the
run's progress ``step / planned``: the schedule is ``epochs`` passes; after a few timed steps the run prints its ETA
and, when the ``minutes`` cap buys fewer steps, shortens the schedule to them with a warning
(``training_budget.py``); the clock takes over only if the run later falls behind its cap.

Checkpoints (model, optimiser, step, elapsed time; batches are re-drawn from (seed, step)) go to
``<out_path>.ckpt.pt`` atomically every ``checkpoint_every_s`` seconds and on interruption; a later call with
the same ``out_path`` resumes from it (``resume=True``). The final checkpoint is kept: calling again with a larger ``epochs``/``minutes`` continues
the same run; ``resume=False`` (or deleting the checkpoint) starts afresh. Optional ``snapshot_minutes`` writes
intermediate maps ``<stem>.<m>min.safetensors`` (used by the benchmark to report accuracy vs mapping time).

CPU defaults (MobileNetV3-Small os8, 256×192 input, batch 8, fp32, lr 2e-3) were chosen by 4-minute pilots on
7-Scenes redkitchen (benchmarks/RESULTS_implicit.md): at a fixed time budget the small backbone at 256×192 beat
MobileNetV3-L os8 at 320×240 and L os16 (more epochs, larger receptive field relative to the image). Measured time:
0.17–0.42 s per step of 8 images ⇒ 11–26 s per 500-image epoch on 1 thread of a shared, oversubscribed
2-core machine (depends on the load).
On such a machine use ``threads=1``: 2 threads were 10–100× slower under oversubscription.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ... import map_file
from ...conf import merge_conf
from ...device import torch_threads
from ...geometry.camera import Camera
from ...images import check_rgb_image
from ...precision import autocast_context, resolve_precision
from ...training_budget import PlanTimer, check_minutes, plan_message, schedule_progress
from .augment import colour_jitter, rotate_in_plane
from .losses import total_loss
from .mobilenetv3 import load_backbone_weights
from .model import ImplicitPoseNet, camera_rays, normalize_images

__all__ = ["DEFAULT_CONF", "CONF_HELP", "IMPLICIT_MAP_VERSION", "train", "preload", "model_conf_keys",
           "map_metadata"]

IMPLICIT_MAP_VERSION = 1

# Every option of the implicit mapping, with its default. CONF_HELP documents each key (units in brackets).
DEFAULT_CONF: dict = {
    "arch": "small",
    "output_stride": 8,
    "dilated": False,
    "head_channels": 128,
    "head_layers": 2,
    "image_width": 256,
    "image_height": 192,
    "d_min": 0.1,
    "d_max": 10.0,
    "depth_init": 2.0,
    "backbone_weights": None,
    "init_map": None,
    "batch_size": 8,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "warmup_frac": 0.03,
    "grad_clip": 5.0,
    "minutes": 20.0,
    "epochs": 110,
    "w_pose": 1.0,
    "w_consistency": 1.0,
    "w_reprojection": 1e-3,
    "position_only": False,
    "aug_rotation_deg": 30.0,
    "aug_rotation_prob": 0.5,
    "aug_colour": 0.3,
    "precision": "auto",
    "channels_last": True,
    "device": "cpu",
    "threads": None,
    "checkpoint_every_s": 120.0,
    "snapshot_minutes": [],
    "resume": True,
    "seed": 0,
    "progress": True,
}

CONF_HELP: dict = {
    "arch": "MobileNetV3 variant: 'large' or 'small'",
    "output_stride": "backbone output stride: 4, 8 or 16 (one prediction per stride×stride pixels)",
    "dilated": "with output_stride 16: keep the stride-32 stage, dilated (slower, larger receptive field)",
    "head_channels": "width of the prediction head",
    "head_layers": "number of 1×1 layers in the head after its 3×3 conv",
    "image_width": "network input width [px]; images are resized (K scaled) to it; multiple of output_stride",
    "image_height": "network input height [px]; multiple of output_stride (192 measured best for CPU mapping budgets)",
    "d_min": "smallest predictable depth [m]",
    "d_max": "largest predictable depth [m]",
    "depth_init": "initial depth of every cell [m] (sets the depth bias)",
    "backbone_weights": "optional state-dict file (.safetensors or torch.save) to initialise the backbone",
    "init_map": "optional implicit map to start from (fine-tuning; its model options and scene normalisation win)",
    "batch_size": "images per step",
    "lr": "peak AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup_frac": "fraction of the run with linear LR warm-up",
    "grad_clip": "gradient-norm clip (0 disables)",
    "minutes": "wall-clock cap [min] (None: no cap); when it buys fewer steps than the epochs' schedule, the "
               "schedule is shortened to them (with a warning)",
    "epochs": "the schedule: passes over the mapping images (110: the 20-min, 6980-step map of RESULTS_implicit.md; "
              "None: as many as the minutes cap buys)",
    "w_pose": "weight of the pose loss (translation m + rotation rad)",
    "w_consistency": "weight of the consistency loss [m]",
    "w_reprojection": "weight of the reprojection loss [px]",
    "position_only": "train on translation error only (frames whose rotation is unknown)",
    "aug_rotation_deg": "max in-plane rotation augmentation [deg] (0 disables)",
    "aug_rotation_prob": "probability that an image is rotated",
    "aug_colour": "colour-jitter strength (brightness/contrast/saturation factor range ±value; 0 disables)",
    "precision": "network autocast: auto (bf16 only where measured faster, precision.py) | fp32 | bf16 | fp16 "
                 "(CUDA); geometry stays float32/64",
    "channels_last": "channels_last memory format (about 2× faster on CPU)",
    "device": "'cpu' or 'cuda'",
    "threads": "torch intra-op threads (None: leave torch's setting)",
    "checkpoint_every_s": "seconds between checkpoints",
    "snapshot_minutes": "also write maps <stem>.<m>min.safetensors at these elapsed minutes",
    "resume": "resume from <out_path>.ckpt.pt when it exists",
    "seed": "random seed",
    "progress": "show a tqdm progress bar",
}

_MODEL_KEYS = ("arch", "output_stride", "dilated", "head_channels", "head_layers", "image_width", "image_height",
               "d_min", "d_max")


def model_conf_keys() -> tuple[str, ...]:
    """The options that define the network and its input (stored in the map metadata)."""
    return _MODEL_KEYS


def preload(dataset, width: int, height: int, progress: bool = True):
    """Load every posed frame once: undistort, resize to ``width × height``.

    Returns (images (F, H, W, 3) uint8, K (F, 3, 3) of the resized images, T_world_cam (F, 4, 4), names)."""
    images, Ks, poses, names = [], [], [], []
    skipped = 0
    for i in tqdm(range(len(dataset)), desc="implicit: loading images", disable=not progress, leave=False):
        fr = dataset[i]
        T = fr.T_world_cam
        if T is None or not np.all(np.isfinite(T)):
            skipped += 1
            continue
        img, cam = fr.image, fr.camera
        check_rgb_image(img, cam, f"frame {fr.name}")
        if cam.is_distorted:
            img = cam.undistort_image(img)
            cam = Camera(cam.width, cam.height, cam.K)
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        images.append(img)
        Ks.append(cam.resized(width, height).K)
        poses.append(np.asarray(T, dtype=np.float64))
        names.append(fr.name)
    if not images:
        raise ValueError(f"no frame with a ground-truth pose among {len(dataset)} frames: nothing to map")
    if skipped:
        tqdm.write(f"implicit: skipped {skipped} frames without a pose")
    return np.stack(images), np.stack(Ks), np.stack(poses), names


def scene_normalisation(poses: np.ndarray, depth_init: float) -> tuple[np.ndarray, float]:
    """Scene centre (3,) = mean of the points ``depth_init`` m in front of each camera; extent (m) = their RMS
    distance to the centre, at least 1 m."""
    look = poses[:, :3, 3] + depth_init * poses[:, :3, 2]
    centre = look.mean(0)
    extent = float(max(np.sqrt(((look - centre) ** 2).sum(-1).mean()), 1.0))
    return centre, extent


def map_metadata(conf: dict, K: np.ndarray, centre, extent: float, stats: dict) -> dict:
    """Map metadata: front end, versions, model/input options, intrinsics assumption, scene normalisation."""
    return {
        "front_end": "implicit",
        "implicit_version": IMPLICIT_MAP_VERSION,
        "model": {k: conf[k] for k in _MODEL_KEYS},
        "intrinsics": {"K": np.asarray(K).tolist(), "width": conf["image_width"], "height": conf["image_height"],
                       "note": "K of the network input during mapping (undistorted); queries are undistorted and "
                               "resized to this size, with their own K scaled accordingly"},
        "depth_range_m": [conf["d_min"], conf["d_max"]],
        "scene_centre": [float(c) for c in centre],
        "scene_extent_m": float(extent),
        "training": stats,
    }


TIMING_STEPS = 5   # steps timed (after 2 warm-up ones) before the run is planned


def _resolve_training_precision(conf: dict, model: ImplicitPoseNet, device: torch.device):
    """The training step's ``PrecisionChoice``, probed on a copy of the network (its batch-norm statistics stay
    untouched) at the real batch and input size."""
    import copy

    scratch = copy.deepcopy(model).train()
    x = torch.zeros(int(conf["batch_size"]), 3, int(conf["image_height"]), int(conf["image_width"]), device=device)
    if conf["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        out = scratch(x)
        sum(v.float().mean() for v in out.values() if torch.is_tensor(v) and v.requires_grad).backward()

    key = "_".join(str(conf[k]) for k in ("arch", "output_stride", "batch_size", "image_width", "image_height"))
    return resolve_precision(conf["precision"], device, "implicit_train", step, key)


def _lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return max(progress / max(warmup, 1e-9), 0.01)
    p = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))


def train(conf: dict, dataset, out_path) -> Path:
    """Train an implicit map on ``dataset`` (posed frames) and write it to ``out_path``; returns the path.

    ``conf`` overrides ``DEFAULT_CONF`` (unknown keys raise ValueError). Stops after ``epochs`` or ``minutes``,
    whichever comes first (at least one must be set). ``threads`` applies during the call only.
    """
    conf = merge_conf(DEFAULT_CONF, conf, "implicit mapping")
    with torch_threads(conf["threads"]):
        return _train(conf, dataset, out_path)


def _check_bounds(conf: dict) -> None:
    """The training must be bounded by ``minutes`` and/or ``epochs`` (ValueError naming the option)."""
    conf["minutes"] = check_minutes(conf["minutes"], "implicit mapping option 'minutes'")
    if conf["minutes"] is None and conf["epochs"] is None:
        raise ValueError("set 'minutes' or 'epochs' (or both) to bound the training")
    if conf["epochs"] is not None and not (isinstance(conf["epochs"], (int, float)) and 0 < conf["epochs"] < 1e6):
        raise ValueError(f"implicit mapping option 'epochs' must be a number > 0 (or None), got {conf['epochs']!r}")


def _build_model(conf: dict, centre, extent: float, init_tensors, device) -> ImplicitPoseNet:
    """The network (seeded), from ``init_map`` tensors or the pretrained backbone, on ``device``."""
    torch.manual_seed(conf["seed"])
    model = ImplicitPoseNet(conf["arch"], conf["output_stride"], conf["dilated"], conf["head_channels"],
                            conf["head_layers"], centre, extent, conf["d_min"], conf["d_max"], conf["depth_init"])
    if init_tensors is not None:
        model.load_state_dict(init_tensors)
    elif conf["backbone_weights"]:
        load_backbone_weights(model.backbone, conf["backbone_weights"])
    model.to(device)
    if conf["channels_last"]:
        model.to(memory_format=torch.channels_last)
    return model


def _cell_rays(Ks: np.ndarray, W: int, H: int, os_: int, device):
    """Cell centres (h·w, 2) for the reprojection loss, the cells' rays (one set when every frame shares K, else
    per frame) and whether K is shared."""
    uv = torch.as_tensor(Camera(W, H, Ks[0]).pixel_grid(os_), dtype=torch.float64, device=device)
    same_K = bool(np.allclose(Ks, Ks[0]))
    if same_K:
        rays = torch.as_tensor(camera_rays(Camera(W, H, Ks[0]), os_), dtype=torch.float32, device=device)
    else:
        rays = torch.as_tensor(np.stack([camera_rays(Camera(W, H, K), os_) for K in Ks]), dtype=torch.float32,
                               device=device)
    assert uv.shape[0] == (H // os_) * (W // os_)
    return uv, rays, same_K


def _optimizer(model, conf: dict) -> torch.optim.Optimizer:
    """AdamW with weight decay on the weights, none on biases and norms."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": conf["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}], lr=conf["lr"])


def _augmented_batch(idx, images, poses, Ks, conf: dict, rng, device):
    """The frames ``idx`` with colour jitter and in-plane rotation (poses rotated with them): network input and
    ``T_world_cam`` (B, 4, 4) float64."""
    batch, T_b = [], []
    for i in idx:
        img, T = images[i], poses[i]
        if conf["aug_colour"] > 0:
            img = colour_jitter(img, rng, conf["aug_colour"], conf["aug_colour"], conf["aug_colour"])
        if conf["aug_rotation_deg"] > 0 and rng.random() < conf["aug_rotation_prob"]:
            theta = np.deg2rad(rng.uniform(-conf["aug_rotation_deg"], conf["aug_rotation_deg"]))
            img, T = rotate_in_plane(img, Ks[i], T, theta)
        batch.append(img)
        T_b.append(T)
    return (normalize_images(np.stack(batch), device, conf["channels_last"]),
            torch.as_tensor(np.stack(T_b), dtype=torch.float64, device=device))


def _train(conf: dict, dataset, out_path) -> Path:
    """``train`` with ``conf`` already merged over ``DEFAULT_CONF``."""
    _check_bounds(conf)
    out_path = Path(out_path)
    ckpt_path = out_path.with_name(out_path.name + ".ckpt.pt")
    device = torch.device(conf["device"])

    init_tensors = None
    if conf["init_map"]:
        init_tensors, init_meta = map_file.load_map(conf["init_map"], "cpu")
        if init_meta.get("front_end") != "implicit":
            raise map_file.MapFileError(f"{conf['init_map']}: init_map is a {init_meta.get('front_end')!r} map, "
                                        "expected an implicit map")
        conf.update(init_meta["model"])
    os_ = conf["output_stride"]
    W, H = int(conf["image_width"]), int(conf["image_height"])
    if W % os_ or H % os_:
        raise ValueError(f"image size {W}x{H} must be a multiple of output_stride {os_}")

    images, Ks, poses, names = preload(dataset, W, H, conf["progress"])
    F_ = len(images)
    if init_tensors is not None:
        centre, extent = np.asarray(init_meta["scene_centre"]), float(init_meta["scene_extent_m"])
    else:
        centre, extent = scene_normalisation(poses, conf["depth_init"])

    model = _build_model(conf, centre, extent, init_tensors, device)
    uv, rays_all, same_K = _cell_rays(Ks, W, H, os_, device)
    optim = _optimizer(model, conf)
    steps_per_epoch = max(1, math.ceil(F_ / conf["batch_size"]))
    total_steps = None if conf["epochs"] is None else max(int(conf["epochs"] * steps_per_epoch), 1)
    choice = _resolve_training_precision(conf, model, device)
    if conf["progress"]:
        tqdm.write(f"implicit: precision {choice.describe()}")
    budget_s = None if conf["minutes"] is None else 60.0 * float(conf["minutes"])

    step, elapsed_prev, resumed_from = 0, 0.0, None
    rng = np.random.default_rng(conf["seed"])
    snapshots_done: list[float] = []
    model_conf = {k: conf[k] for k in _MODEL_KEYS}
    if conf["resume"] and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if json.loads(ck["model_conf"]) != model_conf:
            raise ValueError(f"{ckpt_path}: checkpoint was made with model options {ck['model_conf']}, not "
                             f"{model_conf}; delete it or use another out_path")
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optim"])
        step, elapsed_prev = int(ck["step"]), float(ck["elapsed_s"])
        resumed_from = step
        rng = np.random.default_rng([conf["seed"], step])
        snapshots_done = json.loads(ck["snapshots_done"])
        tqdm.write(f"implicit: resumed from {ckpt_path} at step {step} ({elapsed_prev / 60:.1f} min)")

    def checkpoint():
        map_file.atomic_torch_save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step,
                                    "elapsed_s": elapsed(), "model_conf": json.dumps(model_conf),
                                    "snapshots_done": json.dumps(snapshots_done)}, ckpt_path)

    t_start = time.monotonic()

    def elapsed() -> float:
        return elapsed_prev + time.monotonic() - t_start

    timer = PlanTimer(total_steps, step, TIMING_STEPS) if total_steps is not None else None

    def planned_steps() -> int | None:
        return timer.plan.planned if timer is not None and timer.plan is not None else total_steps

    def progress() -> float:
        """``step / planned`` (the clock only as a cap, training_budget.schedule_progress); without ``epochs`` the
        elapsed share of the cap."""
        if total_steps is None:
            return elapsed() / budget_s
        return schedule_progress(step, planned_steps(), elapsed(), budget_s)

    def maybe_plan() -> None:
        """After TIMING_STEPS timed steps: plan the run within the cap and print the ETA (or the warning)."""
        tp = timer and timer.tick(step, None if budget_s is None else budget_s - elapsed())
        if tp:
            bar.total = tp.planned
            tqdm.write(plan_message(tp, "implicit:", "step", choice.precision, conf["minutes"],
                                    cap_option="minutes="))

    def write_map(path: Path, last: dict) -> Path:
        stats = {"steps": step, "epochs": step / steps_per_epoch, "minutes": elapsed() / 60, "n_frames": F_,
                 "iterations": step, "iterations_scheduled": total_steps,
                 "iterations_planned": planned_steps(),
                 "plan": None if timer is None or timer.plan is None else timer.plan.as_dict(),
                 "precision": choice.precision, "precision_choice": choice.as_dict(),
                 "resumed_from_step": resumed_from, "last_losses": last,
                 "conf": {k: v for k, v in conf.items() if k != "snapshot_minutes"}}
        meta = map_metadata(conf, Ks[0], centre, extent, stats)
        was_training = model.training
        model.eval()
        tensors = {k: v.detach().float() if v.is_floating_point() else v.detach()
                   for k, v in model.state_dict().items()}
        model.train(was_training)
        return map_file.save_map(path, tensors, meta)

    bar_total = round(budget_s) if budget_s and total_steps is None else total_steps
    bar = tqdm(total=bar_total, initial=min(round(elapsed_prev) if total_steps is None else step, bar_total or 0),
               desc="implicit mapping", unit="s" if total_steps is None else "step", disable=not conf["progress"],
               dynamic_ncols=True)
    model.train()
    perm = rng.permutation(F_)
    cursor = 0
    last: dict = {}
    ema = None
    last_ckpt = time.monotonic()
    try:
        while True:
            maybe_plan()
            if progress() >= 1.0:
                break
            if cursor + conf["batch_size"] > F_:
                perm, cursor = rng.permutation(F_), 0
            idx = perm[cursor:cursor + conf["batch_size"]]
            cursor += conf["batch_size"]
            x, T_gt = _augmented_batch(idx, images, poses, Ks, conf, rng, device)
            K_b = torch.as_tensor(Ks[idx], dtype=torch.float64, device=device)
            rays = rays_all if same_K else rays_all[torch.as_tensor(idx, device=device)]
            lr = conf["lr"] * _lr_factor(progress(), conf["warmup_frac"])
            for g in optim.param_groups:
                g["lr"] = lr
            with autocast_context(device.type, choice.precision):
                out = model(x)
            cam_pts = ImplicitPoseNet.camera_points(out["depth"], rays)
            R, t = ImplicitPoseNet.solve(cam_pts, out["scene"], out["weight"], check=False)
            loss, parts = total_loss(out, cam_pts, R, t, T_gt, K_b, uv, conf["w_pose"], conf["w_consistency"],
                                     conf["w_reprojection"], conf["position_only"])
            optim.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                if conf["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), conf["grad_clip"])
                optim.step()
            step += 1
            last = {**parts, "loss": float(loss.detach()), "lr": lr}
            ema = last if ema is None else {k: 0.95 * ema[k] + 0.05 * v for k, v in last.items()}
            if total_steps is None:
                bar.n = min(round(elapsed()), bar_total)
                bar.refresh()
            else:
                bar.update(1)
            if step % 5 == 0:
                bar.set_postfix(loss=f"{ema['loss']:.3f}", t=f"{ema['t_err_m']:.2f}m", r=f"{ema['r_err_deg']:.1f}",
                                step=step, ep=f"{step / steps_per_epoch:.1f}")
            for m in conf["snapshot_minutes"]:
                if m not in snapshots_done and elapsed() >= 60 * m:
                    write_map(out_path.with_name(f"{out_path.name.split('.')[0]}.{m:g}min.safetensors"), last)
                    snapshots_done.append(m)
            if time.monotonic() - last_ckpt > conf["checkpoint_every_s"]:
                checkpoint()
                last_ckpt = time.monotonic()
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        tqdm.write(f"implicit: interrupted at step {step}; checkpoint saved to {ckpt_path} (rerun to resume)")
        raise
    bar.close()
    checkpoint()
    return write_map(out_path, last)

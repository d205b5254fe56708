"""The generated demo scene (``reloc-demo-scene``): a textured room rendered by exact ray casting, 7-Scenes layout.

No downloads: the room (4 m × 5 m × 2.6 m, walls, floor, ceiling and a few boxes, all axis-aligned) is textured with
mosaics of random crops of the photographs that ship with scikit-image (``skimage.data``), tinted and modulated by
a fine grayscale detail texture so that no two surfaces look alike and every surface is textured.

Rendering is exact per-pixel ray casting in numpy: one ray through each pixel centre of a pinhole camera
(fx = fy = 500, cx = 319.5, cy = 239.5, 640 × 480, no distortion), nearest hit over the room (ray exits an
axis-aligned box) and the boxes (slab test), trilinear (mip-mapped bilinear) texture lookup, view-independent
Lambertian shading from a ceiling light. Depth is the exact z of the hit in the camera frame.

World frame: x ∈ [0, 4], y ∈ [0, 5], z ∈ [0, 2.6] metres, z up, floor at z = 0. Camera poses ``T_world_cam`` are
camera-to-world with OpenCV axes (x right, y down, z forward).

Output (7-Scenes layout), frames numbered mapping first, then queries, in one sequence:
``frame-NNNNNN.color.jpg`` (JPEG quality 95), ``frame-NNNNNN.depth.png`` (uint16 millimetres, registered to the RGB
image, 0 = invalid), ``frame-NNNNNN.pose.txt`` (4×4 ``T_world_cam``), ``mapping.txt``, ``query.txt``,
``rgb-intrinsics.txt`` (3×3 K) and ``README.md`` (what it is, seed, parameters).

Mapping trajectory: a smooth loop ~0.8–1.1 m from the walls at 1.1–1.5 m height looking across the room at the
boxes and the far walls. Query trajectory: a different smooth path, offset 0.1–0.4 m and 5–20° from the mapping
path, with exposure changes (gain 0.7–1.3), a little Gaussian blur and noise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .cli_args import HelpFormatter, UsageError, check_output_dir, number

__all__ = ["GENERATOR_VERSION", "DemoScene", "generate_demo_scene", "build_scene", "render", "trajectories",
           "DEMO_K", "main"]

GENERATOR_VERSION = 1
ROOM = np.array([4.0, 5.0, 2.6])  # extent (m); the room spans [0, ROOM]
PPM = 320.0  # texture resolution, pixels per metre at mip level 0
N_LEVELS = 5
LIGHT = np.array([2.0, 2.5, 2.45])
DEMO_K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------------------------
# Textures
# ---------------------------------------------------------------------------------------------------------------------
def _photo_pool() -> list[np.ndarray]:
    """RGB float32 [0, 1] photos that ship with scikit-image (grayscale ones stay gray; they get tinted later)."""
    from skimage import data

    pool = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "gravel", "grass",
                 "camera", "coins", "page", "text", "clock", "moon"):
        im = getattr(data, name)()
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        pool.append(im[..., :3].astype(np.float32) / 255.0)
    return pool


def _detail_pool() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in ("gravel", "grass", "brick"):
        d = getattr(data, name)().astype(np.float32)
        out.append((d - d.mean()) / (d.std() + 1e-6))
    return out


def _make_texture(w_m: float, h_m: float, rng: np.random.Generator, pool, details) -> list[np.ndarray]:
    """Mip pyramid (uint8 RGB, level 0 at PPM px/m) of a unique mosaic texture covering w_m × h_m metres."""
    W, H = max(2, math.ceil(w_m * PPM)), max(2, math.ceil(h_m * PPM))
    canvas = np.zeros((H, W, 3), np.float32)
    # Grid of cells 0.5–1.2 m with random cuts.
    def cuts(total_px):
        xs = [0]
        while xs[-1] < total_px:
            xs.append(xs[-1] + int(rng.uniform(0.5, 1.2) * PPM))
        xs[-1] = total_px
        if len(xs) > 2 and xs[-1] - xs[-2] < 0.25 * PPM:
            xs.pop(-2)
        return xs
    for y0, y1 in zip(*(lambda c: (c[:-1], c[1:]))(cuts(H))):
        for x0, x1 in zip(*(lambda c: (c[:-1], c[1:]))(cuts(W))):
            ph = pool[rng.integers(len(pool))]
            ch, cw = y1 - y0, x1 - x0
            s = rng.uniform(0.35, 0.9) * min(ph.shape[0] / ch, ph.shape[1] / cw)
            sh, sw = max(8, int(ch * s)), max(8, int(cw * s))
            oy, ox = rng.integers(0, ph.shape[0] - sh + 1), rng.integers(0, ph.shape[1] - sw + 1)
            crop = ph[oy:oy + sh, ox:ox + sw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < 0.5:
                crop = crop[::-1]
            crop = cv2.resize(np.ascontiguousarray(crop), (cw, ch), interpolation=cv2.INTER_CUBIC)
            tint = rng.uniform(0.45, 1.0, size=3).astype(np.float32)
            offset = rng.uniform(0.0, 0.25, size=3).astype(np.float32)
            canvas[y0:y1, x0:x1] = crop * tint + offset
    # Fine detail: a tiled grayscale texture at a random scale, multiplicative.
    d = details[rng.integers(len(details))]
    scale = rng.uniform(0.3, 0.7)  # metres per tile
    tile = cv2.resize(d, (int(scale * PPM), int(scale * PPM)), interpolation=cv2.INTER_AREA)
    reps = (H // tile.shape[0] + 1, W // tile.shape[1] + 1)
    tiled = np.tile(tile, reps)[:H, :W]
    canvas *= (1.0 + rng.uniform(0.12, 0.25) * tiled)[..., None]
    tex = np.clip(canvas * 255.0, 0, 255).astype(np.uint8)
    levels = [tex]
    for _ in range(N_LEVELS - 1):
        prev = levels[-1]
        if min(prev.shape[:2]) < 4:
            break
        levels.append(cv2.resize(prev, ((prev.shape[1] + 1) // 2, (prev.shape[0] + 1) // 2),
                                 interpolation=cv2.INTER_AREA))
    return levels


# ---------------------------------------------------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class DemoScene:
    """Axis-aligned boxes: object 0 is the room (seen from inside), objects 1.. are boxes (seen from outside).

    ``textures[obj * 6 + axis * 2 + side]`` is the mip pyramid of the face of ``obj`` normal to ``axis`` at its
    low (side 0) or high (side 1) bound; rows run along the face's second in-plane axis, columns along the first.
    """

    lo: np.ndarray  # (n_obj, 3)
    hi: np.ndarray  # (n_obj, 3)
    textures: list = field(default_factory=list)
    seed: int = 0


def build_scene(seed: int = 0) -> DemoScene:
    """The room and 4 boxes, with unique textures; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    boxes = [
        # centre table-like box (cameras circle around it)
        ((1.55 + j(0.1), 2.0 + j(0.1), 0.0), (2.45 + j(0.1), 3.0 + j(0.1), 0.6 + j(0.1))),
        # corner cabinet, tall
        ((0.0, 0.0, 0.0), (0.6 + j(0.05), 0.7 + j(0.05), 1.6 + j(0.2))),
        # box against the +x wall
        ((3.55 + j(0.05), 2.1 + j(0.2), 0.0), (4.0, 2.9 + j(0.2), 0.9 + j(0.1))),
        # low crate in the far corner
        ((3.2 + j(0.05), 4.3 + j(0.05), 0.0), (4.0, 5.0, 0.5 + j(0.1))),
        # small box on the floor near the -x wall, far side
        ((0.0, 3.9 + j(0.1), 0.0), (0.45 + j(0.05), 4.5 + j(0.1), 0.45 + j(0.05))),
    ]
    lo = np.array([[0.0, 0.0, 0.0]] + [b[0] for b in boxes])
    hi = np.array([ROOM.tolist()] + [b[1] for b in boxes])
    pool, details = _photo_pool(), _detail_pool()
    textures = []
    for o in range(len(lo)):
        ext = hi[o] - lo[o]
        for axis in range(3):
            a0, a1 = [a for a in range(3) if a != axis]
            for _side in range(2):
                textures.append(_make_texture(ext[a0], ext[a1], rng, pool, details))
    return DemoScene(lo=lo, hi=hi, textures=textures, seed=seed)


def _min_clearance(scene: DemoScene, p: np.ndarray) -> float:
    """Distance (m) from point ``p`` to the nearest surface; negative inside a box or outside the room."""
    room = min((p - scene.lo[0]).min(), (scene.hi[0] - p).min())
    d = room
    for lo, hi in zip(scene.lo[1:], scene.hi[1:]):
        q = np.maximum(np.maximum(lo - p, p - hi), 0.0)
        outside = np.linalg.norm(q)
        if outside == 0.0:
            return -1.0
        d = min(d, outside)
    return float(d)


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------
def _bilinear(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a uint8 (H, W, 3) texture at float pixel coordinates (pixel centres at integers,
    clamped to the border) -> (N, 3) float32."""
    H, W = tex.shape[:2]
    x = np.clip(x, 0.0, W - 1.0)
    y = np.clip(y, 0.0, H - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2)
    fx = (x - x0)[:, None].astype(np.float32)
    fy = (y - y0)[:, None].astype(np.float32)
    flat = tex.reshape(-1, 3)
    i00 = y0 * W + x0
    c00, c01 = flat[i00].astype(np.float32), flat[i00 + 1].astype(np.float32)
    c10, c11 = flat[i00 + W].astype(np.float32), flat[i00 + W + 1].astype(np.float32)
    top = c00 + (c01 - c00) * fx
    bot = c10 + (c11 - c10) * fx
    return top + (bot - top) * fy


def render(scene: DemoScene, T_world_cam: np.ndarray, K: np.ndarray = DEMO_K, width: int = 640,
           height: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one view: returns (RGB float32 (H, W, 3) in [0, 255], depth float64 (H, W) metres along z)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d_cam = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)], 1)
    R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
    d = d_cam @ R.T  # world directions; the ray parameter t equals the camera-frame depth z
    N = d.shape[0]
    dx = [np.ascontiguousarray(d[:, a]) for a in range(3)]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = [1.0 / c for c in dx]
        # Room: the ray exits the room box (column-wise ops: numpy reductions over a length-3 axis are slow).
        tb = [(np.where(dx[a] > 0, scene.hi[0, a], scene.lo[0, a]) - o[a]) * inv[a] for a in range(3)]
        best = np.minimum(np.minimum(tb[0], tb[1]), tb[2])
        axis = np.where(tb[0] == best, 0, np.where(tb[1] == best, 1, 2))
        obj = np.zeros(N, np.int64)
        for k in range(1, len(scene.lo)):
            tmin, tmax = [], []
            for a in range(3):
                t1 = (scene.lo[k, a] - o[a]) * inv[a]
                t2 = (scene.hi[k, a] - o[a]) * inv[a]
                tmin.append(np.minimum(t1, t2))
                tmax.append(np.maximum(t1, t2))
            tn = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
            tf = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
            hit = (tn <= tf) & (tn > 1e-9) & (tn < best)
            best = np.where(hit, tn, best)
            axis = np.where(hit, np.where(tmin[0] == tn, 0, np.where(tmin[1] == tn, 1, 2)), axis)
            obj = np.where(hit, k, obj)
    da = d[np.arange(N), axis]
    # Room faces: exit at hi when d > 0. Box faces: enter at lo when d > 0.
    side = np.where(obj == 0, da > 0, da < 0).astype(np.int64)
    p = o + best[:, None] * d
    normal = np.zeros_like(p)
    normal[np.arange(N), axis] = -np.sign(da)
    to_light = LIGHT - p
    dist2 = (to_light ** 2).sum(1)
    lam = np.clip((normal * to_light).sum(1) / np.sqrt(dist2), 0.0, 1.0)
    shade = (0.45 + 0.75 * lam / (1.0 + 0.08 * dist2)).astype(np.float32)
    # Footprint of a pixel on the surface, in level-0 texels, for the mip level.
    dn2 = (d ** 2).sum(1)
    footprint = best * dn2 / (K[0, 0] * np.maximum(np.abs(da), 1e-6)) * PPM
    level = np.log2(np.maximum(footprint, 1.0))
    # In-plane texture coordinates (m): columns along the first other axis from its low end, rows along the second
    # from its high end (so vertical faces stand upright).
    a0 = np.array([1, 0, 0])[axis]
    a1 = np.array([2, 2, 1])[axis]
    sx = np.choose(a0, (p[:, 0], p[:, 1], p[:, 2])) - scene.lo[obj, a0]
    sy = scene.hi[obj, a1] - np.choose(a1, (p[:, 0], p[:, 1], p[:, 2]))
    surf = obj * 6 + axis * 2 + side
    level = np.minimum(level, N_LEVELS - 1)
    l0 = np.floor(level).astype(np.int64)
    frac = (level - l0).astype(np.float32)
    # Group pixels by (surface, level) with one sort, then sample contiguous runs.
    key = surf * N_LEVELS + l0
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    sx_s, sy_s, frac_s = sx[order], sy[order], frac[order]
    starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
    ends = np.r_[starts[1:], N]
    rgb_s = np.empty((N, 3), np.float32)
    for b, e in zip(starts, ends):
        srf, L = divmod(int(key_s[b]), N_LEVELS)
        pyr = scene.textures[srf]
        L = min(L, len(pyr) - 1)
        sc = PPM / 2.0 ** L
        c0 = _bilinear(pyr[L], sx_s[b:e] * sc - 0.5, sy_s[b:e] * sc - 0.5)
        if L + 1 < len(pyr):
            sc1 = sc / 2.0
            c1 = _bilinear(pyr[L + 1], sx_s[b:e] * sc1 - 0.5, sy_s[b:e] * sc1 - 0.5)
            c0 += (c1 - c0) * frac_s[b:e, None]
        rgb_s[b:e] = c0
    rgb = np.empty_like(rgb_s)
    rgb[order] = rgb_s
    rgb *= shade[:, None]
    return rgb.reshape(height, width, 3), best.reshape(height, width)


# ---------------------------------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------------------------------
def _look_at(pos: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """T_world_cam (OpenCV axes) at ``pos`` looking at ``target`` with world z up, rolled by ``roll`` rad."""
    z = target - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], 1)
    c, s = math.cos(roll), math.sin(roll)
    R = R @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = pos
    return T


def _mapping_pose(s: float, ph: np.ndarray) -> np.ndarray:
    """Mapping loop at parameter s ∈ [0, 2π): position on an ellipse around the room centre, looking across."""
    c = ROOM / 2
    pos = np.array([c[0] + 1.1 * math.cos(s), c[1] + 1.55 * math.sin(s), 1.3 + 0.2 * math.sin(2 * s + ph[0])])
    sw = 0.55 * math.sin(3 * s + ph[1])  # swing of the gaze around the room centre
    tgt = np.array([c[0] - 0.9 * math.cos(s + sw), c[1] - 1.3 * math.sin(s + sw), 0.55 + 0.35 * math.sin(2 * s + ph[2])])
    return _look_at(pos, tgt, roll=0.06 * math.sin(5 * s + ph[3]))


def _query_pose(s: float, ph: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Query path: the mapping pose at ``s`` displaced by 0.1–0.4 m and rotated by 5–20° (smoothly varying)."""
    from scipy.spatial.transform import Rotation

    T = _mapping_pose(s, ph)
    off_len = 0.25 + 0.15 * math.sin(2 * s + ph[4])
    a, b = 3 * s + ph[5], 2 * s + ph[6]
    direction = np.array([math.cos(a) * math.cos(b), math.sin(a) * math.cos(b), 0.5 * math.sin(b)])
    direction /= np.linalg.norm(direction)
    ang = math.radians(12.5 + 7.5 * math.sin(3 * s + ph[7]))
    ax = np.array([0.3 * math.cos(4 * s), 1.0, 0.5 * math.sin(4 * s)])  # mostly yaw (camera y axis), some pitch/roll
    ax /= np.linalg.norm(ax)
    Tq = T.copy()
    Tq[:3, 3] = T[:3, 3] + off_len * direction
    Tq[:3, :3] = T[:3, :3] @ Rotation.from_rotvec(ang * ax).as_matrix()
    return Tq, off_len, math.degrees(ang)


def trajectories(seed: int, n_mapping: int, n_query: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mapping poses (n_mapping, 4, 4), query poses (n_query, 4, 4), query gains (n_query,)); deterministic."""
    rng = np.random.default_rng(seed + 7919)
    ph = rng.uniform(0, 2 * np.pi, size=9)
    s0 = rng.uniform(0, 2 * np.pi)
    sm = s0 + 2 * np.pi * np.arange(n_mapping) / max(n_mapping, 1)
    mapping = np.stack([_mapping_pose(s, ph) for s in sm]) if n_mapping else np.zeros((0, 4, 4))
    sq = s0 + 0.37 + 2 * np.pi * (np.arange(n_query) + 0.5) / max(n_query, 1)
    query = np.stack([_query_pose(s, ph)[0] for s in sq]) if n_query else np.zeros((0, 4, 4))
    gains = 1.0 + 0.3 * np.sin(5 * sq + ph[8])
    return mapping, query, gains


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _render_frame(job):
    i, T, is_query, gain, seed, width, height, out_dir = job
    scene = _WORKER["scene"]
    K = _WORKER["K"]
    rgb, depth = render(scene, T, K, width, height)
    if is_query:
        rng = np.random.default_rng([seed, i])
        rgb = rgb * gain
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=rng.uniform(0.4, 1.0))
        rgb = rgb + rng.normal(0.0, 2.0, size=rgb.shape).astype(np.float32)
    img = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    name = f"frame-{i:06d}"
    out = Path(out_dir)
    if not cv2.imwrite(str(out / f"{name}.color.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {out / name}.color.jpg")
    depth_mm = np.rint(depth * 1000.0)
    depth_mm = np.where((depth_mm > 0) & (depth_mm < 65535), depth_mm, 0).astype(np.uint16)
    cv2.imwrite(str(out / f"{name}.depth.png"), depth_mm)
    np.savetxt(out / f"{name}.pose.txt", T, fmt="%.17g")
    stats = _view_stats(depth, rgb)
    return i, stats


def _view_stats(depth: np.ndarray, rgb: np.ndarray) -> dict:
    return {"median_depth": float(np.median(depth)), "min_depth": float(depth.min())}


def _init_worker(scene, K):
    _WORKER["scene"] = scene
    _WORKER["K"] = K


def generate_demo_scene(out_dir, seed: int = 0, n_mapping: int = 200, n_query: int = 100, width: int = 640,
                        height: int = 480, workers: int | None = None, progress: bool = True) -> Path:
    """Render the demo scene into ``out_dir`` (created; existing frames are overwritten) and return it as a Path.

    ``width``/``height`` other than 640×480 scale the intrinsics (fx = fy = 500·width/640)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scene = build_scene(seed)
    K = DEMO_K.copy()
    if (width, height) != (640, 480):
        sx, sy = width / 640, height / 480
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    mapping, query, gains = trajectories(seed, n_mapping, n_query)
    for i, T in enumerate(np.concatenate([mapping, query])):
        c = _min_clearance(scene, T[:3, 3])
        if c < 0.3:
            raise RuntimeError(f"demo scene seed {seed}: camera {i} is {c:.2f} m from a surface (need >= 0.3 m)")
    jobs = [(i, T, False, 1.0, seed, width, height, str(out)) for i, T in enumerate(mapping)]
    jobs += [(n_mapping + i, T, True, float(g), seed, width, height, str(out)) for i, (T, g) in enumerate(zip(query, gains))]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 4) if hasattr(os, "sched_getaffinity") else 1
    stats = {}
    bar = tqdm(total=len(jobs), desc="rendering demo scene", unit="frame", disable=not progress)
    if workers > 1 and len(jobs) > 8:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers, initializer=_init_worker, initargs=(scene, K)) as pool:
            for i, st in pool.imap_unordered(_render_frame, jobs, chunksize=4):
                stats[i] = st
                bar.update()
    else:
        _init_worker(scene, K)
        for job in jobs:
            i, st = _render_frame(job)
            stats[i] = st
            bar.update()
    bar.close()
    names = [f"frame-{i:06d}" for i in range(len(jobs))]
    (out / "mapping.txt").write_text("".join(n + "\n" for n in names[:n_mapping]))
    (out / "query.txt").write_text("".join(n + "\n" for n in names[n_mapping:]))
    np.savetxt(out / "rgb-intrinsics.txt", K, fmt="%.17g")
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "n_mapping": n_mapping, "n_query": n_query,
              "width": width, "height": height, "K": K.tolist()}
    (out / "README.md").write_text(_README.format(seed=seed, n_mapping=n_mapping, n_query=n_query, width=width,
                                                  height=height, fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2],
                                                  version=GENERATOR_VERSION, last=len(jobs) - 1,
                                                  params=json.dumps(params),
                                                  seconds=time.time() - t0))
    return out


_README = """# reloc_ros demo scene (generated, seed {seed})

A synthetic indoor room generated by `reloc-demo-scene` (reloc_ros/demo_scene.py, generator version {version});
nothing was downloaded. Room 4 m × 5 m × 2.6 m (world frame: x ∈ [0, 4], y ∈ [0, 5], z up, floor at z = 0) with
five boxes, textured with mosaics of photographs that ship with scikit-image, rendered by exact per-pixel ray
casting ({seconds:.0f} s).

- {n_mapping} mapping frames (a smooth loop, `mapping.txt`) then {n_query} query frames (`query.txt`; a different
  path 0.1–0.4 m and 5–20° away, exposure gain 0.7–1.3, slight blur and noise): frame-000000 … frame-{last:06d}.
- `frame-NNNNNN.color.jpg`: {width}×{height} RGB, JPEG quality 95.
- `frame-NNNNNN.depth.png`: uint16 depth (z) in millimetres, registered to the RGB image, 0 = invalid.
- `frame-NNNNNN.pose.txt`: 4×4 camera-to-world `T_world_cam`, metres, OpenCV camera axes (x right, y down,
  z forward); exact.
- `rgb-intrinsics.txt`: K, fx = {fx:g}, fy = {fy:g}, cx = {cx:g}, cy = {cy:g} (pixel centres at integers), no distortion.

Regenerate: `reloc-demo-scene --out DIR --seed {seed} --n-mapping {n_mapping} --n-query {n_query}`

Parameters: `{params}`
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="reloc-demo-scene", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--seed", type=number(int, min=0), default=0, help="random seed of the scene (default 0)")
    ap.add_argument("--n-mapping", type=number(int, min=1), default=200, help="mapping frames (default 200)")
    ap.add_argument("--n-query", type=number(int, min=1), default=100, help="query frames (default 100)")
    ap.add_argument("--width", type=number(int, min=16), default=640, help="image width in pixels (default 640)")
    ap.add_argument("--height", type=number(int, min=16), default=480, help="image height in pixels (default 480)")
    ap.add_argument("--workers", type=number(int, min=1), default=None,
                    help="render processes (default: CPU count, at most 4)")
    a = ap.parse_args(argv)
    try:
        check_output_dir(a.out, "--out")
    except UsageError as e:
        print(f"reloc-demo-scene: error: {e}", file=sys.stderr)
        return 2
    out = generate_demo_scene(a.out, a.seed, a.n_mapping, a.n_query, a.width, a.height, workers=a.workers)
    print(f"demo scene written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

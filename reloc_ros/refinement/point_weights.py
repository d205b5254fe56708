"""Per-point uncertainty weights of a reference model, estimated from multi-view feature consistency.

PixLoc learns a per-pixel uncertainty; here each reference point gets one estimated from the mapping images: the
point is projected into ``num_views`` other reference images near its own (nearest by distance + ``angle_weight_m``
× optical-axis angle, skipping views closer than ``min_view_distance`` in that metric, which add no viewpoint
change), the query-side feature maps of those images are sampled there, and ``d`` = the median over those views of
the squared feature distance to the point's stored feature, averaged over the levels (unit features: 0 = the same
feature from every viewpoint, 2 = uncorrelated). Points whose features change with the viewpoint (occlusion edges,
specularities, depth or pose errors) get ``d`` large. The weight is ``w = 1 / (1 + d / scale)``, normalised to mean 1
over the points that have one; points seen in no other image keep weight 1.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm import tqdm

from ..conf import merge_conf
from ..geometry.pose import invert_T, transform_points, view_distance
from ..map_file import load_map, save_map
from ..xfeat import XFeatPyramid, pixel_to_level, rgb_to_gray
from .features import sample_bilinear
from .reference import ReferenceModel, load_reference

__all__ = ["DEFAULT_WEIGHT_CONF", "view_consistency", "weights_from_consistency", "estimate_point_weights",
           "add_point_weights"]

DEFAULT_WEIGHT_CONF = {
    "num_views": 6,              # other reference images each point is compared in
    "angle_weight_m": 0.5,       # metres per radian of optical-axis angle in the view distance (as the refiner's)
    "min_view_distance": 0.05,   # views nearer than this (m + weighted rad) are skipped: no viewpoint change
    "max_view_distance": 1.0,    # views farther than this are not used
    "scale": 0.1,                # d at which the weight halves (the Cauchy loss scale of the refiner)
}


def _neighbours(poses: np.ndarray, conf: dict) -> list[np.ndarray]:
    """For each reference image, the indices of the (at most) ``num_views`` images it is compared in."""
    metric, _ = view_distance(poses, poses, conf["angle_weight_m"])
    out = []
    for i, m in enumerate(metric):
        ok = (m >= conf["min_view_distance"]) & (m <= conf["max_view_distance"])
        ok[i] = False
        cand = np.nonzero(ok)[0]
        out.append(cand[np.argsort(m[cand], kind="stable")[: int(conf["num_views"])]])
    return out


@torch.inference_mode()
def view_consistency(ref: ReferenceModel, frames, conf: dict | None = None, device: str = "cpu",
                     net: XFeatPyramid | None = None) -> np.ndarray:
    """``d`` (P,) float32 of every point of the reference ``ref`` (see the module docstring; NaN where no other view
    saw it), its features computed on ``device``. ``frames``: a sequence of the reference's images in its order
    (each with ``.image`` (H, W, 3) uint8 RGB, ``.camera``, ``.name``; names must match the reference's)."""
    conf = {**DEFAULT_WEIGHT_CONF, **(conf or {})}
    if int(conf["num_views"]) < 1:
        raise ValueError(f"num_views must be at least 1, got {conf['num_views']}")
    names = list(ref.metadata["image_names"])
    if len(frames) != len(names):
        raise ValueError(f"{len(frames)} frames given for a reference of {len(names)} images")
    poses = ref.image_poses.cpu().numpy()
    offsets = ref.image_offsets.cpu().numpy()
    X = ref.points_xyz.cpu().numpy()
    feats = {lv: ref.features[lv].to(device) for lv in ref.levels}
    net = (net or XFeatPyramid(ref.levels)).to(device)
    observers: list[list[int]] = [[] for _ in names]        # image j -> reference images whose points it checks
    for i, js in enumerate(_neighbours(poses, conf)):
        for j in js:
            observers[int(j)].append(i)
    K = int(conf["num_views"])
    d = np.full((len(X), K), np.nan, np.float32)
    slot = np.zeros(len(names), np.int64)                  # next free column per reference image
    for j in tqdm(range(len(names)), desc="reference: point weights"):
        if not observers[j]:
            continue
        fr = frames[j]
        if fr.name != names[j]:
            raise ValueError(f"frame {j} is {fr.name!r}, the reference's image {j} is {names[j]!r}")
        maps = ref.query_maps(net(rgb_to_gray(fr.image, ref.gray, device)))
        T_cam_world = invert_T(poses[j])
        cam = fr.camera
        for i in observers[j]:
            s, e = int(offsets[i]), int(offsets[i + 1])
            uv, ok = cam.project(transform_points(T_cam_world, X[s:e]))
            ok &= (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam.height - 1)
            if not ok.any():
                slot[i] += 1
                continue
            uv_t = torch.as_tensor(uv[ok], dtype=torch.float32, device=device)
            rows = torch.from_numpy(np.arange(s, e)[ok]).to(device)
            acc = torch.zeros(len(rows), device=device)
            for lv in ref.levels:
                f, _, _ = sample_bilinear(maps[lv], pixel_to_level(uv_t, ref.strides[lv]), with_grad=False)
                acc += ((f - feats[lv][rows]) ** 2).sum(-1)
            d[rows.cpu().numpy(), slot[i]] = (acc / len(ref.levels)).cpu().numpy()
            slot[i] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: points no other view saw
        return np.nanmedian(d, axis=1).astype(np.float32)


def weights_from_consistency(d: np.ndarray, scale: float = DEFAULT_WEIGHT_CONF["scale"]) -> np.ndarray:
    """``w = 1 / (1 + d / scale)`` normalised to mean 1 over the finite ``d``; 1 where ``d`` is NaN."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    w = 1.0 / (1.0 + np.asarray(d, np.float64) / scale)
    ok = np.isfinite(w)
    if ok.any():
        w = w / w[ok].mean()
    return np.where(ok, w, 1.0).astype(np.float32)


def estimate_point_weights(tensors: dict, meta: dict, frames, conf: dict | None = None, device: str = "cpu",
                           net: XFeatPyramid | None = None) -> None:
    """Add the estimated weights to a reference model's ``tensors`` / ``meta`` in place: tensors
    ``point_weights`` (P,) float32 and ``point_consistency`` (P,) float32 (``d``), metadata ``point_weights`` (the
    conf and the number of points compared in at least one view). The other arguments as ``view_consistency``."""
    conf = merge_conf(DEFAULT_WEIGHT_CONF, conf, "point weight")
    d = view_consistency(load_reference((tensors, meta), device), frames, conf, device, net)
    tensors["point_consistency"] = torch.from_numpy(d)
    tensors["point_weights"] = torch.from_numpy(weights_from_consistency(d, conf["scale"]))
    meta["point_weights"] = {**conf, "num_with_views": int(np.isfinite(d).sum())}


def add_point_weights(ref_path, frames, out_path=None, conf: dict | None = None, device: str = "cpu"):
    """Estimate the point weights of the saved reference at ``ref_path`` from ``frames`` (its images, in its
    order) and save it with them to ``out_path`` (default: in place, atomically). Returns the path."""
    tensors, meta = load_map(ref_path, device="cpu", kind="reference")
    estimate_point_weights(tensors, meta, frames, conf, device)
    return save_map(out_path or ref_path, tensors, meta, kind="reference")

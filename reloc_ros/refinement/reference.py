"""The featuremetric reference model: 3D points of the mapping images with their multi-level features.

Built by mapping from posed frames. The 3D points come from one of two sources (``conf["points"]``):
- ``"depth"``: pixels with strong image gradient are picked on a grid in each (every ``image_stride``-th) mapping
  image and back-projected with the depth registered to the colour camera;
- ``"triangulate"``: SIFT points triangulated with pycolmap from the known poses (``triangulation.py``); each image
  keeps its own observations (per ``cell_px`` cell the one whose features agree best with the other observations of
  its point, at most ``points_per_image``), so a 3D point seen by several reference images appears once per image,
  with the features of that image at its keypoint;
- ``"auto"`` (default): depth when the first reference frame has depth, else triangulation. Frames with unregistered
  depth still raise the error below unless ``unregistered_depth="identity"`` or ``points="triangulate"``.
The points are described by XFeat features (``features.py``) at several levels, PCA-reduced per level and
L2-normalised, stored as fp16.

Depth registration: a frame whose ``depth_camera`` equals its colour ``camera`` and whose ``T_cam_depth`` is
identity or None is used as is; a frame with a known ``T_cam_depth`` is registered by forward-projecting its depth
into the colour camera (z-buffered). Unregistered depth (``T_cam_depth is None`` with a different depth camera, as in
raw 7-Scenes) is an error unless ``conf["unregistered_depth"] == "identity"``, which assumes an identity extrinsic
between the depth and colour cameras (the DSAC*-style approximation for 7-Scenes: depth K 585, RGB K 525).

File (``map_file.save_map(..., kind="reference")``, next to the map at ``map_file.reference_path``) tensors:
``points_xyz`` (P, 3) float32 world (m); ``points_uv`` (P, 2) float32 pixel of each point in its image;
``points_image`` (P,) int32 index of its reference image (points grouped by image, ``image_offsets`` (M+1,) int64);
``image_poses`` (M, 4, 4) float64 ``T_world_cam``; per level ``feat_<lv>`` (P, D) float16,
``pca_mean_<lv>`` (C,) and ``pca_proj_<lv>`` (C, D) float32. Metadata: ``levels``, ``strides``, ``dims``,
``image_names``, ``camera`` (CameraInfo-shaped), ``conf``, ``features: "xfeat"``, ``points_source``
(``"depth"`` | ``"triangulation"``); triangulated references also hold ``points_track`` (P,) int32 (the 3D point of
each entry) and ``triangulation`` (statistics) in the metadata; references with estimated point weights
(``point_weights.py``) hold ``point_weights`` (P,) and ``point_consistency`` (P,) float32 and the metadata
``point_weights`` (their conf).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..datasets.base import Subset
from ..geometry.camera import Camera
from ..map_file import MapFileError, check_metadata, load_map, save_map
from .features import LEVELS, XFeatPyramid, pixel_to_level, reduce_and_normalize, rgb_to_gray, sample_bilinear

__all__ = ["DEFAULT_CONF", "build_reference", "load_reference", "ReferenceModel", "ReferenceBuildError",
           "registered_depth"]

DEFAULT_CONF = {
    "levels": ["fused", "x2", "b1"],        # coarse to fine
    "dims": {"fused": 32, "x2": 16, "b1": 8},  # PCA output channels per level (<= the level's channels)
    # Gaussian blur (std, cells) of each level, query and reference alike: widens the basin of the coarse levels
    # (demo scene, 5 cm / 2° priors: 64 % -> 79-86 % converged to < 1 cm / 0.2°); the finest level stays sharp.
    "blur": {"fused": 1.5, "x2": 1.0, "b1": 0.0},
    "points_per_image": 256,
    "cell_px": 8,                # one candidate (the strongest gradient) per cell of this size
    "min_gradient": 8.0,         # Sobel magnitude (grey levels / px) below which a pixel is not a candidate
    "image_stride": 1,           # use every k-th mapping frame
    "depth_min_m": 0.1,
    "depth_max_m": 10.0,
    "depth_edge_m": 0.05,        # reject pixels whose 3x3 depth neighbourhood spans more than this (occlusion edges)
    "unregistered_depth": "error",  # or "identity" (see module docstring)
    "points": "auto",            # "auto" | "depth" | "triangulate": source of the 3D points (see module docstring)
    "triangulation": {},         # overrides of triangulation.DEFAULT_TRIANGULATION_CONF (points="triangulate")
    "gray": "bt601",             # grayscale conversion of the XFeat input (reloc_ros.xfeat; the ACE encoder's, so
                                 # that the ACE front end's XFeat pass can be reused for the query)
    # Per-point uncertainty weights from multi-view feature consistency (point_weights.py): None = none, or a dict
    # of overrides of point_weights.DEFAULT_WEIGHT_CONF ({} = its defaults). Off by default: on 7-Scenes (ACE, 400
    # queries) they moved recall@5cm/5° by +1.3 points and recall@2cm/2° by -5 points
    # (benchmarks/RESULTS_refinement.md).
    "point_weights": None,
    "pca_images": 40,            # images whose dense features fit the PCA
    "pca_samples": 30000,
    "seed": 0,
}


class ReferenceBuildError(ValueError):
    """The dataset cannot give a reference model (no poses, no depth, unregistered depth, no points)."""


def _same_camera(a: Camera, b: Camera) -> bool:
    return a.size == b.size and np.allclose(a.K, b.K) and np.allclose(a.dist, b.dist)


def registered_depth(frame, unregistered: str = "error") -> np.ndarray:
    """Depth (H, W) float32 metres in the colour camera of ``frame`` (0 = invalid)."""
    if frame.depth is None:
        raise ReferenceBuildError(f"{frame.name}: the frame has no depth; the depth reference model needs RGB-D "
                                  "frames (conf points='triangulate' triangulates the points instead)")
    cam = frame.camera
    dcam = frame.depth_camera if frame.depth_camera is not None else cam
    T = frame.T_cam_depth
    if T is None:
        if _same_camera(dcam, cam):
            return frame.depth.astype(np.float32)
        if unregistered != "identity":
            raise ReferenceBuildError(
                f"{frame.name}: depth is not registered to the colour camera (T_cam_depth is None); pass "
                "unregistered_depth='identity' (reloc-map --reference-set unregistered_depth=identity) to assume an "
                "identity depth-to-colour extrinsic (raw 7-Scenes), or points=triangulate")
        T = np.eye(4)
    if _same_camera(dcam, cam) and np.allclose(T, np.eye(4)):
        return frame.depth.astype(np.float32)
    d = frame.depth
    v, u = np.nonzero(d > 0)
    X = dcam.backproject(np.stack([u, v], -1).astype(np.float64), d[v, u])
    X = X @ T[:3, :3].T + T[:3, 3]
    uv, ok = cam.project(X)
    px = np.round(uv).astype(np.int64)
    ok &= (px[:, 0] >= 0) & (px[:, 0] < cam.width) & (px[:, 1] >= 0) & (px[:, 1] < cam.height)
    z = X[ok, 2].astype(np.float32)
    px = px[ok]
    lin = px[:, 1] * cam.width + px[:, 0]
    order = np.lexsort((z, lin))               # by pixel, nearest first
    first = np.unique(lin[order], return_index=True)[1]
    keep = order[first]                        # z-buffer: the nearest depth per colour pixel
    out = np.zeros(cam.height * cam.width, np.float32)
    out[lin[keep]] = z[keep]
    return out.reshape(cam.height, cam.width)


def _select_pixels(image: np.ndarray, depth: np.ndarray, conf: dict) -> np.ndarray:
    """(K, 2) integer pixels: the strongest-gradient pixel of each cell with valid, non-edge depth, best first."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8
    g = np.sqrt(gx * gx + gy * gy)
    dmin, dmax = conf["depth_min_m"], conf["depth_max_m"]
    valid = (depth > dmin) & (depth < dmax)
    k = np.ones((3, 3), np.uint8)
    dd = np.where(valid, depth, 0).astype(np.float32)
    hi = cv2.dilate(dd, k)
    lo = cv2.erode(np.where(valid, depth, 1e6).astype(np.float32), k)
    ok = valid & (hi - lo < conf["depth_edge_m"]) & (g >= conf["min_gradient"])
    g = np.where(ok, g, 0)
    c = int(conf["cell_px"])
    H, W = g.shape
    Hc, Wc = H // c, W // c
    cells = g[: Hc * c, : Wc * c].reshape(Hc, c, Wc, c).transpose(0, 2, 1, 3).reshape(Hc, Wc, c * c)
    arg = cells.argmax(-1)
    best = np.take_along_axis(cells, arg[..., None], -1)[..., 0]
    iy, ix = np.nonzero(best > 0)
    a = arg[iy, ix]
    u = ix * c + a % c
    v = iy * c + a // c
    order = np.argsort(-best[iy, ix], kind="stable")[: int(conf["points_per_image"])]
    return np.stack([u[order], v[order]], -1)


def _fit_pca(samples: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, C) raw features -> mean (C,) and projection (C, dim) onto the top principal directions."""
    mean = samples.mean(0)
    X = samples - mean
    cov = X.T @ X / max(1, X.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    proj = evecs[:, torch.argsort(evals, descending=True)[:dim]]
    return mean.float().contiguous(), proj.float().contiguous()


def _observations(tri, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All observations of image ``j`` of a ``Triangulation``: uv (K, 2), X_world (K, 3), point ids (K,)."""
    obs = np.nonzero(tri.obs_image == j)[0]
    pts = tri.obs_point[obs]
    return tri.obs_uv[obs], tri.points_xyz[pts], pts


def _consistent_entries(tracks: list, uvs: list, feats: dict, conf: dict) -> list:
    """Per image, the observations to keep (indices into its lists): the featuremetrically most consistent ones.

    The deviation of an observation is ``Σ_levels 1 − cos(f, mean of its point's observations)`` (0 = the same
    feature in every image; occlusion boundaries, where the neighbourhood changes with the viewpoint, score high);
    each image keeps the lowest-deviation observation of each ``cell_px`` cell, at most ``points_per_image``,
    most consistent first."""
    track = torch.from_numpy(np.concatenate(tracks).astype(np.int64))
    dev = torch.zeros(len(track))
    for per_image in feats.values():
        f = torch.cat(per_image).float()
        mean = torch.zeros(int(track.max()) + 1, f.shape[1]).index_add_(0, track, f)
        dev += 1 - (f * torch.nn.functional.normalize(mean, dim=-1)[track]).sum(-1)
    dev = dev.numpy()
    keep, start, c = [], 0, float(conf["cell_px"])
    for t, uv in zip(tracks, uvs):
        order = np.argsort(dev[start:start + len(t)], kind="stable")
        cell = np.floor(uv[order] / c).astype(np.int64)
        first = np.unique(cell[:, 1] * 1_000_000 + cell[:, 0], return_index=True)[1]
        keep.append(order[np.sort(first)[: int(conf["points_per_image"])]])
        start += len(t)
    return keep


def _points_source(dataset, indices, conf: dict) -> str:
    mode = conf["points"]
    if mode not in ("auto", "depth", "triangulate"):
        raise ValueError(f"conf points must be 'auto', 'depth' or 'triangulate', got {mode!r}")
    if mode == "auto":
        return "depth" if dataset[indices[0]].depth is not None else "triangulate"
    return mode


def _full_conf(conf: dict | None) -> dict:
    conf = {**DEFAULT_CONF, **(conf or {})}
    conf["dims"] = {**DEFAULT_CONF["dims"], **(conf.get("dims") or {})}
    conf["blur"] = {**DEFAULT_CONF["blur"], **(conf.get("blur") or {})}
    for lv in conf["levels"]:
        if lv not in LEVELS:
            raise ValueError(f"unknown feature level {lv!r}; choose from {sorted(LEVELS)}")
        if conf["dims"][lv] > LEVELS[lv][1]:
            raise ValueError(f"dims[{lv!r}] = {conf['dims'][lv]} exceeds the level's {LEVELS[lv][1]} channels")
    return conf


def check_reference_input(dataset, conf: dict | None = None) -> tuple[list, str]:
    """The reference frames' indices and the points source ("depth" | "triangulate"), after checking what can be
    checked before any work: the conf, a non-empty dataset, the first frame's pose and (depth source) that its
    depth is registered or ``unregistered_depth`` says how. Raises ``ReferenceBuildError`` / ``ValueError``.
    ``reloc-map`` calls it before training, so a bad dataset fails in seconds, not after the training."""
    conf = _full_conf(conf)
    indices = list(range(0, len(dataset), int(conf["image_stride"])))
    if not indices:
        raise ReferenceBuildError("the dataset is empty")
    source = _points_source(dataset, indices, conf)
    first = dataset[indices[0]]
    if first.T_world_cam is None or not np.all(np.isfinite(first.T_world_cam)):
        raise ReferenceBuildError(f"{first.name}: mapping frame without a pose")
    if source == "depth":
        registered_depth(first, conf["unregistered_depth"])
    return indices, source


def build_reference(dataset, out_path, conf: dict | None = None, device: str = "cpu", triangulation=None) -> Path:
    """Build the reference model of ``dataset`` (a Sequence of posed ``Frame``s, RGB-D for the depth source) and
    save it to ``out_path``.

    Returns the path. Raises ``ReferenceBuildError`` on frames without pose/depth or with unregistered depth
    (see the module docstring), or when no point could be selected; ``TriangulationError`` (a ``ValueError``) when
    triangulation fails. ``triangulation``: a ``triangulation.Triangulation`` of the reference frames (every
    ``image_stride``-th frame of ``dataset``) to use instead of triangulating them again.
    """
    conf = _full_conf(conf)
    levels = list(conf["levels"])
    t_start = time.perf_counter()
    indices, source = check_reference_input(dataset, conf)
    net = XFeatPyramid(levels).to(device)
    rng = np.random.default_rng(conf["seed"])
    tri = triangulation
    if source == "depth" and tri is not None:
        raise ValueError("a triangulation was given but the points source is depth (conf points)")
    if source == "triangulate" and tri is None:
        from .triangulation import triangulate_dataset
        tri = triangulate_dataset(Subset(dataset, indices), conf.get("triangulation") or {})
    if tri is not None and len(tri.image_indices) != len(indices):
        raise ValueError(f"the triangulation has {len(tri.image_indices)} images, the reference {len(indices)}")

    # Pass 1: PCA per level on dense features of a few evenly spaced images.
    pca = {}
    n_pca = min(int(conf["pca_images"]), len(indices))
    pca_idx = [indices[i] for i in np.linspace(0, len(indices) - 1, n_pca).round().astype(int)]
    samples = {lv: [] for lv in levels}
    per_img = max(1, int(conf["pca_samples"]) // n_pca)
    for i in tqdm(pca_idx, desc="reference: PCA features", leave=False):
        feats = net(rgb_to_gray(dataset[i].image, conf["gray"], device))
        for lv in levels:
            f = feats[lv][0].flatten(1).T
            sel = torch.from_numpy(rng.choice(f.shape[0], min(per_img, f.shape[0]), replace=False)).to(f.device)
            samples[lv].append(f[sel].double())
    for lv in levels:
        pca[lv] = _fit_pca(torch.cat(samples[lv]), int(conf["dims"][lv]))

    # Pass 2: points and their features.
    xyz, uvs, img_ids, poses, names, kept = [], [], [], [], [], []
    tracks = []  # triangulation: the 3D point of each entry
    feats_out = {lv: [] for lv in levels}
    camera = None
    for j, i in enumerate(tqdm(indices, desc="reference: points + features")):
        fr = dataset[i]
        if fr.T_world_cam is None or not np.all(np.isfinite(fr.T_world_cam)):
            raise ReferenceBuildError(f"{fr.name}: mapping frame without a pose")
        if camera is None:
            camera = fr.camera
        if tri is None:
            depth = registered_depth(fr, conf["unregistered_depth"])
            px = _select_pixels(fr.image, depth, conf)
            if len(px) == 0:
                continue
            uv = px.astype(np.float64)
            X_c = fr.camera.backproject(uv, depth[px[:, 1], px[:, 0]])
            X_w = X_c @ fr.T_world_cam[:3, :3].T + fr.T_world_cam[:3, 3]
        else:
            uv, X_w, track = _observations(tri, j)  # all of them; pruned below
            if len(uv) == 0:
                continue
            tracks.append(track.astype(np.int32))
        maps = net(rgb_to_gray(fr.image, conf["gray"], device))
        uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
        for lv in levels:
            m = reduce_and_normalize(maps[lv][0], *pca[lv], float(conf["blur"].get(lv, 0.0)))
            f, _, _ = sample_bilinear(m, pixel_to_level(uv_t, LEVELS[lv][0]), with_grad=False)
            feats_out[lv].append(torch.nn.functional.normalize(f, dim=-1).half().cpu())
        img_ids.append(np.full(len(uv), len(poses), np.int32))
        xyz.append(X_w.astype(np.float32))
        uvs.append(uv.astype(np.float32))
        poses.append(fr.T_world_cam)
        names.append(fr.name)
        kept.append(i)
    if not xyz:
        raise ReferenceBuildError("no reference point could be selected (no valid depth / image gradient)")
    if tri is not None:
        keep = _consistent_entries(tracks, uvs, feats_out, conf)
        xyz, uvs, img_ids, tracks = ([a[k] for a, k in zip(lst, keep)] for lst in (xyz, uvs, img_ids, tracks))
        feats_out = {lv: [a[torch.from_numpy(k)] for a, k in zip(fl, keep)] for lv, fl in feats_out.items()}
    counts = np.array([len(a) for a in xyz])
    tensors = {
        "points_xyz": torch.from_numpy(np.concatenate(xyz)),
        "points_uv": torch.from_numpy(np.concatenate(uvs)),
        "points_image": torch.from_numpy(np.concatenate(img_ids)),
        "image_offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)),
        "image_poses": torch.from_numpy(np.stack(poses).astype(np.float64)),
    }
    if tri is not None:
        tensors["points_track"] = torch.from_numpy(np.concatenate(tracks))
    for lv in levels:
        tensors[f"feat_{lv}"] = torch.cat(feats_out[lv])
        tensors[f"pca_mean_{lv}"], tensors[f"pca_proj_{lv}"] = (t.cpu() for t in pca[lv])
    meta = {
        "features": "xfeat",
        "gray": conf["gray"],
        "levels": levels,
        "strides": {lv: LEVELS[lv][0] for lv in levels},
        "dims": {lv: int(conf["dims"][lv]) for lv in levels},
        "blur": {lv: float(conf["blur"].get(lv, 0.0)) for lv in levels},
        "image_names": names,
        "camera": camera.to_camera_info(),
        "conf": conf,
        "num_points": int(counts.sum()),
        "points_source": "depth" if tri is None else "triangulation",
        "build_seconds": round(time.perf_counter() - t_start, 1),
    }
    if tri is not None:
        meta["triangulation"] = tri.stats
    if conf["point_weights"] is not None:
        from .point_weights import estimate_point_weights
        estimate_point_weights(tensors, meta, _Indexed(dataset, kept), conf["point_weights"], device, net)
    return save_map(out_path, tensors, meta, kind="reference")


@dataclass
class ReferenceModel:
    """A loaded reference model (tensors on ``device``; see the module docstring for their meaning)."""

    points_xyz: torch.Tensor
    points_image: torch.Tensor
    image_offsets: torch.Tensor
    image_poses: torch.Tensor
    features: dict            # level -> (P, D) float32
    pca: dict                 # level -> (mean (C,), proj (C, D))
    levels: list
    strides: dict
    blur: dict                # level -> Gaussian blur std (cells) applied to query maps as to the reference's
    metadata: dict
    gray: str = "mean"        # grayscale conversion of the XFeat input (files without the field used "mean")
    point_weights: torch.Tensor | None = None  # (P,) float32 estimated per-point weights (point_weights.py), or None

    def query_maps(self, raw: dict, levels=None) -> dict:
        """XFeat levels of an image (level -> (1, C, h, w)) as this reference's query-side maps: level -> (h, w, D)
        PCA-reduced with its projection, blurred as its features were, L2-normalised (``levels``: default all)."""
        return {lv: reduce_and_normalize(raw[lv][0], *self.pca[lv], self.blur[lv]) for lv in (levels or self.levels)}

    @property
    def num_images(self) -> int:
        return int(self.image_poses.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.points_xyz.shape[0])


# What a reference model's metadata must hold (JSON Schema; build_reference writes it).
REFERENCE_METADATA_SCHEMA = {
    "type": "object",
    "required": ["levels", "strides", "image_names"],
    "properties": {
        "kind": {"const": "reference"},
        "features": {"const": "xfeat"},
        "gray": {"type": "string"},
        "levels": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "strides": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "blur": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
        "image_names": {"type": "array", "items": {"type": "string"}},
    },
}


def load_reference(source, device: str = "cpu") -> ReferenceModel:
    """From a reference file path or a ``(tensors, metadata)`` pair. Raises ``MapFileError`` / ``ValueError``."""
    if isinstance(source, (str, Path)):
        tensors, meta = load_map(source, device="cpu", kind="reference", schema=REFERENCE_METADATA_SCHEMA)
    else:
        tensors, meta = source
        check_metadata(meta, REFERENCE_METADATA_SCHEMA, "reference model")
    levels = list(meta["levels"])
    unknown = [lv for lv in levels if lv not in meta["strides"]]
    if unknown:
        raise MapFileError(f"{source if isinstance(source, (str, Path)) else 'reference model'}: levels {unknown} "
                           "have no stride in the metadata")
    missing = [k for k in ["points_xyz", "points_image", "image_offsets", "image_poses"]
               + [f"{p}_{lv}" for lv in levels for p in ("feat", "pca_mean", "pca_proj")] if k not in tensors]
    if missing:
        raise ValueError(f"reference model lacks tensors {missing}")
    dev = torch.device(device)
    return ReferenceModel(
        points_xyz=tensors["points_xyz"].to(dev, torch.float64),
        points_image=tensors["points_image"].to(dev, torch.int64),
        image_offsets=tensors["image_offsets"].to(dev, torch.int64),
        image_poses=tensors["image_poses"].to(dev, torch.float64),
        features={lv: tensors[f"feat_{lv}"].to(dev, torch.float32) for lv in levels},
        pca={lv: (tensors[f"pca_mean_{lv}"].to(dev, torch.float32), tensors[f"pca_proj_{lv}"].to(dev, torch.float32))
             for lv in levels},
        levels=levels,
        strides={lv: int(meta["strides"][lv]) for lv in levels},
        blur={lv: float(meta.get("blur", {}).get(lv, 0.0)) for lv in levels},
        metadata=meta,
        gray=str(meta.get("gray", "mean")),
        point_weights=tensors["point_weights"].to(dev, torch.float32) if "point_weights" in tensors else None,
    )

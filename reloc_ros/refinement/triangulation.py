"""3D points of posed mapping images by triangulation with pycolmap, for datasets without usable depth.

hloc-style "triangulation from known poses": SIFT features (``pycolmap.extract_features``), matching of image pairs
chosen from the known poses (the ``num_neighbors`` nearest views of each image by camera distance + viewing angle,
``pycolmap.match_image_pairs`` with geometric verification), then ``pycolmap.triangulate_points`` on a
``pycolmap.Reconstruction`` holding the given cameras and poses and no points (the poses stay fixed; COLMAP refines
only the points). Points are filtered by track length, mean reprojection error and triangulation angle.

Pixel convention: COLMAP puts the pixel-grid origin at the top-left *corner* of the top-left pixel, this repository
at its *centre* (``docs/architecture.md``): ``uv_ours = uv_colmap − 0.5`` (``colmap_to_pixel``), and the principal
point moves the same way (``Camera.to_colmap``; ``Camera.from_colmap`` undoes it).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..conf import merge_conf
from ..geometry.pose import view_distance

__all__ = ["DEFAULT_TRIANGULATION_CONF", "Triangulation", "TriangulationError", "triangulate_dataset",
           "select_pairs", "sift_options", "colmap_to_pixel", "pixel_to_colmap"]

log = logging.getLogger(__name__)

DEFAULT_TRIANGULATION_CONF = {
    "max_features": 4096,          # SIFT keypoints per image
    "sift_first_octave": -1,       # -1 (COLMAP's default) upsamples the image first; 0 is ~3x faster, fewer points
    "num_neighbors": 10,           # each image is matched to its k nearest views (distance + angle)
    "angle_weight_m": 0.5,         # metres per radian of optical-axis angle in the nearest-view score
    "max_pair_angle_deg": 60.0,    # never pair views whose optical axes differ by more than this
    "min_track_length": 3,         # observations per kept point (2 keeps two-view points too)
    "max_reproj_error_px": 2.0,    # mean reprojection error of a kept point (COLMAP's, after its point-only BA)
    "min_tri_angle_deg": 2.0,      # largest angle between two observing rays of a kept point
    "min_points": 50,              # fewer kept points -> TriangulationError
    "num_threads": -1,             # pycolmap threads (-1 = all cores)
}


class TriangulationError(ValueError):
    """The frames cannot be triangulated (no poses, too few images, matches or points)."""


def pixel_to_colmap(uv: np.ndarray) -> np.ndarray:
    """Pixels in this repository's convention (origin at the centre of the top-left pixel) -> COLMAP's (corner)."""
    return np.asarray(uv, dtype=np.float64) + 0.5


def colmap_to_pixel(uv: np.ndarray) -> np.ndarray:
    """COLMAP pixels (origin at the top-left corner) -> this repository's convention (centre of the top-left pixel)."""
    return np.asarray(uv, dtype=np.float64) - 0.5


@dataclass
class Triangulation:
    """Triangulated points and their observations. Observations are sorted by point.

    ``image_indices[j]`` is the index, in the input sequence, of image ``j``; ``obs_image`` refers to ``j``.
    """

    points_xyz: np.ndarray        # (P, 3) float64 world (m)
    reproj_error_px: np.ndarray   # (P,) mean reprojection error of each point (px)
    tri_angle_deg: np.ndarray     # (P,) largest angle between two of its observing rays (deg)
    obs_point: np.ndarray         # (O,) int64 point of each observation
    obs_image: np.ndarray         # (O,) int64 image (index into image_indices) of each observation
    obs_uv: np.ndarray            # (O, 2) float64 keypoint in the repository pixel convention
    image_indices: list           # input-sequence index of each image
    poses: np.ndarray             # (M, 4, 4) T_world_cam of each image
    cameras: list                 # Camera of each image
    stats: dict = field(default_factory=dict)
    obs_keypoint: np.ndarray | None = None  # (O,) int64 index of each observation's keypoint in its image's COLMAP
                                            # keypoint list (database image "{input index:06d}.png")

    @property
    def num_points(self) -> int:
        return int(self.points_xyz.shape[0])

    @property
    def track_length(self) -> np.ndarray:
        """(P,) number of observations of each point."""
        return np.bincount(self.obs_point, minlength=self.num_points)

    def filtered(self, min_track_length: int = 2, max_reproj_error_px: float = np.inf,
                 min_tri_angle_deg: float = 0.0) -> "Triangulation":
        """A copy keeping the points that pass these (stricter) filters, with their observations."""
        keep = ((self.track_length >= min_track_length) & (self.reproj_error_px <= max_reproj_error_px)
                & (self.tri_angle_deg >= min_tri_angle_deg))
        remap = np.cumsum(keep) - 1
        ok = keep[self.obs_point]
        stats = {**self.stats, "points": int(keep.sum()), "observations": int(ok.sum()),
                 "filtered": {"min_track_length": min_track_length, "max_reproj_error_px": max_reproj_error_px,
                              "min_tri_angle_deg": min_tri_angle_deg}}
        return Triangulation(self.points_xyz[keep], self.reproj_error_px[keep], self.tri_angle_deg[keep],
                             remap[self.obs_point[ok]], self.obs_image[ok], self.obs_uv[ok], list(self.image_indices),
                             self.poses, self.cameras, stats,
                             None if self.obs_keypoint is None else self.obs_keypoint[ok])


def sift_options(max_features: int, first_octave: int, num_threads: int):
    """COLMAP's feature-extraction options for SIFT (the triangulation's and the sift front end's queries alike:
    a map and its queries must be extracted the same way). ``num_threads`` -1 = all cores."""
    import pycolmap
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_features)
    opts.sift.first_octave = int(first_octave)
    opts.num_threads = int(num_threads)
    return opts


def select_pairs(poses: np.ndarray, num_neighbors: int, angle_weight_m: float = 0.5,
                 max_angle_deg: float = 60.0) -> list[tuple[int, int]]:
    """Unordered image pairs ``(i, j)``, ``i < j``: each image with its ``num_neighbors`` nearest views by
    ``‖c_i − c_j‖ + angle_weight_m · angle(z_i, z_j)`` (camera centres in m, optical axes in rad), among those whose
    optical axes differ by at most ``max_angle_deg``. ``poses``: (N, 4, 4) ``T_world_cam``."""
    score, ang = view_distance(poses, poses, angle_weight_m)
    score[ang > np.deg2rad(max_angle_deg)] = np.inf
    np.fill_diagonal(score, np.inf)
    pairs = set()
    k = min(int(num_neighbors), len(poses) - 1)
    for i in range(len(poses)):
        for j in np.argsort(score[i], kind="stable")[:k]:
            if np.isfinite(score[i, j]):
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _tri_angles(xyz: np.ndarray, obs_point: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(P,) largest angle (deg) between the rays from the observing camera centres to each point."""
    out = np.zeros(len(xyz))
    rays = xyz[obs_point] - centers
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    starts = np.concatenate([[0], np.cumsum(np.bincount(obs_point, minlength=len(xyz)))])
    for p in range(len(xyz)):
        r = rays[starts[p]:starts[p + 1]]
        out[p] = np.degrees(np.arccos(np.clip((r @ r.T).min(), -1.0, 1.0)))
    return out


def triangulate_dataset(frames, conf: dict | None = None, work_dir=None, progress: bool = True) -> Triangulation:
    """Triangulate the posed ``frames`` (a Sequence of ``Frame`` with ``T_world_cam``) with pycolmap.

    ``work_dir``: where the COLMAP database, images and model go (a temporary folder, deleted afterwards, when
    None). ``progress``: a tqdm bar and COLMAP's own log (else COLMAP logs warnings and errors only). Raises
    ``TriangulationError`` when a frame has no pose, fewer than 2 frames are given, no pair matches, or fewer than
    ``min_points`` points survive the filters.
    """
    import pycolmap

    conf = merge_conf(DEFAULT_TRIANGULATION_CONF, conf, "triangulation")
    if len(frames) < 2:
        raise TriangulationError(f"triangulation needs at least 2 posed images, got {len(frames)}")
    t0 = time.perf_counter()
    tmp = None
    loglevel = pycolmap.logging.minloglevel
    if work_dir is None:
        tmp = work_dir = Path(tempfile.mkdtemp(prefix="reloc_tri_"))
    work_dir = Path(work_dir)
    try:
        if not progress:
            pycolmap.logging.minloglevel = 1  # WARNING
        image_dir = work_dir / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        db_path = work_dir / "database.db"
        if db_path.exists():
            db_path.unlink()
        # 1. Images (written losslessly) grouped by camera, poses.
        names, poses, cameras, groups = [], [], [], {}
        for i in tqdm(range(len(frames)), desc="triangulation: images", disable=not progress, leave=False):
            fr = frames[i]
            if fr.T_world_cam is None or not np.all(np.isfinite(fr.T_world_cam)):
                raise TriangulationError(f"{fr.name}: frame without a pose; triangulation needs known poses")
            if fr.image.shape[:2] != (fr.camera.height, fr.camera.width):
                raise TriangulationError(f"{fr.name}: image is {fr.image.shape[1]}x{fr.image.shape[0]} but its camera "
                                         f"is {fr.camera.width}x{fr.camera.height}")
            name = f"{i:06d}.png"
            cv2.imwrite(str(image_dir / name), cv2.cvtColor(fr.image, cv2.COLOR_RGB2BGR))
            model, params = fr.camera.to_colmap()
            key = (model, fr.camera.width, fr.camera.height, tuple(np.round(params, 9)))
            groups.setdefault(key, []).append(name)
            names.append(name)
            poses.append(np.asarray(fr.T_world_cam, dtype=np.float64))
            cameras.append(fr.camera)
        poses = np.stack(poses)
        # 2. SIFT features, one extraction call per distinct camera (the camera is given, not estimated).
        ext = sift_options(conf["max_features"], conf["sift_first_octave"], conf["num_threads"])
        for (model, _, _, params), group in groups.items():
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = model
            reader.camera_params = ",".join(f"{p:.12g}" for p in params)
            pycolmap.extract_features(db_path, image_dir, image_names=group, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, extraction_options=ext,
                                      device=pycolmap.Device.cpu)
        # 3. Pairs from the known poses, matching + geometric verification.
        pairs = select_pairs(poses, conf["num_neighbors"], conf["angle_weight_m"], conf["max_pair_angle_deg"])
        if not pairs:
            raise TriangulationError("no image pair to match (views too far apart in angle?)")
        pairs_path = work_dir / "pairs.txt"
        pairs_path.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
        mopt = pycolmap.FeatureMatchingOptions()
        mopt.num_threads = int(conf["num_threads"])
        popt = pycolmap.ImportedPairingOptions()
        popt.match_list_path = str(pairs_path)
        log.info("triangulation: matching %d pairs of %d images", len(pairs), len(names))
        pycolmap.match_image_pairs(db_path, matching_options=mopt, pairing_options=popt,
                                   device=pycolmap.Device.cpu)
        # 4. A reconstruction with the known poses and no points; COLMAP triangulates and refines the points only.
        db = pycolmap.Database.open(db_path)
        try:
            n_verified = sum(len(g.inlier_matches) > 0 for g in db.read_two_view_geometries()[1])
            db_images = {im.name: im for im in db.read_all_images()}
            rec = pycolmap.Reconstruction()
            keypoints = {}  # image id -> (K, 2) COLMAP pixels
            for cam in db.read_all_cameras():
                rec.add_camera_with_trivial_rig(cam)
            for name, T in zip(names, poses):
                im = db_images[name]
                T_cw = np.linalg.inv(T)
                kps = keypoints[im.image_id] = db.read_keypoints(im.image_id)[:, :2].astype(np.float64)
                image = pycolmap.Image(name=name, keypoints=kps, camera_id=im.camera_id, image_id=im.image_id)
                rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(T_cw[:3, :4]))
        finally:
            db.close()
        if n_verified == 0:
            raise TriangulationError(f"none of the {len(pairs)} image pairs has verified matches "
                                     "(textureless or unrelated images?)")
        opts = pycolmap.IncrementalPipelineOptions()
        opts.triangulation.ignore_two_view_tracks = int(conf["min_track_length"]) > 2
        opts.triangulation.min_angle = float(conf["min_tri_angle_deg"])
        opts.num_threads = int(conf["num_threads"])
        model_dir = work_dir / "model"
        model_dir.mkdir(exist_ok=True)
        rec = pycolmap.triangulate_points(rec, db_path, image_dir, model_dir, clear_points=True, options=opts)
        # 5. Collect and filter.
        index_of = {rec.find_image_with_name(n).image_id: j for j, n in enumerate(names)}
        xyz, err, obs_p, obs_i, obs_uv, obs_k = [], [], [], [], [], []
        for _, pt in rec.points3D.items():
            els = pt.track.elements
            if len(els) < int(conf["min_track_length"]) or pt.error > float(conf["max_reproj_error_px"]):
                continue
            p = len(xyz)
            xyz.append(pt.xyz)
            err.append(pt.error)
            for el in els:
                obs_p.append(p)
                obs_i.append(index_of[el.image_id])
                obs_uv.append(keypoints[el.image_id][el.point2D_idx])
                obs_k.append(el.point2D_idx)
        n_raw = rec.num_points3D()
        if not xyz:
            raise TriangulationError(f"no point triangulated from {len(names)} images ({n_verified} verified pairs "
                                     f"of {len(pairs)}; {n_raw} raw points before the filters)")
        xyz = np.asarray(xyz, dtype=np.float64)
        obs_p = np.asarray(obs_p, dtype=np.int64)
        obs_i = np.asarray(obs_i, dtype=np.int64)
        obs_uv = colmap_to_pixel(np.asarray(obs_uv))
        order = np.argsort(obs_p, kind="stable")
        obs_p, obs_i, obs_uv = obs_p[order], obs_i[order], obs_uv[order]
        obs_k = np.asarray(obs_k, dtype=np.int64)[order]
        angles = _tri_angles(xyz, obs_p, poses[obs_i, :3, 3])
        keep = angles >= float(conf["min_tri_angle_deg"])
        remap = np.cumsum(keep) - 1
        ok_obs = keep[obs_p]
        tri = Triangulation(xyz[keep], np.asarray(err)[keep], angles[keep], remap[obs_p[ok_obs]], obs_i[ok_obs],
                            obs_uv[ok_obs], list(range(len(frames))), poses, cameras, obs_keypoint=obs_k[ok_obs])
        tri.stats = {"images": len(names), "pairs": len(pairs), "verified_pairs": int(n_verified),
                     "raw_points": int(n_raw), "points": tri.num_points, "observations": int(len(tri.obs_point)),
                     "mean_track_length": round(float(tri.track_length.mean()), 2) if tri.num_points else 0.0,
                     "seconds": round(time.perf_counter() - t0, 1)}
        if tri.num_points < int(conf["min_points"]):
            raise TriangulationError(f"only {tri.num_points} points survived the filters (min_points "
                                     f"{conf['min_points']}): {tri.stats}")
        log.info("triangulation: %s", tri.stats)
        return tri
    finally:
        pycolmap.logging.minloglevel = loglevel
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

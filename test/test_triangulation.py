"""Reference points triangulated with pycolmap from known poses (``refinement/triangulation.py``), on the generated
demo scene (exact poses; its registered depth is only used to check the points): accuracy against the depth,
reprojection and pixel convention, a triangulated reference the refiner converges on, and clear errors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pycolmap
import pytest

from reloc_ros.datasets import open_dataset
from reloc_ros.geometry.camera import Camera
from reloc_ros.geometry.pose import perturb_T, transform_points
from reloc_ros.map_file import load_map, reference_path
from reloc_ros.conf import merge_conf
from reloc_ros.mapping.cli import parse_sets
from reloc_ros.metrics import pose_error
from reloc_ros.refinement import FeaturemetricRefiner, ReferenceBuildError, build_reference
from reloc_ros.refinement import reference as ref_mod
from reloc_ros.refinement.triangulation import (TriangulationError, colmap_to_pixel,
                                                pixel_to_colmap, select_pairs, triangulate_dataset)

STRIDE = 4  # every 4th of the 120 mapping frames: 30 images
# fast settings for the test (first octave 0: no upsampling; 2048 features; 6 neighbours per image)
TRI_CONF = {"sift_first_octave": 0, "max_features": 2048, "num_neighbors": 6, "num_threads": 2}


class _Frames:
    """Every k-th frame of a dataset, optionally with the depth removed (a dataset without depth)."""

    def __init__(self, ds, k, strip_depth=False, n=None):
        self.ds, self.idx, self.strip = ds, list(range(0, len(ds), k))[:n], strip_depth

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        fr = self.ds[self.idx[i]]
        return dataclasses.replace(fr, depth=None, depth_camera=None) if self.strip else fr


@pytest.fixture(scope="module")
def mapping(demo_scene_root):
    return open_dataset(demo_scene_root, frames=demo_scene_root / "mapping.txt")


@pytest.fixture(scope="module")
def tri_work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tri")


@pytest.fixture(scope="module")
def tri(mapping, tri_work_dir):
    return triangulate_dataset(_Frames(mapping, STRIDE), TRI_CONF, work_dir=tri_work_dir, progress=False)


def test_each_observation_names_its_keypoint_in_the_database(tri, tri_work_dir):
    """``obs_keypoint`` indexes the COLMAP keypoints (and descriptors) of image ``{i:06d}.png``: the sift front end
    stores the descriptors of the observations through it."""
    db = pycolmap.Database.open(tri_work_dir / "database.db")
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        kps = [db.read_keypoints(ids[f"{i:06d}.png"])[:, :2] for i in tri.image_indices]
    finally:
        db.close()
    uv = np.stack([kps[i][k] for i, k in zip(tri.obs_image, tri.obs_keypoint)])
    np.testing.assert_allclose(colmap_to_pixel(uv), tri.obs_uv, atol=1e-9)
    kept = tri.filtered(min_track_length=4)
    assert len(kept.obs_keypoint) == len(kept.obs_point) < len(tri.obs_point)


def test_pixel_convention_against_pycolmap_sift():
    # A blob centred on pixel (u, v) of this repository's convention: COLMAP's SIFT reports (u + 0.5, v + 0.5).
    yy, xx = np.mgrid[:200, :240]
    centres = np.array([[60.0, 50.0], [170.0, 140.0], [100.0, 120.0]])
    img = sum(np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 4.0 ** 2)) for u, v in centres)
    img = (img / img.max() * 200 + 20).astype(np.uint8)
    sift = pycolmap.FeatureExtractor.create(pycolmap.FeatureExtractionOptions(), pycolmap.Device.cpu)
    kp = np.array([[k.x, k.y] for k in sift.extract(pycolmap.Bitmap.from_array(img))[0]])
    found = colmap_to_pixel(kp)
    d = np.linalg.norm(found[:, None] - centres[None], axis=-1).min(1)
    assert len(found) >= 3 and np.all(d < 0.05), found
    np.testing.assert_allclose(pixel_to_colmap(colmap_to_pixel(kp)), kp, atol=1e-6)
    # camera: our plumb_bob camera -> COLMAP model -> Camera.from_colmap is the identity, and both project alike
    cam = Camera.from_pinhole(520.0, 515.0, 319.3, 241.7, 640, 480, [0.1, -0.05, 0.001, -0.002, 0.0])
    model, params = cam.to_colmap()
    pc = pycolmap.Camera(model=model, width=640, height=480, params=params)
    back = Camera.from_colmap(pc)
    np.testing.assert_allclose(back.K, cam.K, atol=1e-12)
    np.testing.assert_allclose(back.dist, cam.dist, atol=1e-12)
    X = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0], [0.0, 0.0, 1.0]])
    uv_ours, _ = cam.project(X)
    uv_colmap = pc.img_from_cam(X)
    np.testing.assert_allclose(colmap_to_pixel(uv_colmap), uv_ours, atol=1e-6)
    assert Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480).to_colmap()[0] == "PINHOLE"


def test_select_pairs_from_poses(mapping):
    poses = mapping.poses()[::STRIDE]
    pairs = select_pairs(poses, 4, max_angle_deg=60.0)
    assert all(i < j for i, j in pairs) and len(set(pairs)) == len(pairs)
    deg = np.bincount(np.array(pairs).ravel(), minlength=len(poses))
    assert deg.min() >= 4  # every image has its 4 neighbours (and may be the neighbour of others)
    z = poses[:, :3, 2]
    assert all(np.degrees(np.arccos(np.clip(z[i] @ z[j], -1, 1))) <= 60.0 for i, j in pairs)


def test_triangulated_points_match_depth_and_reproject(mapping, tri):
    frames = _Frames(mapping, STRIDE)
    assert tri.num_points > 1000 and tri.stats["verified_pairs"] > 0.8 * tri.stats["pairs"]
    assert tri.track_length.min() >= 3 and tri.reproj_error_px.max() <= 2.0 and tri.tri_angle_deg.min() >= 2.0
    errs3d, res = [], []
    for j in range(len(frames)):
        fr = frames[j]
        np.testing.assert_allclose(tri.poses[j], fr.T_world_cam)
        m = tri.obs_image == j
        X_c = transform_points(np.linalg.inv(fr.T_world_cam), tri.points_xyz[tri.obs_point[m]])
        uv, ok = fr.camera.project(X_c)
        assert ok.all()
        res.append(uv - tri.obs_uv[m])
        px = np.round(tri.obs_uv[m]).astype(int)
        d = fr.depth[px[:, 1], px[:, 0]]
        X_d = fr.camera.backproject(tri.obs_uv[m][d > 0], d[d > 0])
        errs3d.append(np.linalg.norm(X_d - X_c[d > 0], axis=1))
    res, errs3d = np.concatenate(res), np.concatenate(errs3d)
    r = np.linalg.norm(res, axis=1)
    # every observation reprojects within ~1 px; no systematic offset (a missed ±0.5 px shift would show here)
    assert np.median(r) < 0.3 and np.percentile(r, 95) < 1.2, (np.median(r), np.percentile(r, 95))
    assert np.all(np.abs(res.mean(0)) < 0.05), res.mean(0)
    # the 3D points agree with the scene's exact depth (1-4 m away; measured: median 4.5 mm, 97 % within 5 cm)
    assert np.median(errs3d) < 0.01 and np.mean(errs3d < 0.05) > 0.9, (np.median(errs3d), np.mean(errs3d < 0.05))


@pytest.fixture(scope="module")
def tri_reference(mapping, tri, tmp_path_factory):
    """A reference built with points='auto' from the frames stripped of their depth (it must triangulate), reusing
    the triangulation above (build_reference triangulates them itself when none is given)."""
    path = reference_path(tmp_path_factory.mktemp("tri") / "demo.map.safetensors")
    return build_reference(_Frames(mapping, STRIDE, strip_depth=True), path, {"pca_images": 6}, triangulation=tri)


def test_reference_from_triangulation(mapping, tri_reference):
    tensors, meta = load_map(tri_reference, kind="reference")
    assert meta["points_source"] == "triangulation" and meta["conf"]["points"] == "auto"
    assert meta["triangulation"]["points"] > 1000
    P = meta["num_points"]
    assert tensors["points_xyz"].shape == (P, 3) and tensors["points_track"].shape == (P,)
    offs = tensors["image_offsets"].numpy()
    assert offs[-1] == P and np.all(np.diff(offs) > 100) and np.all(np.diff(offs) <= 256)
    # each stored entry reprojects onto its stored pixel in its own reference image
    for j in (0, len(meta["image_names"]) // 2):
        fr = mapping[mapping.names.index(meta["image_names"][j])]
        s, e = offs[j], offs[j + 1]
        X_c = transform_points(np.linalg.inv(fr.T_world_cam), tensors["points_xyz"][s:e].double().numpy())
        uv, ok = fr.camera.project(X_c)
        assert ok.all() and np.median(np.linalg.norm(uv - tensors["points_uv"][s:e].numpy(), axis=1)) < 0.5


def test_refinement_converges_on_triangulated_reference(demo_scene_root, tri_reference):
    query = open_dataset(demo_scene_root, frames=demo_scene_root / "query.txt")
    refiner = FeaturemetricRefiner.from_reference(tri_reference, "cpu")
    ref_poses = refiner.ref.image_poses.numpy()
    qp = query.poses()
    d = np.linalg.norm(qp[:, None, :3, 3] - ref_poses[None, :, :3, 3], axis=-1)
    ang = np.arccos(np.clip(np.einsum("qi,ri->qr", qp[:, :3, 2], ref_poses[:, :3, 2]), -1, 1))
    rng = np.random.default_rng(0)
    for qi in np.argsort((d + 0.5 * ang).min(1))[:3]:
        fr = query[int(qi)]
        T0 = perturb_T(fr.T_world_cam, 0.04, 1.5, rng)
        res = refiner.refine(fr.image, fr.camera, T0)
        dt, dr = pose_error(res.T_world_cam, fr.T_world_cam)
        assert res.accepted and res.reason == "ok", (fr.name, res.reason, dt, dr)
        assert dt < 0.01 and dr < 0.2, (fr.name, dt, dr)


def test_points_option_and_cli_parsing():
    conf = merge_conf(ref_mod.DEFAULT_CONF, parse_sets(["points=triangulate", "triangulation={max_features: 1024}"]),
                       "reference")
    assert conf["points"] == "triangulate" and conf["triangulation"] == {"max_features": 1024}
    assert ref_mod.DEFAULT_CONF["points"] == "auto"


def test_clear_errors(mapping, tmp_path):
    frames = _Frames(mapping, STRIDE, n=3)
    fr = frames[0]
    # no pose
    unposed = [dataclasses.replace(fr, T_world_cam=None), frames[1]]
    with pytest.raises(TriangulationError, match="without a pose"):
        triangulate_dataset(unposed, TRI_CONF, progress=False)
    with pytest.raises(TriangulationError, match="at least 2"):
        triangulate_dataset([fr], TRI_CONF, progress=False)
    with pytest.raises(ValueError, match="unknown triangulation option"):
        triangulate_dataset([fr, fr], {"max_feature": 10}, progress=False)
    # textureless images: nothing matches
    flat = [dataclasses.replace(frames[i], image=np.full_like(fr.image, 128)) for i in range(3)]
    with pytest.raises(TriangulationError, match="verified matches"):
        triangulate_dataset(flat, TRI_CONF, progress=False)
    # too few points after the filters (and build_reference triangulating by itself passes the error on)
    with pytest.raises(TriangulationError, match="survived the filters"):
        build_reference(frames, tmp_path / "y.ref.safetensors", {"pca_images": 1, "points": "triangulate",
                                                                 "triangulation": {**TRI_CONF, "min_points": 10 ** 6}})
    # unregistered depth with points='auto' keeps the depth error (never silently triangulates)
    dcam = fr.camera.scaled(0.5)
    unreg = [dataclasses.replace(frames[i], depth=frames[i].depth[::2, ::2].copy(), depth_camera=dcam,
                                 T_cam_depth=None) for i in range(2)]
    with pytest.raises(ReferenceBuildError, match="not registered"):
        build_reference(unreg, tmp_path / "x.ref.safetensors", {"pca_images": 1})
    with pytest.raises(ValueError, match="points must be"):
        build_reference(unreg, tmp_path / "x.ref.safetensors", {"pca_images": 1, "points": "lidar"})

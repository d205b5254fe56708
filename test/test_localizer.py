"""Localizer: front end through a real map file, its calibrated uncertainty, the extra floor, clear input errors."""
import numpy as np
import pytest

from reloc_ros.datasets import open_dataset
from reloc_ros.geometry import Camera
from reloc_ros.localizer import InputImageError, Localizer
from reloc_ros.map_file import MapFileError
from reloc_ros.metrics import pose_error
from reloc_ros.uncertainty import support_features


def test_localize_applies_the_maps_calibration_and_the_extra_floor(demo_map_ace, demo_scene_root):
    path, names = demo_map_ace
    frame = open_dataset(demo_scene_root, frames=names[:1])[0]
    bare = Localizer.from_map(path, position_sigma_floor_m=0.0, rotation_sigma_floor_deg=0.0)
    floored = Localizer.from_map(path, position_sigma_floor_m=0.03, rotation_sigma_floor_deg=0.75)
    a, b = bare.localize(frame.image, frame.camera), floored.localize(frame.image, frame.camera)
    assert a.success and b.success and bare.front_end_name == "ace"
    t, r = pose_error(b.T_world_cam, frame.T_world_cam)
    assert t < 0.05 and r < 2.0  # default options (bf16 head, USAC) on the overfitted map: ~1-2 cm
    expected = np.diag([0.03 ** 2] * 3 + [np.deg2rad(0.75) ** 2] * 3)
    np.testing.assert_allclose(b.covariance - a.covariance, expected, rtol=1e-6, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(b.covariance) > 0)
    assert {"network", "solver", "total"} <= set(b.timings_ms)
    # the fixture map is calibrated (reloc-calibrate on 18 other frames): its front_end stage is applied
    assert bare.uncertainty_warning is None and "front_end" in bare.calibration
    np.testing.assert_allclose(a.covariance, bare.calibration["front_end"].covariance(a.raw_covariance))
    assert np.trace(a.covariance) > 10 * np.trace(a.raw_covariance)
    # its confidence: the calibration's logistic model of this covariance and support (the value itself, 0.2-0.6 on
    # this 6-frame map's own frames, depends on how the CPU's precision trained the map: test_gating.py)
    support = support_features(a, a.raw_covariance)
    assert 0 < a.confidence == pytest.approx(bare.calibration["front_end"].confidence(a.covariance, support), abs=1e-12)


def test_an_uncalibrated_map_is_flagged(demo_map_ace, tmp_path):
    """A map without the "uncertainty" entry (built before it, or with --calibration-holdout 0) loads, says so in
    uncertainty_warning, and publishes the estimator's own covariance."""
    from reloc_ros.map_file import load_map, save_map
    tensors, meta = load_map(demo_map_ace[0])
    meta.pop("uncertainty")
    save_map(tmp_path / "m.map.safetensors", tensors, meta)
    loc = Localizer.from_map(tmp_path / "m.map.safetensors")
    assert "no uncertainty calibration for front_end" in loc.uncertainty_warning and not loc.calibration


def test_the_covariance_grows_with_the_distance_to_the_mapped_views(demo_map_ace, demo_scene_root, tmp_path):
    """With a reference model beside the map, each pose gets its distance to the nearest mapped view (the
    reference images' centres) and the calibration's growth applies; without it, the map is flagged."""
    import shutil

    from reloc_ros.map_file import read_metadata, reference_path, update_metadata
    from reloc_ros.refinement import build_reference
    from reloc_ros.uncertainty import nearest_view_distance

    path, names = demo_map_ace
    m = tmp_path / "m.map.safetensors"
    shutil.copy(path, m)
    entry = read_metadata(m)["uncertainty"]
    entry["stages"]["front_end"]["growth_per_m"] = 20.0
    update_metadata(m, {"uncertainty": entry})
    mapping = open_dataset(demo_scene_root, frames=names)
    build_reference(mapping, reference_path(m), {"pca_images": 6})
    mapped = (demo_scene_root / "mapping.txt").read_text().split()
    frame = open_dataset(demo_scene_root, frames=[mapped[30]])[0]     # between two mapped views (every 20th)
    loc = Localizer.from_map(m)
    r = loc.localize(frame.image, frame.camera)
    centres = np.array([f.T_world_cam[:3, 3] for f in mapping])
    assert r.success and r.view_distance_m == pytest.approx(nearest_view_distance(r.T_world_cam, centres), abs=1e-6)
    assert 0.01 < r.view_distance_m < 1.0
    cal = loc.calibration["front_end"]
    np.testing.assert_allclose(r.covariance, cal.covariance(r.raw_covariance) * (1 + 20.0 * r.view_distance_m) ** 2,
                               rtol=1e-9)
    # the confidence is the calibration's model of the covariance before the growth (uncertainty.Calibration)
    support = support_features(r, r.raw_covariance)
    assert r.confidence == pytest.approx(cal.confidence(cal.covariance(r.raw_covariance), support), abs=1e-12)
    assert loc.uncertainty_warning is None
    reference_path(m).unlink()
    bare = Localizer.from_map(m)
    assert "reference model (their poses) is missing" in bare.uncertainty_warning
    assert bare.localize(frame.image, frame.camera).view_distance_m is None


def test_bad_inputs_get_clear_errors(demo_map_ace, tmp_path):
    path, _ = demo_map_ace
    loc = Localizer.from_map(path)
    cam = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480)
    with pytest.raises(InputImageError, match="image is 320x240 but the camera intrinsics are for 640x480"):
        loc.localize(np.zeros((240, 320, 3), np.uint8), cam)
    with pytest.raises(InputImageError, match=r"expected an \(H, W, 3\) uint8 RGB image, got float32"):
        loc.localize(np.zeros((480, 640, 3), np.float32), cam)
    with pytest.raises(MapFileError, match="no reference model"):
        Localizer.from_map(path, refine=True)
    with pytest.raises(RuntimeError, match="refine=True"):
        loc.refine_from_prior(np.zeros((480, 640, 3), np.uint8), cam, np.eye(4))


def test_ace_and_refiner_share_one_xfeat_pass(demo_map_ace, demo_scene_root, tmp_path):
    """With a BT.601 reference, the ACE front end's XFeat pass also yields the refiner's levels: they equal the
    refiner's own pass, and the refined pose is the same either way. A legacy mean-gray reference is not shared."""
    import torch

    from reloc_ros.refinement import build_reference
    from reloc_ros.refinement.features import rgb_to_gray

    path, names = demo_map_ace
    mapping = open_dataset(demo_scene_root, frames=names)
    ref = build_reference(mapping, tmp_path / "bt601.ref.safetensors", {"pca_images": 6})
    # fp32 encoder: the shared levels equal the refiner's own fp32 pass exactly
    loc = Localizer.from_map(path, refine=True, reference=ref,
                             front_end_options={"encoder_precision": "fp32", "encoder_backend": "torch"},
                             refiner_options={"feature_precision": "fp32"})
    assert loc.shares_features
    frame = mapping[2]
    # The map runs at 240 rows: feed a 320x240 image so that the front end does not resize it.
    small = frame.image[::2, ::2].copy()
    cam = frame.camera.scaled(0.5)
    fe = loc.front_end.localize(small, cam)
    assert fe.success and set(fe.dense_features) == set(loc.refiner.levels)
    own = loc.refiner.net(rgb_to_gray(small, "bt601"))
    for lv in loc.refiner.levels:
        torch.testing.assert_close(fe.dense_features[lv], own[lv])
    # (the reference is at 640x480, so this half-size query is not expected to align well: same outcome either way)
    a = loc.refiner.refine(small, cam, fe.T_world_cam, raw_features=fe.dense_features)
    b = loc.refiner.refine(small, cam, fe.T_world_cam)
    assert a.reason == b.reason and a.iterations == b.iterations > 0
    np.testing.assert_allclose(a.T_refined, b.T_refined, atol=1e-9)
    full = loc.localize(small, cam)
    assert full.success and full.dense_features is None and full.refinement.ran
    # A resized image: nothing to share (the levels would not be at the image's resolution).
    assert loc.front_end.localize(frame.image, frame.camera).dense_features is None
    # the encoder through onnxruntime shares its levels too: the same to float rounding
    by_ort = Localizer.from_map(path, refine=True, reference=ref, front_end_options={
        "encoder_precision": "fp32", "encoder_backend": "onnxruntime"}).front_end.localize(small, cam).dense_features
    for lv in loc.refiner.levels:
        torch.testing.assert_close(by_ort[lv], own[lv], atol=1e-4 * float(own[lv].abs().max()), rtol=0)
    # and so does the map's exported encoder graph (backend onnxruntime, reloc-export's level_* outputs)
    exported = Localizer.from_map(path, refine=True, reference=ref, backend="onnxruntime")
    assert exported.shares_features
    by_graph = exported.front_end.localize(small, cam).dense_features
    for lv in loc.refiner.levels:
        torch.testing.assert_close(by_graph[lv], own[lv], atol=1e-4 * float(own[lv].abs().max()), rtol=0)
    # the default encoder (bf16 where auto picks it): the same levels to bf16 precision (float32 tensors)
    shared = Localizer.from_map(path, refine=True, reference=ref).front_end.localize(small, cam).dense_features
    for lv in loc.refiner.levels:
        assert shared[lv].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(shared[lv], own[lv], dim=1)
        assert cos.mean() > 0.99, (lv, float(cos.mean()))
    ref_mean = build_reference(mapping, tmp_path / "mean.ref.safetensors", {"pca_images": 6, "gray": "mean"})
    assert not Localizer.from_map(path, refine=True, reference=ref_mean).shares_features


@pytest.mark.parametrize("device, message", [
    ("banana", r"device 'banana' is not a torch device \(expected 'cpu', 'cuda' or 'cuda:N'\)"),
    ("cuda", r"device 'cuda' requested but (this torch build has no CUDA|no CUDA GPU is visible)"),
    ("cuda:99", r"device 'cuda:99'"),
    ("mps", r"device 'mps': only 'cpu' and 'cuda\[:N\]' are supported"),
])
def test_bad_device_is_refused_before_loading(demo_map_ace, device, message):
    import torch
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=message):
        Localizer.from_map(demo_map_ace[0], device=device)


def test_read_only_images_localize_without_warnings(demo_map_ace, demo_scene_root, tmp_path):
    """np.asarray(PIL image) is read-only: every tensor entry point copies instead of warning."""
    import warnings

    from reloc_ros.frontends.implicit.model import normalize_images
    from reloc_ros.xfeat import rgb_to_gray
    frame = open_dataset(demo_scene_root, frames=demo_map_ace[1][:1])[0]
    image = frame.image.copy()
    image.flags.writeable = False
    loc = Localizer.from_map(demo_map_ace[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loc.localize(image, frame.camera).success
        assert normalize_images(image).shape == (1, 3, 480, 640)
        assert rgb_to_gray(image).shape == (1, 1, 480, 640)

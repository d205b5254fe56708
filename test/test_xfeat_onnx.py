"""The XFeat backbone through onnxruntime (reloc_ros/xfeat_onnx.py) gives the torch features, is exported once into
the cache, and the ACE front end's encoder_backend option chooses it as documented."""
import numpy as np
import pytest
import torch

from reloc_ros.metrics import pose_error
from reloc_ros.xfeat import XFeatPyramid
from reloc_ros.xfeat_onnx import OnnxXFeatPyramid

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def pyramid():
    return XFeatPyramid(("fused", "heat", "x2", "b1"))


def test_same_features_as_torch_on_an_unpadded_and_a_padded_size(pyramid, tmp_path, demo_scene_root):
    from reloc_ros.datasets import open_dataset
    from reloc_ros.xfeat import rgb_to_gray
    frame = open_dataset(demo_scene_root)[0]
    ort = OnnxXFeatPyramid(pyramid, cache_dir=tmp_path)
    for h, w in ((frame.image.shape[0], frame.image.shape[1]), (100, 130)):  # 130 / 100: padded to 160 x 128
        gray = rgb_to_gray(np.ascontiguousarray(frame.image[:h, :w]))
        with torch.no_grad():
            ref = pyramid(gray)
        got = ort(gray)
        assert set(got) == set(ref)
        for lv in ref:
            assert got[lv].shape == ref[lv].shape, lv
            scale = float(ref[lv].abs().max())
            np.testing.assert_allclose(got[lv].numpy(), ref[lv].float().numpy(), atol=1e-4 * max(scale, 1.0))  # fp32 sums in another order
    files = sorted(tmp_path.glob("*.onnx"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    OnnxXFeatPyramid(pyramid, cache_dir=tmp_path)(gray)  # a new instance loads the cached graph
    assert [f.stat().st_mtime_ns for f in sorted(tmp_path.glob("*.onnx"))] == mtimes
    with pytest.raises(ValueError, match=r"expected a \(1, 1, H, W\)"):
        ort(torch.zeros(2, 1, 64, 64))


def test_ace_front_end_backends_agree(demo_map_ace, demo_scene_root):
    from reloc_ros.datasets import open_dataset
    from reloc_ros.localizer import Localizer
    map_path, names = demo_map_ace
    frames = list(open_dataset(demo_scene_root, frames=names[:3]))
    opts = {"encoder_precision": "fp32"}
    by_torch = Localizer.from_map(map_path, front_end_options={**opts, "encoder_backend": "torch"})
    by_ort = Localizer.from_map(map_path, front_end_options={**opts, "encoder_backend": "onnxruntime"})
    assert by_torch.backends == {} and by_ort.backends == {"ace_encoder": "onnxruntime"}
    for f in frames:
        a, b = by_torch.localize(f.image, f.camera), by_ort.localize(f.image, f.camera)
        assert a.success and b.success
        dt, dr = pose_error(a.T_world_cam, b.T_world_cam)
        assert dt < 1e-3 and dr < 0.05, (f.name, dt, dr)
        assert abs(a.inlier_count - b.inlier_count) <= max(3, 0.01 * a.inlier_count)
    auto = Localizer.from_map(map_path, front_end_options=opts)  # fp32 on the CPU with onnxruntime installed
    assert auto.backends == {"ace_encoder": "onnxruntime"}


def test_bad_backend_requests_are_refused(demo_map_ace):
    from reloc_ros.localizer import Localizer
    map_path, _ = demo_map_ace
    with pytest.raises(ValueError, match="encoder_backend must be 'auto', 'torch' or 'onnxruntime'"):
        Localizer.from_map(map_path, front_end_options={"encoder_backend": "tensorrt"})
    with pytest.raises(ValueError, match="runs the XFeat encoder in fp32 on the CPU"):
        Localizer.from_map(map_path, front_end_options={"encoder_precision": "bf16", "encoder_backend": "onnxruntime"})

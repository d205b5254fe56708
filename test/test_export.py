"""reloc-export (reloc_ros/export.py): a map's query-time networks as ONNX graphs whose onnxruntime outputs equal
torch's, a manifest that describes and hashes them, and clear errors before any file is written."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from reloc_ros.export import export_map

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(demo_map_ace, demo_scene_root, tmp_path_factory):
    """fp32, fp16 and int8 (calibrated on 32 frames of the demo scene's mapping frames)."""
    from reloc_ros.export import calibration_images
    out = tmp_path_factory.mktemp("export")
    return out, export_map(demo_map_ace[0], out, precisions=("fp32", "fp16", "int8"), progress=False,
                           int8_images=calibration_images(demo_scene_root, 32))


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_manifest_describes_and_hashes_every_graph(exported, demo_map_ace):
    out, manifest = exported
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["front_end"] == "ace" and manifest["opset"] == 18
    assert set(manifest["graphs"]) == {"ace_encoder", "ace_head"}
    for name, g in manifest["graphs"].items():
        for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2), ("int8", 0.5)):
            f = out / g[precision]["file"]
            assert hashlib.sha256(f.read_bytes()).hexdigest() == g[precision]["sha256"]
            worst = max(v["max_rel"] for v in g[precision]["parity_vs_torch_fp32"].values())
            assert worst < tol, (name, precision, worst)
    assert manifest["graphs"]["ace_encoder"]["inputs"]["gray"]["shape"] == [1, 1, 240, 320]   # the map's height, 4:3
    assert manifest["map_sha256"] == hashlib.sha256(demo_map_ace[0].read_bytes()).hexdigest()


def test_exported_graphs_give_the_front_ends_scene_coordinates_on_a_real_frame(exported, demo_map_ace,
                                                                                demo_scene_root):
    """A demo frame through the ACE front end (torch, fp32, every cell) and through the two graphs: the same
    scene coordinates (fp32 to 0.1 mm, fp16 to 1 cm; int8 a 2 cm median, its tail longer, on this ~2 m scene)."""
    from reloc_ros.datasets import open_dataset
    from reloc_ros.frontends.ace.encoders import rgb_to_gray_tensor
    from reloc_ros.localizer import Localizer
    out, _ = exported
    path, names = demo_map_ace
    loc = Localizer.from_map(path, front_end_options={"encoder_precision": "fp32", "head_precision": "fp32",
                                                      "encoder_backend": "torch", "cell_stride": 1})
    frame = open_dataset(demo_scene_root, frames=names[:1])[0]
    image = frame.image[::2, ::2].copy()                     # the map's 240 rows: no resize in the front end
    _, X_torch, _, _ = loc.front_end.predict(image, frame.camera.scaled(0.5))
    gray = rgb_to_gray_tensor(image, "cpu").numpy()
    for precision, tol_median, tol_p99 in (("fp32", 5e-5, 1e-4), ("fp16", 5e-3, 1e-2), ("int8", 3e-2, 0.3)):
        feats = _session(out / f"ace_encoder.{precision}.onnx").run(None, {"gray": gray})[0]
        f = feats[0].reshape(feats.shape[1], -1).T
        (X,) = _session(out / f"ace_head.{precision}.onnx").run(None, {"features": np.ascontiguousarray(f)})
        d = np.linalg.norm(X - X_torch, axis=1)
        assert np.median(d) < tol_median and np.quantile(d, 0.99) < tol_p99, (precision, np.median(d), d.max())


def test_bad_input_is_refused_before_anything_is_written(demo_map_ace, tmp_path):
    from reloc_ros.map_file import load_map, save_map
    code = "import sys; from reloc_ros.export import main; sys.exit(main())"
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *map(str, a)], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    p = run("--map", demo_map_ace[0], "--out", tmp_path / "a", "--image-size", "480x640")
    assert p.returncode == 2 and "differs from the map's image height 240" in p.stderr and not (tmp_path / "a").exists()
    p = run("--map", demo_map_ace[0], "--out", tmp_path / "b", "--precisions", "fp16")
    assert p.returncode == 2 and "must include 'fp32'" in p.stderr
    p = run("--map", demo_map_ace[0], "--out", tmp_path / "b", "--precisions", "fp32,int8")
    assert p.returncode == 2 and "int8 precision needs frames of the mapped scene" in p.stderr
    p = run("--map", demo_map_ace[0], "--out", tmp_path / "b", "--precisions", "fp32,int8", "--int8-images",
            tmp_path / "nope")
    assert p.returncode == 2 and "--int8-images" in p.stderr and "no such" in p.stderr
    assert not (tmp_path / "b").exists()
    p = run("--map", tmp_path / "missing.map.safetensors", "--out", tmp_path / "c")
    assert p.returncode == 2 and "--map" in p.stderr and "no such file" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "file").write_text("x")
    p = run("--map", demo_map_ace[0], "--out", tmp_path / "file")
    assert p.returncode == 2 and "is an existing file, expected a folder" in p.stderr
    p = run("--map", demo_map_ace[0], "--out", tmp_path / "d", "--image-size", "240x")
    assert p.returncode == 2 and "expected HxW" in p.stderr
    tensors, meta = load_map(demo_map_ace[0])
    meta["front_end"] = "sift"
    save_map(tmp_path / "s.map.safetensors", {"x": torch.zeros(1)}, meta)
    p = run("--map", tmp_path / "s.map.safetensors", "--out", tmp_path / "e")
    assert p.returncode == 2 and "'sift' has no network to export" in p.stderr


def test_the_implicit_network_exports_with_the_same_outputs(tmp_path):
    """A tiny MobileNetV3 implicit map (HardSwish: opset >= 14): the graph's scene / depth / weight equal torch's."""
    from test_implicit import _tiny_map

    from reloc_ros.frontends.implicit.model import normalize_images
    net, path, _ = _tiny_map(tmp_path)
    manifest = export_map(path, tmp_path / "out", progress=False)
    g = manifest["graphs"]["implicit_network"]
    assert g["inputs"]["image"]["shape"] == [1, 3, 48, 64] and g["outputs"] == ["scene", "depth", "weight"]
    x = normalize_images(np.random.default_rng(0).integers(0, 255, (1, 48, 64, 3), dtype=np.uint8),
                         channels_last=False)
    with torch.no_grad():
        ref = net(x)
    got = _session(tmp_path / "out" / g["fp32"]["file"]).run(None, {"image": x.numpy()})
    for name, arr in zip(g["outputs"], got):
        np.testing.assert_allclose(arr, ref[name].numpy(), rtol=0, atol=1e-4 * float(ref[name].abs().max()))


def test_the_localizer_runs_the_exported_graphs(exported, demo_map_ace, demo_scene_root, tmp_path):
    """``network_backend: onnxruntime`` (from a reloc-export folder or the user cache): the same poses as torch fp32,
    no calibration warning (a runtime option), and clear errors for another map's folder or a missing provider."""
    import shutil

    from reloc_ros.datasets import open_dataset
    from reloc_ros.localizer import Localizer
    from reloc_ros.metrics import pose_error
    out, _ = exported
    path, names = demo_map_ace
    frames = open_dataset(demo_scene_root, frames=names[:3])
    torch32 = Localizer.from_map(path, front_end_options={"encoder_precision": "fp32", "head_precision": "fp32",
                                                          "encoder_backend": "torch"})
    small = lambda f: (f.image[::2, ::2].copy(), f.camera.scaled(0.5))  # noqa: E731  (the export's 240x320)
    for kwargs in ({"front_end_options": {"network_backend": "onnxruntime", "onnx_dir": str(out)}},
                   {"backend": "onnxruntime"}):   # the second: exported into the user cache
        loc = Localizer.from_map(path, **kwargs)
        assert loc.backends == {"ace_encoder": "onnxruntime", "ace_head": "onnxruntime"}
        assert loc.precision == {"ace_encoder": "fp32", "ace_head": "fp32"} and loc.uncertainty_warning is None
        for f in frames:
            a, b = torch32.localize(*small(f)), loc.localize(*small(f))
            assert a.success and b.success
            ta, ra = pose_error(a.T_world_cam, f.T_world_cam)
            tb, rb = pose_error(b.T_world_cam, f.T_world_cam)
            assert abs(ta - tb) < 2e-3 and abs(ra - rb) < 0.1, (ta, tb, ra, rb)
    # int8 (calibrated at export on demo mapping frames): lossy, the poses within 10 cm of torch's (3-6 cm here;
    # the refinement takes them back to the fp32 figures: benchmarks/RESULTS_export.md)
    loc8 = Localizer.from_map(path, backend="onnxruntime", front_end_options={"onnx_dir": str(out),
                                                                             "onnx_precision": "int8"})
    assert loc8.precision == {"ace_encoder": "int8", "ace_head": "int8"}
    for f in frames:
        a, b = torch32.localize(*small(f)), loc8.localize(*small(f))
        assert b.success and np.linalg.norm(b.T_world_cam[:3, 3] - a.T_world_cam[:3, 3]) < 0.1
    with pytest.raises(ValueError, match="onnx_precision 'int8' needs onnx_dir: a folder made by reloc-export"):
        Localizer.from_map(path, backend="onnxruntime", front_end_options={"onnx_precision": "int8"})
    import cv2
    wide = cv2.resize(frames[0].image, (720, 480))            # 3:2: the ACE front end makes it 240x360
    with pytest.raises(ValueError, match="takes 240x320 images, the query is 240x360"):
        Localizer.from_map(path, front_end_options={"network_backend": "onnxruntime", "onnx_dir": str(out)}).localize(
            wide, frames[0].camera.resized(720, 480))
    other = tmp_path / "other.map.safetensors"
    shutil.copy(path, other)
    from reloc_ros.map_file import load_map, save_map
    tensors, meta = load_map(other)
    tensors["head.fc3.bias"] = tensors["head.fc3.bias"] + 1.0
    save_map(other, tensors, meta)
    with pytest.raises(ValueError, match="exported from another map"):
        Localizer.from_map(other, front_end_options={"network_backend": "onnxruntime", "onnx_dir": str(out)})
    missing = [n for n in ("tensorrt", "cuda") if not {"tensorrt": "TensorrtExecutionProvider",
                                                       "cuda": "CUDAExecutionProvider"}[n]
               in onnxruntime.get_available_providers()]
    if missing:
        with pytest.raises(ValueError, match=r"not available in this onnxruntime .*install onnxruntime-gpu"):
            Localizer.from_map(path, front_end_options={"network_backend": "onnxruntime", "onnx_providers": missing})
    with pytest.raises(ValueError, match="backend 'onnxruntime' contradicts the front-end option network_backend"):
        Localizer.from_map(path, backend="onnxruntime", front_end_options={"network_backend": "torch"})
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'onnxruntime'\), got 'tensorrt'"):
        Localizer.from_map(tmp_path / "not_read.map.safetensors", backend="tensorrt")   # before reading the map
    with pytest.raises(ValueError, match="unknown onnx_providers"):
        Localizer.from_map(path, front_end_options={"network_backend": "onnxruntime", "onnx_providers": ["npu"]})


def test_the_implicit_front_end_runs_its_exported_graph(tmp_path):
    from test_implicit import _tiny_map

    from reloc_ros.frontends.implicit.frontend import ImplicitFrontEnd
    from reloc_ros.geometry import Camera
    from reloc_ros.map_file import load_map
    _, path, _ = _tiny_map(tmp_path)
    tensors, meta = load_map(path)
    cam = Camera.from_pinhole(80.0, 80.0, 63.5, 47.5, 128, 96)
    img = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    a = ImplicitFrontEnd.from_map(tensors, meta, precision="fp32", min_weight_mass=0.0).localize(img, cam)
    fe = ImplicitFrontEnd.from_map(tensors, meta, min_weight_mass=0.0, network_backend="onnxruntime")
    b = fe.localize(img, cam)
    assert fe.backends == {"implicit_network": "onnxruntime"} and a.success and b.success
    np.testing.assert_allclose(b.T_world_cam, a.T_world_cam, atol=1e-4)
    np.testing.assert_allclose(b.covariance, a.covariance, rtol=1e-2, atol=1e-12)


def test_backend_options_follow_the_registry():
    """``backend`` maps onto the front-end option ``network_backend`` where the front end has one; a front end with
    torch only (the SIFT peer) takes "torch" as a no-op and refuses "onnxruntime" in one line."""
    from reloc_ros.frontends.registry import front_end_spec
    from reloc_ros.localizer import backend_options
    ace, sift = front_end_spec("ace"), front_end_spec("sift")
    assert ace.backends == ("torch", "onnxruntime") == front_end_spec("implicit").backends
    assert backend_options(ace, None, {}) == {} and backend_options(sift, "torch", {}) == {}
    assert backend_options(ace, "torch", {}) == {"network_backend": "torch"}
    assert backend_options(ace, "onnxruntime", {"onnx_dir": "x"}) == {"network_backend": "onnxruntime"}
    with pytest.raises(ValueError, match="backend 'onnxruntime': the sift front end runs on torch only"):
        backend_options(sift, "onnxruntime", {})

"""Dataset readers: real 7-Scenes, the demo scene, Cambridge and COLMAP round trips, clear errors on bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from reloc_ros.datasets import DatasetError, detect_layout, open_dataset
from reloc_ros.datasets.cambridge import write_cambridge_split


def _orthonormal(P, atol=1e-12):
    R = P[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=atol)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=atol)


@pytest.mark.shared_data
def test_seven_scenes_real(seven_scenes_root):
    ds = open_dataset(seven_scenes_root, frames="mapping.txt")
    assert len(ds) == 500 and ds.names[100] == "frame-000200"
    np.testing.assert_allclose(ds.camera.K, [[525, 0, 320], [0, 525, 240], [0, 0, 1]])
    assert ds.camera.size == (640, 480)
    P = ds.poses()
    assert P.shape == (500, 4, 4)
    _orthonormal(P)  # raw files are ~1e-4 off SO(3); the reader projects them
    raw = np.loadtxt(seven_scenes_root / "frame-000000.pose.txt")
    assert np.abs(P[0] - raw).max() < 1e-3
    f = ds[101]
    assert f.name == "frame-000201" and f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8
    np.testing.assert_array_equal(f.T_world_cam, P[101])
    # the Kinect depth is not registered to the RGB image: its own camera, unknown extrinsic
    assert f.depth.dtype == np.float32 and f.depth.shape == (480, 640)
    np.testing.assert_allclose(f.depth_camera.K[0, 0], 585)
    assert f.T_cam_depth is None
    assert f.depth.max() < 10 and (f.depth == 0).any()  # 65535 (invalid) became 0
    q = open_dataset(seven_scenes_root, frames=seven_scenes_root / "query.txt")
    assert len(q) == 400 and not set(q.names) & set(ds.names)


def test_demo_scene_reader(demo_scene_root):
    ds = open_dataset(demo_scene_root)
    assert len(ds) == 160 and detect_layout(demo_scene_root) == "7scenes"
    np.testing.assert_allclose(ds.camera.K, [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
    sub = open_dataset(demo_scene_root, frames=["frame-000003.color.jpg", "frame-000130"])
    assert sub.names == ["frame-000003", "frame-000130"]
    f = sub[1]
    np.testing.assert_array_equal(f.T_world_cam, ds.poses()[130])
    assert f.depth_camera is f.camera and np.array_equal(f.T_cam_depth, np.eye(4))
    assert len(sub[0:2]) == 2 and sub[-1].name == "frame-000130"
    with pytest.raises(IndexError):
        sub[2]


def test_errors_name_file_and_problem(small_scene, tmp_path):
    root = small_scene
    open_dataset(root)[2]  # intact
    (root / "frame-000001.pose.txt").rename(root / "frame-000001.pose.bak")
    with pytest.raises(DatasetError, match=r"frame-000001\.pose\.txt: pose file is missing"):
        open_dataset(root)
    (root / "frame-000001.pose.bak").rename(root / "frame-000001.pose.txt")

    with pytest.raises(DatasetError, match=r"frame-000007.*listed but its image is missing"):
        open_dataset(root, frames=["frame-000000", "frame-000007"])

    T = np.loadtxt(root / "frame-000002.pose.txt")
    T[:3, :3] *= 1.2
    np.savetxt(root / "frame-000002.pose.txt", T)
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match=r"frame-000002\.pose\.txt: rotation block is not orthonormal"):
        ds.poses()
    with pytest.raises(DatasetError, match=r"frame-000002\.pose\.txt"):
        ds[2]
    np.savetxt(root / "frame-000002.pose.txt", T[:3])
    with pytest.raises(DatasetError, match=r"frame-000002\.pose\.txt: expected 16 numbers"):
        ds[2]

    (root / "frame-000001.color.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"frame-000001\.color\.jpg: unreadable image"):
        ds[1]

    import cv2

    img = cv2.imread(str(root / "frame-000000.color.jpg"))
    cv2.imwrite(str(root / "frame-000001.color.jpg"), img[:240, :320])
    with pytest.raises(DatasetError, match=r"frame-000001\.color\.jpg: image is 320x240, expected 640x480"):
        ds[1]

    (root / "rgb-intrinsics.txt").unlink()
    with pytest.raises(DatasetError, match=r"no intrinsics.*rgb-intrinsics\.txt"):
        open_dataset(root)
    kfile = tmp_path / "K.txt"
    np.savetxt(kfile, [[500, 0, 1000], [0, 500, 240], [0, 0, 1]])
    with pytest.raises(DatasetError, match=r"K\.txt: principal point .* outside the 640x480 image"):
        open_dataset(root, intrinsics=kfile)
    np.savetxt(kfile, [[400, 0, 320], [0, 400, 240], [0, 0, 1]])
    assert open_dataset(root, intrinsics=kfile).camera.fx == 400
    kfile.write_text("400 400 320")
    with pytest.raises(DatasetError, match=r"K\.txt: expected 9 numbers"):
        open_dataset(root, intrinsics=kfile)

    with pytest.raises(DatasetError, match="unrecognised dataset layout"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "nope")


def test_cambridge_round_trip(demo_scene_root, tmp_path):
    src = open_dataset(demo_scene_root, frames=[f"frame-{i:06d}" for i in (0, 5, 10, 125)])
    root = tmp_path / "cambridge"
    (root / "seq1").mkdir(parents=True)
    names = []
    for n in src.names:
        shutil.copy(demo_scene_root / f"{n}.color.jpg", root / "seq1" / f"{n}.jpg")
        names.append(f"seq1/{n}.jpg")
    P = src.poses()
    write_cambridge_split(root / "dataset_train.txt", names[:3], P[:3])
    write_cambridge_split(root / "dataset_test.txt", names[3:], P[3:])
    # the file holds camera centre + quaternion (w, x, y, z) of the world-to-camera rotation
    line = (root / "dataset_train.txt").read_text().splitlines()[3].split()
    np.testing.assert_allclose(np.array(line[1:4], float), P[0][:3, 3])
    from scipy.spatial.transform import Rotation

    w, x, y, z = np.array(line[4:], float)
    np.testing.assert_allclose(Rotation.from_quat([x, y, z, w]).as_matrix(), P[0][:3, :3].T, atol=1e-12)

    assert detect_layout(root) == "cambridge"
    with pytest.raises(DatasetError, match="hold no intrinsics"):
        open_dataset(root)
    train = open_dataset(root, intrinsics=demo_scene_root / "rgb-intrinsics.txt")
    test = open_dataset(root, frames="test", focal=500.0)
    assert len(train) == 3 and len(test) == 1
    np.testing.assert_allclose(train.poses(), P[:3], atol=1e-9)
    np.testing.assert_allclose(test[0].T_world_cam, P[3], atol=1e-9)
    np.testing.assert_allclose(test.camera.K, src.camera.K)  # image centre = (W-1)/2, (H-1)/2
    np.testing.assert_array_equal(train[1].image, src[1].image)

    bad = root / "dataset_bad.txt"
    bad.write_text("h\nh\n\nseq1/frame-000000.jpg 1 2 3 2 0 0 0\n")
    with pytest.raises(DatasetError, match=r"dataset_bad\.txt:4: quaternion norm 2 is not 1"):
        open_dataset(root, frames=str(bad), focal=500.0)
    bad.write_text("h\nh\n\nseq1/missing.jpg 1 2 3 1 0 0 0\n")
    with pytest.raises(DatasetError, match=r"missing\.jpg: image listed in .*dataset_bad\.txt is missing"):
        open_dataset(root, frames=str(bad), focal=500.0)


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_colmap_round_trip(demo_scene_root, tmp_path, fmt):
    import pycolmap

    src = open_dataset(demo_scene_root, frames=[f"frame-{i:06d}" for i in (0, 7, 121)])
    root = tmp_path / "colmap"
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (root / "images").mkdir()
    rec = pycolmap.Reconstruction()
    K = src.camera.K
    # COLMAP's principal point is measured from the corner of the top-left pixel (+0.5 vs OpenCV)
    cam = pycolmap.Camera(model="PINHOLE", width=640, height=480,
                          params=[K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    P = src.poses()
    for k, n in enumerate(src.names):
        shutil.copy(demo_scene_root / f"{n}.color.jpg", root / "images" / f"{n}.jpg")
        T_cw = np.linalg.inv(P[k])
        img = pycolmap.Image(name=f"{n}.jpg", camera_id=1, image_id=k + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(T_cw[:3, :4]))
    (rec.write_binary if fmt == "binary" else rec.write_text)(str(model))
    assert detect_layout(root) == "colmap"
    ds = open_dataset(root)
    assert ds.names == [f"{n}.jpg" for n in src.names]
    np.testing.assert_allclose(ds.poses(), P, atol=1e-9)
    np.testing.assert_allclose(ds.camera.K, K, atol=1e-12)
    f = ds[2]
    np.testing.assert_array_equal(f.image, src[2].image)
    np.testing.assert_allclose(f.T_world_cam, P[2], atol=1e-9)
    one = open_dataset(root, frames=["frame-000007.jpg"])
    assert one.names == ["frame-000007.jpg"]
    # a frame-list file selects by the model's own names, with or without the extension
    (root / "list.txt").write_text("frame-000121.jpg\nframe-000000  # by stem\n")
    listed = open_dataset(root, frames="list.txt")
    assert listed.names == ["frame-000121.jpg", "frame-000000.jpg"]
    np.testing.assert_allclose(listed.poses(), P[[2, 0]], atol=1e-9)
    with pytest.raises(DatasetError, match=r"not in the dataset, e\.g\. \['frame-000099.jpg'\]"):
        open_dataset(root, frames=["frame-000099.jpg"])
    (root / "images" / "frame-000121.jpg").unlink()
    with pytest.raises(DatasetError, match=r"frame-000121\.jpg: image file is missing"):
        ds[2]

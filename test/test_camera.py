"""Camera model: projection / back-projection / undistortion round trips against OpenCV, CameraInfo and COLMAP."""
import cv2
import numpy as np
import pycolmap
import pytest

from reloc_ros.geometry import Camera, InvalidCameraError

DIST = np.array([-0.28, 0.09, 1e-3, -5e-4, -0.01])


def random_points(rng, n=500):
    return np.stack([rng.uniform(-1.2, 1.2, n), rng.uniform(-0.9, 0.9, n), rng.uniform(0.5, 6, n)], -1)


@pytest.mark.parametrize("dist", [np.zeros(5), DIST])
def test_project_matches_opencv_and_backprojects(dist):
    rng = np.random.default_rng(0)
    cam = Camera.from_pinhole(525, 520, 320.3, 241.1, 640, 480, dist)
    X = random_points(rng) * [0.5, 0.5, 1]
    uv, valid = cam.project(X)
    assert valid.all()
    ref, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), cam.K, cam.dist)
    np.testing.assert_allclose(uv, ref[:, 0], atol=1e-9)
    np.testing.assert_allclose(cam.backproject(uv, X[:, 2]), X, atol=1e-6)


def test_undistort_points_gives_pinhole_pixels():
    rng = np.random.default_rng(1)
    cam = Camera.from_pinhole(525, 525, 320, 240, 640, 480, DIST)
    pin = Camera.from_pinhole(525, 525, 320, 240, 640, 480)
    X = random_points(rng) * [0.5, 0.5, 1]
    np.testing.assert_allclose(cam.undistort_points(cam.project(X)[0]), pin.project(X)[0], atol=1e-5)


def test_points_behind_camera_are_invalid():
    cam = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480)
    _, valid = cam.project(np.array([[0, 0, 1.0], [0, 0, -1.0], [0, 0, 0.0]]))
    assert valid.tolist() == [True, False, False]


def test_camera_info_round_trip_and_errors():
    cam = Camera.from_pinhole(525, 525, 320, 240, 640, 480, DIST)
    info = cam.to_camera_info()
    back = Camera.from_camera_info(info)
    np.testing.assert_array_equal(back.K, cam.K)
    np.testing.assert_array_equal(back.dist, cam.dist)
    assert back.size == (640, 480)
    # upper-case keys and empty D are accepted (CameraInfo without distortion)
    c2 = Camera.from_camera_info({"K": info["k"], "D": [], "width": 640, "height": 480})
    assert not c2.is_distorted
    bad = dict(info, k=[0.0] * 9)
    with pytest.raises(InvalidCameraError, match="focal lengths must be positive"):
        Camera.from_camera_info(bad)
    bad = dict(info, k=[np.nan] + info["k"][1:])
    with pytest.raises(InvalidCameraError, match="NaN"):
        Camera.from_camera_info(bad)
    with pytest.raises(InvalidCameraError, match="equidistant"):
        Camera.from_camera_info(dict(info, distortion_model="equidistant"))


def test_scaled_camera_matches_resized_image_geometry():
    cam = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480)
    small = cam.scaled(0.5)
    assert small.size == (320, 240)
    # the centre of the image stays the centre; a point's pixel scales with the pixel-centre convention
    np.testing.assert_allclose([small.cx, small.cy], [159.5, 119.5])
    X = np.array([[0.3, -0.2, 2.0]])
    u_big = cam.project(X)[0][0]
    u_small = small.project(X)[0][0]
    np.testing.assert_allclose(u_small, (u_big + 0.5) * 0.5 - 0.5, atol=1e-12)
    grid = small.pixel_grid(8)
    assert grid.shape == (40 * 30, 2) and np.allclose(grid[0], [3.5, 3.5])


@pytest.mark.parametrize("model,params", [("PINHOLE", [525, 520, 320.5, 240.5]),
                                          ("SIMPLE_RADIAL", [525, 320.5, 240.5, 0.01]),
                                          ("OPENCV", [525, 520, 320.5, 240.5, -0.2, 0.05, 1e-3, 2e-3])])
def test_from_colmap_projects_like_colmap(model, params):
    cc = pycolmap.Camera(model=model, width=640, height=480, params=params)
    cam = Camera.from_colmap(cc)
    rng = np.random.default_rng(2)
    X = random_points(rng, 50) * [0.4, 0.4, 1]
    ours = cam.project(X)[0]
    theirs = cc.img_from_cam(X)  # COLMAP pixels: origin at the top-left corner of the image
    np.testing.assert_allclose(ours, np.asarray(theirs) - 0.5, atol=1e-6)


@pytest.mark.parametrize("info, message", [
    ({"width": 640, "height": 480, "k": [500.0] * 8}, r"K must be 3x3 \(9 values, row-major\), got 8 values"),
    ({"height": 480, "k": [500, 0, 320, 0, 500, 240, 0, 0, 1]}, r"camera info has no 'width' \(image size\)"),
    ({"width": 640.5, "height": 480, "k": [500, 0, 320, 0, 500, 240, 0, 0, 1]},
     r"image width must be an integer number of pixels, got 640\.5"),
    ({"width": "wide", "height": 480, "k": [500, 0, 320, 0, 500, 240, 0, 0, 1]}, r"got 'wide'"),
    ({"width": 640, "height": 480, "k": ["a"] * 9}, r"K must be numbers"),
    ({"width": 640, "height": 480, "k": [500, 0, 320, 0, 500, 240, 0, 0, 1], "d": ["x"]}, r"distortion must be numbers"),
])
def test_malformed_camera_info_is_one_clear_error(info, message):
    with pytest.raises(InvalidCameraError, match=message):
        Camera.from_camera_info(info)
    assert Camera.from_camera_info({"width": 640.0, "height": 480, "k": [500, 0, 320, 0, 500, 240, 0, 0, 1]}).width == 640

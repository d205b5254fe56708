"""The pose conventions (docs/architecture.md), tested once: T_world_cam is camera-to-world, OpenCV axes,
quaternions (x, y, z, w), covariance in world (x y z rx ry rz)."""
import numpy as np
import pytest
import torch

from reloc_ros.geometry import Camera
from reloc_ros.geometry.pose import (NonRigidTransformError, T_from_pos_quat, covariance_right_to_world,
                                     covariance_to_body_point, invert_T, make_T, perturb_T, pos_quat_from_T,
                                     project_to_so3, rotation_angle_deg, se3_exp_right, so3_exp, so3_exp_torch,
                                     transform_points, validate_rigid, view_distance)


def look_at(center, target, up=(0, 0, 1)):
    """T_world_cam of an OpenCV camera at ``center`` looking at ``target`` (z forward, y down)."""
    z = np.asarray(target, float) - center
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_T(np.stack([x, y, z], 1), center)


def test_T_world_cam_is_camera_to_world_with_opencv_axes():
    # A camera at (1, 2, 0.5) looking along +x of a z-up world: a world point 3 m ahead is on the optical axis.
    T_world_cam = look_at(np.array([1.0, 2.0, 0.5]), np.array([4.0, 2.0, 0.5]))
    cam = Camera.from_pinhole(500, 500, 319.5, 239.5, 640, 480)
    X_world = np.array([[4.0, 2.0, 0.5], [4.0, 2.0, 1.5]])  # on the axis; 1 m above it
    X_cam = transform_points(invert_T(T_world_cam), X_world)
    np.testing.assert_allclose(X_cam[0], [0, 0, 3], atol=1e-12)
    uv, valid = cam.project(X_cam)
    assert valid.all()
    np.testing.assert_allclose(uv[0], [319.5, 239.5], atol=1e-9)  # principal point = pixel centre
    assert uv[1, 1] < 239.5  # a point above the axis is higher in the image (smaller v: y down)
    np.testing.assert_allclose(T_world_cam[:3, 3], [1.0, 2.0, 0.5])  # translation = camera centre


def test_quaternion_order_is_xyzw_and_round_trips():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45)
    T = T_from_pos_quat([1, 2, 3], [0, 0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(T[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
        p, q = pos_quat_from_T(T)
        np.testing.assert_allclose(T_from_pos_quat(p, q), T, atol=1e-12)


def test_invert_and_compose_round_trip():
    rng = np.random.default_rng(1)
    T = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    np.testing.assert_allclose(invert_T(T) @ T, np.eye(4), atol=1e-12)
    X = rng.normal(size=(10, 3))
    np.testing.assert_allclose(transform_points(invert_T(T), transform_points(T, X)), X, atol=1e-12)


def test_rotation_angle_is_accurate_near_zero_and_large():
    R = so3_exp([0, 0, 1e-5])
    assert rotation_angle_deg(np.eye(3), R) == pytest.approx(np.degrees(1e-5), rel=1e-6)
    R = so3_exp([0, np.deg2rad(170), 0])
    assert rotation_angle_deg(np.eye(3), R) == pytest.approx(170, abs=1e-9)
    # a slightly non-orthonormal rotation (as in 7-Scenes pose files) still reads ~0 error against itself
    noisy = np.eye(3) + 1e-4 * np.random.default_rng(0).normal(size=(3, 3))
    assert rotation_angle_deg(noisy, noisy) < 1e-6


def test_validate_rigid_projects_and_rejects():
    rng = np.random.default_rng(2)
    T = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    noisy = T.copy()
    noisy[:3, :3] += 1e-4 * rng.normal(size=(3, 3))
    fixed = validate_rigid(noisy, "pose.txt")
    np.testing.assert_allclose(fixed[:3, :3].T @ fixed[:3, :3], np.eye(3), atol=1e-12)
    bad = T.copy()
    bad[:3, :3] *= 2
    with pytest.raises(NonRigidTransformError, match="frame-1.pose.txt: rotation block is not orthonormal"):
        validate_rigid(bad, "frame-1.pose.txt")
    bad = T.copy()
    bad[3] = [0, 0, 1, 1]
    with pytest.raises(NonRigidTransformError, match="last row"):
        validate_rigid(bad, "x")
    with pytest.raises(NonRigidTransformError, match="NaN"):
        validate_rigid(np.full((4, 4), np.nan), "x")
    with pytest.raises(NonRigidTransformError, match="shape"):
        validate_rigid(np.eye(3), "x")
    refl = np.eye(4)
    refl[2, 2] = -1
    with pytest.raises(NonRigidTransformError, match="reflection"):
        validate_rigid(refl, "x")


def test_perturb_has_exact_magnitudes():
    rng = np.random.default_rng(3)
    T = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    P = perturb_T(T, 0.2, 7.0, rng)
    assert np.linalg.norm(P[:3, 3] - T[:3, 3]) == pytest.approx(0.2)
    assert rotation_angle_deg(T[:3, :3], P[:3, :3]) == pytest.approx(7.0)


def test_covariance_right_to_world_matches_sampled_perturbations():
    """Sample right perturbations with a known covariance, measure (δc, δθ) in the world convention, compare."""
    rng = np.random.default_rng(4)
    T = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    A = rng.normal(size=(6, 6)) * 1e-3
    cov_right = A @ A.T
    xi = rng.multivariate_normal(np.zeros(6), cov_right, size=20000)
    dev = []
    for x in xi:
        P = se3_exp_right(T, x)
        dc = P[:3, 3] - T[:3, 3]
        dth = Rotation_log(P[:3, :3] @ T[:3, :3].T)
        dev.append(np.concatenate([dc, dth]))
    emp = np.cov(np.array(dev).T)
    pred = covariance_right_to_world(T, cov_right)
    assert_cov_close(emp, pred, len(xi))


def assert_cov_close(emp, pred, n):
    """Sample covariance vs prediction, within 5 standard errors of each entry."""
    sd = np.sqrt(np.outer(np.diag(pred), np.diag(pred)) / n) * np.sqrt(2)
    assert np.all(np.abs(emp - pred) <= 5 * sd + 1e-12), np.abs(emp - pred) / sd


def Rotation_log(R):
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(R).as_rotvec()


def test_covariance_to_body_point_matches_sampling():
    rng = np.random.default_rng(5)
    T_world_cam = make_T(so3_exp(rng.normal(size=3)), rng.normal(size=3))
    T_cam_body = make_T(so3_exp(rng.normal(size=3)), [0.3, -0.2, 0.5])
    A = rng.normal(size=(6, 6)) * 1e-3
    cov = A @ A.T
    d = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    dev = []
    T_wb = T_world_cam @ T_cam_body
    for x in d:
        P = T_world_cam.copy()
        P[:3, :3] = so3_exp(x[3:]) @ T_world_cam[:3, :3]
        P[:3, 3] += x[:3]
        Pb = P @ T_cam_body
        dev.append(np.concatenate([Pb[:3, 3] - T_wb[:3, 3], Rotation_log(Pb[:3, :3] @ T_wb[:3, :3].T)]))
    emp = np.cov(np.array(dev).T)
    assert_cov_close(emp, covariance_to_body_point(T_world_cam, cov, T_cam_body), len(d))


def test_so3_exp_torch_matches_scipy_and_has_gradients():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(5, 3))
    w[0] = 0
    w[1] = 1e-7
    R = so3_exp_torch(torch.tensor(w)).numpy()
    for i in range(5):
        np.testing.assert_allclose(R[i], so3_exp(w[i]), atol=1e-10)
    wt = torch.tensor(w[2:], requires_grad=True)
    assert torch.autograd.gradcheck(so3_exp_torch, (wt,))


def test_project_to_so3_is_identity_on_rotations():
    R = so3_exp([0.3, -0.2, 1.0])
    np.testing.assert_allclose(project_to_so3(R), R, atol=1e-12)


def test_view_distance_against_hand_computed_values():
    """``view_distance``: centre distance plus angle_weight_m × the angle between the optical axes, for every pair."""
    a = make_T(np.eye(3), np.zeros(3))
    b = make_T(so3_exp(np.array([0.0, np.pi / 2, 0.0])), np.array([1.0, 0.0, 0.0]))  # 1 m away, axes 90° apart
    score, angle = view_distance(np.stack([a, b]), np.stack([a, b, a]), 0.5)
    assert score.shape == angle.shape == (2, 3)
    np.testing.assert_allclose(angle, [[0, np.pi / 2, 0], [np.pi / 2, 0, np.pi / 2]], atol=1e-7)
    np.testing.assert_allclose(score, [[0, 1 + 0.25 * np.pi, 0], [1 + 0.25 * np.pi, 0, 1 + 0.25 * np.pi]],
                               atol=1e-7)



"""Node paths over real DDS, each node in its own process: the localizer with ``sensor_msgs/CompressedImage`` input,
its covariance-floor parameters (at configure and on ~/reload_map), the ``on_demand`` and ``max_rate`` processing
modes, the robot_localization set-up (``publish_tf`` false, ~/pose only), ``/initialpose`` in (refine-from-prior) and out (Nav2 re-initialisation after a loss); the mapper's
``~/build_map`` service end to end.

One localizer process serves the three localizer tests, in file order (the first checks the floor given at
configure; each then sets the run-time parameters it needs and the last switches refinement on); the map is the
shared ACE head overfitted to 6 demo-scene frames (``demo_map_ace``) plus a refinement reference model of those
frames built here (~1 s).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from reloc_ros.geometry.pose import covariance_to_body_point, invert_T, perturb_T, pos_quat_from_T
from reloc_ros.metrics import pose_error
from ros_helpers import Client, env, ns  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]
NAME = "reloc_localizer_paths"
LOST_TIMEOUT = 1.5  # s without an accepted pose before the next one is re-published on /initialpose
FLOOR = (0.5, 10.0)  # (m, deg) at configure: far above the estimator's own uncertainty on these frames (~mm)


@pytest.fixture(scope="module")
def frames(demo_map_ace, demo_scene_root):
    """The 6 demo-scene frames the map was trained on (image, camera, ground-truth T_world_cam)."""
    from reloc_ros.datasets import open_dataset
    return list(open_dataset(demo_scene_root, frames=demo_map_ace[1]))


@pytest.fixture(scope="module")
def map_with_reference(demo_map_ace, frames, tmp_path_factory):
    """The shared map (linked into a folder of this module) and a reference model of its frames beside it."""
    from reloc_ros.map_file import reference_path
    from reloc_ros.refinement import build_reference
    path = tmp_path_factory.mktemp("paths_map") / demo_map_ace[0].name
    path.symlink_to(demo_map_ace[0].resolve())
    build_reference(frames, reference_path(path), {"pca_images": len(frames)})
    return path


class LocalizerSession:
    """The localizer process, a client, and helpers to feed it frames (JPEG on image/compressed)."""

    def __init__(self, env, map_path, frames, log_path):
        from reloc_ros.datasets.bag_writer import T_BASE_CAMERA
        from reloc_ros.ros.runner import start_localizer
        self.frames, self.T_base_cam, self.map_path = frames, T_BASE_CAMERA, map_path
        p, q = pos_quat_from_T(T_BASE_CAMERA)
        self.h = start_localizer(
            REPO / "config" / "localizer.yaml",
            {"map_path": str(map_path), "image_transport": "compressed", "image_qos": "reliable", "queue_depth": 20,
             "min_confidence": 0.0, "min_inliers": 20, "odom_frame": "", "camera_to_base": [float(v) for v in (*p, *q)],
             "tf_republish_rate": 0.0, "publish_initialpose": True, "lost_timeout": LOST_TIMEOUT,
             "position_sigma_floor": FLOOR[0], "rotation_sigma_floor_deg": FLOOR[1], "diagnostics_period": 0.5},
            env=env, name=NAME, remaps={"image/compressed": "/cam/image/compressed", "camera_info": "/cam/camera_info"},
            log_path=log_path)
        self.cl = None
        try:
            self._start(env, frames)
        except BaseException:
            self.close()  # never leave the node process behind
            raise

    def _start(self, env, frames):
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from sensor_msgs.msg import CameraInfo, CompressedImage
        self.cl = Client(int(env["ROS_DOMAIN_ID"]), NAME)
        self.initialposes = self.cl.record(PoseWithCovarianceStamped, "/initialpose", 10)
        self.h.wait_active(timeout=180)
        self.img_pub = self.cl.publisher(CompressedImage, "/cam/image/compressed")
        self.info_pub = self.cl.publisher(CameraInfo, "/cam/camera_info")
        self.prior_pub = self.cl.publisher(PoseWithCovarianceStamped, "/initialpose")
        self.cl.wait_matched([self.img_pub, self.info_pub], 30, "the localizer's image/compressed and camera_info")
        # /initialpose: the node's subscription and this client's own
        self.cl.wait_matched([self.prior_pub], 30, "the localizer's /initialpose subscription", count=2)
        self.info = CameraInfo(**frames[0].camera.to_camera_info())
        self.stamp = 10_000_000_000
        self.CompressedImage = CompressedImage
        # camera_info and images are separate topics: probe with undecodable images until the node has the camera
        for _ in range(50):
            if self.status(self.send(0, data=b"\x00" * 16)).reason != "no_camera_info":
                break

    def send(self, i: int, data: bytes | None = None, fmt: str = "jpeg") -> int:
        """Publish frame ``i`` as a JPEG (or ``data`` as given) with a fresh stamp; returns the stamp (ns)."""
        from reloc_ros.ros.conversions import ns_to_stamp
        self.stamp += 100_000_000
        if data is None:
            data = self.jpeg(i)
        m = self.CompressedImage(format=fmt, data=data)
        m.header.stamp = ns_to_stamp(self.stamp, type(m.header.stamp))
        m.header.frame_id = "camera_optical"
        self.info.header.stamp = m.header.stamp
        self.info_pub.publish(self.info)
        self.img_pub.publish(m)
        return self.stamp

    def jpeg(self, i: int) -> bytes:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(self.frames[i].image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        return buf.tobytes()

    def status(self, stamp: int, timeout: float = 60.0):
        self.cl.wait(lambda: any(ns(x.header.stamp) == stamp for x in self.cl.statuses), timeout, f"status of {stamp}")
        with self.cl.lock:
            return next(x for x in self.cl.statuses if ns(x.header.stamp) == stamp)

    def pose(self, stamp: int, timeout: float = 10.0):
        """(T_map_cam from the published base pose, 6×6 base covariance, the message) of the image ``stamp``."""
        from reloc_ros.ros.conversions import covariance_from_ros, pose_to_T
        self.cl.wait(lambda: any(ns(p.header.stamp) == stamp for p in self.cl.poses), timeout, f"pose of {stamp}")
        with self.cl.lock:
            msg = next(p for p in self.cl.poses if ns(p.header.stamp) == stamp)
        assert msg.header.frame_id == "map"
        return pose_to_T(msg.pose.pose) @ self.T_base_cam, covariance_from_ros(msg.pose.covariance), msg

    def call(self, srv: str, timeout: float = 60.0):
        from std_srvs.srv import Trigger
        return self.cl.call(Trigger, f"/{NAME}/{srv}", timeout=timeout)

    def close(self):
        try:
            self.h.stop()
        finally:
            if self.cl is not None:
                self.cl.close()


@pytest.fixture(scope="module")
def loc(env, map_with_reference, frames, tmp_path_factory):
    s = LocalizerSession(env, map_with_reference, frames, tmp_path_factory.mktemp("paths_log") / "localizer.log")
    try:
        yield s
    finally:
        s.close()


def test_compressed_input_and_covariance_floor_at_configure_and_reload(loc):
    """JPEG frames on image/compressed localize to the ground truth; ~/pose's covariance carries the floor given at
    configure, and a floor set at run time applies on ~/reload_map: against the floor-free covariance of the same
    image, the difference is exactly the floor propagated to base_link. Undecodable / wrong-size images are
    rejected with their reason."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    covs, T = {}, {}
    for floor in (FLOOR, (0.0, 0.0), (0.2, 3.0)):
        if floor != FLOOR:
            loc.cl.set_params(NAME, position_sigma_floor=floor[0], rotation_sigma_floor_deg=floor[1])
            r = loc.call("reload_map")
            assert r.success and "ace" in r.message, r.message
        s = loc.send(0)
        st = loc.status(s)
        assert st.accepted and st.reason == "ok" and st.front_end == "ace", (st.reason, st.inlier_count)
        assert not st.refinement_ran and st.refinement_reason == st.refinement_init == ""  # refine is off here
        T[floor], covs[floor], _ = loc.pose(s)
        dt, dr = pose_error(T[floor], loc.frames[0].T_world_cam)
        assert dt < 0.1 and dr < 5.0, (dt, dr)  # the map's own accuracy on this frame: a few cm (offline)
        assert st.sigma_position_m >= 0.99 * np.sqrt(3) * floor[0]
    np.testing.assert_allclose(T[FLOOR], T[(0.0, 0.0)], atol=1e-9)  # the front end is deterministic
    # the compressed path adds nothing: the same pose as the core on the decoded JPEG, in this process
    from reloc_ros.localizer import Localizer
    f = loc.frames[0]
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(loc.jpeg(0), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    offline = Localizer.from_map(loc.map_path).localize(rgb, f.camera)
    np.testing.assert_allclose(T[FLOOR], offline.T_world_cam, atol=1e-9)
    for floor in (FLOOR, (0.2, 3.0)):
        F = np.diag([floor[0] ** 2] * 3 + [np.deg2rad(floor[1]) ** 2] * 3)
        expected = covariance_to_body_point(T[floor], F, invert_T(loc.T_base_cam))
        np.testing.assert_allclose(covs[floor] - covs[(0.0, 0.0)], expected, atol=1e-9)
    # the floor is a standard deviation: negative values are refused by the node
    req = SetParameters.Request(parameters=[Parameter("position_sigma_floor", value=-0.1).to_parameter_msg()])
    res = loc.cl.call(SetParameters, f"/{NAME}/set_parameters", req)
    assert not res.results[0].successful and "out of range; expected >= 0" in res.results[0].reason
    # bytes that are no image, and a valid PNG of another size than camera_info's
    assert loc.status(loc.send(0, data=b"\x00" * 1000)).reason == "bad_encoding"
    ok, png = cv2.imencode(".png", np.zeros((240, 320, 3), np.uint8))
    assert loc.status(loc.send(0, data=png.tobytes(), fmt="png")).reason == "size_mismatch"
    assert loc.h.alive(), loc.h.log_tail()


def _relocalize(loc, i: int):
    """Call ~/relocalize and send frame ``i`` until it answers; returns (response, the sent frames' reasons)."""
    from std_srvs.srv import Trigger
    fut = loc.cl.call_async(Trigger, f"/{NAME}/relocalize")
    time.sleep(0.3)  # the request reaches the node before the next frame
    sent = [loc.send(i)]
    for _ in range(3):  # on a loaded machine the request may still reach the node after the frame: send another
        try:
            loc.cl.wait(fut.done, 3.0, "the relocalize response")
            break
        except AssertionError:
            sent.append(loc.send(i))
    loc.cl.wait(fut.done, 30, "the relocalize response")
    reasons = [loc.status(s).reason for s in sent]
    if "ok" in reasons:
        loc.pose(sent[reasons.index("ok")])  # an accepted frame is published on ~/pose
    return fut.result(), reasons


def test_on_demand_and_max_rate_modes(loc):
    """on_demand: frames are dropped as 'idle' until ~/relocalize, which localizes exactly the next frame and
    answers with its outcome. max_rate: frames within 1/max_rate s of the last processed one are 'rate_limited',
    unless a ~/relocalize request is pending."""
    from std_srvs.srv import Trigger
    cl = loc.cl
    try:
        cl.set_params(NAME, mode="on_demand")
        for i in (2, 3):
            st = loc.status(loc.send(i))
            assert st.reason == "idle" and not st.accepted
        res, reasons = _relocalize(loc, 4)
        assert res.success and res.message == "ok", res.message
        assert reasons.count("ok") == 1 and set(reasons) - {"ok"} <= {"idle"}, reasons
        assert loc.status(loc.send(5)).reason == "idle"  # one frame per request
        # a request that times out is withdrawn: the next frame is not processed for nobody
        cl.set_params(NAME, relocalize_timeout=0.5)
        res = cl.call(Trigger, f"/{NAME}/relocalize")
        assert not res.success and res.message.startswith("timeout"), res.message
        assert loc.status(loc.send(2)).reason == "idle"
        cl.set_params(NAME, relocalize_timeout=10.0)

        cl.set_params(NAME, mode="continuous", max_rate=0.5)
        time.sleep(2.1)  # > 1 / max_rate since the last processed frame
        assert loc.status(loc.send(2)).reason == "ok"
        assert [loc.status(loc.send(i)).reason for i in (3, 4)] == ["rate_limited"] * 2
        res, reasons = _relocalize(loc, 5)  # a request overrides the rate limit
        assert res.success and reasons.count("ok") == 1 and set(reasons) - {"ok"} <= {"rate_limited"}, \
            (res.message, reasons)
        time.sleep(2.1)
        assert loc.status(loc.send(3)).reason == "ok"
    finally:
        cl.set_params(NAME, mode="continuous", max_rate=0.0)


def test_robot_localization_setup_pose_without_tf(loc):
    """The README's robot_localization set-up: with publish_tf false the node publishes no transform (the EKF owns
    map->odom) and ~/pose alone carries the base pose in the map frame with a covariance robot_localization can
    gate on: symmetric, positive definite, and the ground truth inside the documented pose0_rejection_threshold
    (Mahalanobis distance 5). With publish_tf true the same frame's pose is on /tf too."""
    from scipy.spatial.transform import Rotation

    from reloc_ros.ros.params import LOCALIZER_PARAMS
    cl = loc.cl

    tolerance_ns = int(next(p.default for p in LOCALIZER_PARAMS if p.name == "transform_tolerance") * 1e9)

    def tf_at(stamp):  # the frame's map->base_link (post-dated); called under cl.lock by cl.wait: takes no lock
        return [t for m in list(cl.tf) for t in m.transforms if t.header.frame_id == "map"
                and ns(t.header.stamp) == stamp + tolerance_ns]
    try:
        s = loc.send(1)
        assert loc.status(s).accepted
        loc.pose(s)
        cl.wait(lambda: bool(tf_at(s)), 10, "map->base_link on /tf with publish_tf true")
        cl.set_params(NAME, publish_tf=False)
        s = loc.send(1)
        T_map_cam, cov, msg = loc.pose(s)
        time.sleep(1.0)
        assert not tf_at(s), "a transform was published with publish_tf false"
        assert msg.header.frame_id == "map" and len(msg.pose.covariance) == 36
        np.testing.assert_allclose(cov, cov.T, atol=1e-12)
        assert np.linalg.eigvalsh(cov).min() > 0
        T_gt = loc.frames[1].T_world_cam @ invert_T(loc.T_base_cam)
        T_est = T_map_cam @ invert_T(loc.T_base_cam)
        dth = (Rotation.from_matrix(T_gt[:3, :3]) * Rotation.from_matrix(T_est[:3, :3]).inv()).as_rotvec()
        e = np.r_[T_gt[:3, 3] - T_est[:3, 3], dth]
        assert float(np.sqrt(e @ np.linalg.solve(cov, e))) < 5.0
    finally:
        cl.set_params(NAME, publish_tf=True)


def test_initialpose_prior_is_refined_and_lost_recovery_publishes_initialpose(loc):
    """With refine on (set at run time, applied by ~/reload_map; refiner_options that are not JSON refused on set, a bad option by the reload): a base pose on /initialpose 4 cm / 1.5 deg off is
    refined from the prior (no front end) to the ground truth; that pose follows a loss, so the node publishes it on
    /initialpose, and it never takes its own /initialpose as a prior. A prior in another frame is ignored."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    from reloc_ros.ros.conversions import T_to_pose, ns_to_stamp, pose_to_T
    cl = loc.cl
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    bad = Parameter("refiner_options", value='{"max_points": 1024').to_parameter_msg()  # not JSON: refused on set
    res = cl.call(SetParameters, f"/{NAME}/set_parameters", SetParameters.Request(parameters=[bad])).results[0]
    assert not res.successful and res.reason.startswith("parameter refiner_options: ") and "JSON" in res.reason
    cl.set_params(NAME, refine=True, refiner_options='{"max_points": 1024, "lm_backend": "banana"}')
    r = loc.call("reload_map")  # valid JSON, a bad option: the reload says so and keeps the old map
    assert not r.success and "lm_backend" in r.message, r.message
    cl.set_params(NAME, refiner_options='{"max_points": 1024, "lm_backend": "numba"}')
    r = loc.call("reload_map")
    assert r.success, r.message

    def prior(T_map_cam, frame_id="map"):
        m = PoseWithCovarianceStamped()
        m.header.stamp = ns_to_stamp(1_000_000_000, type(m.header.stamp))
        m.header.frame_id = frame_id
        T_to_pose(T_map_cam @ invert_T(loc.T_base_cam), m.pose.pose)
        loc.prior_pub.publish(m)
        time.sleep(0.3)  # /initialpose and the image are separate topics

    n0 = len(loc.initialposes)
    gt = loc.frames[1].T_world_cam
    T_prior = perturb_T(gt, 0.04, 1.5, np.random.default_rng(0))
    time.sleep(LOST_TIMEOUT + 0.1)  # the next accepted pose follows a loss
    prior(T_prior)
    s = loc.send(1)
    st = loc.status(s)
    assert st.accepted and st.front_end == "prior", (st.reason, st.front_end)
    assert st.refinement_ran and st.refinement_accepted and st.inlier_count == 0
    # a prior is refined with the matching initialisation competing (refine_from_prior): either start may win
    assert st.refinement_reason == "ok" and st.refinement_init in ("prior", "matches"), st.refinement_init
    # confidence = P(within 10 cm / 5°) under the published covariance, which holds the 20 cm / 3° extra floor set
    # by the floor test (this map's refined stage is uncalibrated): a real probability, low under that floor
    assert 0.0 < st.confidence < 0.5, st.confidence
    T_map_cam, _, msg = loc.pose(s)
    dt, dr = pose_error(T_map_cam, gt)
    assert dt < 0.01 and dr < 0.5, (dt, dr)  # from 4 cm / 1.5 deg
    cl.wait(lambda: any(ns(m.header.stamp) == s for m in loc.initialposes), 10, "the node's /initialpose")
    with cl.lock:
        out = next(m for m in loc.initialposes if ns(m.header.stamp) == s)
    assert out.header.frame_id == "map"
    np.testing.assert_allclose(pose_to_T(out.pose.pose), pose_to_T(msg.pose.pose), atol=1e-9)
    assert list(out.pose.covariance) == list(msg.pose.covariance)
    # next frame: not lost (no /initialpose out), and the node's own /initialpose was not taken as a prior
    s2 = loc.send(3)
    st2 = loc.status(s2)
    assert st2.accepted and st2.front_end == "ace" and st2.refinement_ran, (st2.reason, st2.front_end)
    assert st2.refinement_reason == "ok" and st2.refinement_init == "prior"  # ACE: no matching initialisation
    # a prior in a frame other than map_frame is ignored: the front end runs
    prior(loc.frames[4].T_world_cam, frame_id="odom")
    st3 = loc.status(loc.send(4))
    assert st3.accepted and st3.front_end == "ace", (st3.reason, st3.front_end)
    time.sleep(0.2)
    with cl.lock:  # this test's two priors and the node's one re-initialisation
        assert sorted(ns(m.header.stamp) for m in loc.initialposes[n0:]) == [1_000_000_000] * 2 + [s]
    assert loc.h.alive(), loc.h.log_tail()


def test_mapper_build_map_service_end_to_end(env, frames, tmp_path):
    """Three demo frames recorded over DDS (images + camera_info + map->camera on /tf), then ~/build_map with a tiny
    ACE budget (no reference model: three frames are too few to triangulate one): refused while a build is running, and the map it reports on ~/progress loads as an ACE map of the three frames."""
    from geometry_msgs.msg import TransformStamped
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String, UInt32
    from std_srvs.srv import Trigger
    from tf2_msgs.msg import TFMessage

    from reloc_ros.localizer import Localizer
    from reloc_ros.map_file import load_map
    from reloc_ros.ros.conversions import T_to_transform, ns_to_stamp, rgb_to_image_msg
    from reloc_ros.ros.qos import latched_qos
    from reloc_ros.ros.runner import start_mapper

    name = "reloc_mapper_paths"
    out, map_path = tmp_path / "recorded", tmp_path / "quick.map.safetensors"
    quick = {"image_height": 240, "buffer_size": 3 * 1000, "cells_per_view": 1000, "aug_rotation_deg": 0.0,
             "aug_scale": [1.0, 1.0], "aug_brightness": 0.0, "aug_contrast": 0.0, "head_width": 128,
             "batch_size": 1024, "iterations": 40, "checkpoint_every_s": 0, "progress": False, "num_threads": 1}
    h = start_mapper(REPO / "config" / "mapper.yaml",
                     {"output_dir": str(out), "image_qos": "reliable", "map_path": str(map_path),
                      "train_minutes": 1.0, "min_translation": 0.01},
                     env=env, name=name, log_path=tmp_path / "mapper.log")
    cl = Client(int(env["ROS_DOMAIN_ID"]), name)
    counts = cl.record(UInt32, f"/{name}/frame_count", latched_qos(10))  # latched: also if DDS matches us late
    progress = cl.record(String, f"/{name}/progress", 100)
    try:
        h.wait_active(timeout=120)
        img_pub, info_pub = cl.publisher(Image, "image"), cl.publisher(CameraInfo, "camera_info")
        tf_pub = cl.publisher(TFMessage, "/tf")
        cl.wait_matched([img_pub, info_pub, tf_pub], 30, "the mapper's subscriptions (image, camera_info, /tf)")
        info = CameraInfo(**frames[0].camera.to_camera_info())
        for i, f in enumerate(frames[:3]):
            stamp = ns_to_stamp(5_000_000_000 + i * 100_000_000, type(info.header.stamp))
            tr = TransformStamped()
            tr.header.stamp, tr.header.frame_id, tr.child_frame_id = stamp, "map", "cam"
            T_to_transform(f.T_world_cam, tr.transform)
            info.header.stamp = stamp
            img = rgb_to_image_msg(f.image, Image, 5_000_000_000 + i * 100_000_000, "cam")
            # camera_info and /tf are other topics, and a volatile sample sent before the mapper's side of DDS has
            # matched ours is lost (matching is not symmetric): each attempt sends all three again. The same pose
            # again is no keyframe, so a repeat never records twice.
            for attempt in range(10):
                tf_pub.publish(TFMessage(transforms=[tr]))
                info_pub.publish(info)
                img_pub.publish(img)
                try:
                    cl.wait(lambda: len(counts) > i, 2.0 if attempt < 9 else 30.0, f"keyframe {i + 1}")
                    break
                except AssertionError:
                    if attempt == 9:
                        raise AssertionError(f"keyframe {i + 1} never recorded; mapper log:\n{h.log_tail()}")
        # three frames are too few to triangulate a reference model: the front end alone (reference: test_triangulation)
        cl.set_params(name, train_overrides=json.dumps(quick), build_reference=False)
        r = cl.call(Trigger, f"/{name}/build_map")
        assert r.success and "from 3 frames" in r.message, r.message
        r2 = cl.call(Trigger, f"/{name}/build_map")
        assert not r2.success and "already running" in r2.message, r2.message
        cl.wait(lambda: any(m.data.startswith(("done:", "failed:")) for m in progress), 120, "the build to finish")
        with cl.lock:
            last = next(m.data for m in progress if m.data.startswith(("done:", "failed:")))
        assert last.startswith("done:"), (last, h.log_tail())
        report = json.loads(last[len("done:"):])
        assert report["map"] == str(map_path) and report["n_frames"] == 3 and "reference" not in report
        assert h.alive(), h.log_tail()
    finally:
        h.stop()
        cl.close()
    assert [m.data for m in counts] == [1, 2, 3]
    _, meta = load_map(map_path, kind="map")
    assert meta["front_end"] == "ace"
    loc = Localizer.from_map(map_path)
    res = loc.localize(frames[0].image, frames[0].camera)  # runs end to end on the quick map (accuracy not claimed)
    assert res.front_end == "ace" and {"network", "solver"} <= set(res.timings_ms)

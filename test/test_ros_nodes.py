"""The nodes in separate processes over real DDS (Fast DDS, localhost, a domain of their own).

- A rosbag2 written from demo-scene frames (odom->base_link on /tf with drift, base_link->camera on /tf_static) is
  played into the localizer; composing the published map->odom with odom->base->camera reproduces the ground-truth
  camera pose within the front end's accuracy, and ~/pose is the base pose with a valid covariance.
- Junk input: thousands of malformed messages sent fast; the node stays alive and every frame it received is
  counted once with the right reason on ~/status and /diagnostics.

The map is the shared ACE head overfitted to 6 demo-scene frames by the real mapping code (``demo_map_ace`` in
test/conftest.py).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reloc_ros.geometry.pose import rotation_angle_deg
from ros_helpers import Client, env  # noqa: F401 - env is a fixture
from ros_helpers import ns as _ns

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mapped(demo_map_ace):
    """``(map_path, frame_names)``: the shared ACE map overfitted to 6 demo frames (test/conftest.py)."""
    return demo_map_ace


def _read_bag(path):
    """(topic, rclpy message) in bag order, deserialised from the raw CDR with rclpy."""
    import importlib

    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    out = []
    with AnyReader([Path(path)]) as r:
        for c, _, raw in r.messages():
            pkg, _, name = c.msgtype.split("/")
            cls = getattr(importlib.import_module(f"{pkg}.msg"), name)
            out.append((c.topic, deserialize_message(bytes(raw), cls)))
    return out


# the 240-row test map: a 2 px inlier threshold (10 px is meant for 480 rows); also with the networks from the map's
# exported ONNX graphs (reloc-export, onnxruntime), as a Jetson deployment runs them
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_bag_replay_pose_and_map_odom_match_ground_truth(env, mapped, demo_scene_root, tmp_path, backend):
    from reloc_ros.datasets import open_dataset
    from reloc_ros.datasets.bag_writer import T_BASE_CAMERA, write_bag
    from reloc_ros.ros.conversions import covariance_from_ros, pose_to_T, transform_to_T
    from reloc_ros.ros.qos import tf_static_qos
    from reloc_ros.ros.runner import start_localizer
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    map_path, names = mapped
    ds = open_dataset(demo_scene_root, frames=names)
    bag = write_bag(ds, tmp_path / "bag", fps=2.0, odom_tf=True, progress=False)
    msgs = _read_bag(bag)
    h = start_localizer(REPO / "config" / "localizer.yaml",
                        {"map_path": str(map_path), "min_confidence": 0.0, "min_inliers": 20, "image_qos": "reliable",
                         "tf_republish_rate": 0.0, "tf_timeout": 2.0, "front_end_options": '{"threshold_px": 2.0}', "backend": backend},
                        env=env, remaps={"image": "/camera/image_raw", "camera_info": "/camera/camera_info"},
                        log_path=tmp_path / "localizer.log")
    cl = Client(int(env["ROS_DOMAIN_ID"]), "reloc_localizer")
    try:
        h.wait_active(timeout=180)
        pubs = {"/camera/image_raw": cl.publisher(Image, "/camera/image_raw"),
                "/camera/camera_info": cl.publisher(CameraInfo, "/camera/camera_info"),
                "/tf": cl.publisher(TFMessage, "/tf"), "/tf_static": cl.publisher(TFMessage, "/tf_static",
                                                                                 tf_static_qos())}
        odom_base, image_stamps = {}, []
        cl.wait(lambda: all(p.get_subscription_count() >= 1 for p in pubs.values()), 30, "the node's subscriptions")
        # a frame = the messages of one bag time (image, camera_info, /tf); the image goes last, as from a driver
        # whose TF and camera_info are never later than the image. The next frame waits for this one's status.
        frames = {}
        for t, m in (tm for tm in msgs if tm[0] in pubs):  # ground-truth topics are not played
            key = 0 if t == "/tf_static" else _ns(m.header.stamp if t != "/tf" else m.transforms[0].header.stamp)
            frames.setdefault(key, []).append((t, m))
        for key in sorted(frames):
            for topic, m in sorted(frames[key], key=lambda tm: tm[0] == "/camera/image_raw"):
                if topic == "/tf":
                    for tr in m.transforms:
                        odom_base[_ns(tr.header.stamp)] = transform_to_T(tr.transform)
                pubs[topic].publish(m)
                if topic == "/camera/image_raw":
                    s = _ns(m.header.stamp)
                    image_stamps.append(s)
                    cl.wait(lambda: any(_ns(x.header.stamp) == s for x in cl.statuses), 120, f"status of image {s}")
        cl.wait(lambda: len(cl.poses) >= 1, 10, "a pose")
        # services: reload the map, then a one-shot relocalization answered with the next frame's outcome
        from std_srvs.srv import Trigger

        def call(srv):
            c = cl.node.create_client(Trigger, f"/reloc_localizer/{srv}")
            assert c.wait_for_service(timeout_sec=10)
            fut = c.call_async(Trigger.Request())
            return fut
        fut = call("reload_map")
        cl.wait(fut.done, 60, "reload_map")
        assert fut.result().success and "ace" in fut.result().message, fut.result().message
        fut = call("relocalize")
        time.sleep(0.3)
        last_img = next(m for t, m in reversed(msgs) if t == "/camera/image_raw")
        last_tf = next(m for t, m in reversed(msgs) if t == "/tf")
        extra = image_stamps[-1] + 500_000_000
        for m in (last_tf.transforms[0], last_img):
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(extra, 1_000_000_000)
        odom_base[extra] = odom_base[image_stamps[-1]]
        pubs["/tf"].publish(last_tf)
        pubs["/camera/image_raw"].publish(last_img)
        cl.wait(fut.done, 60, "relocalize")
        assert fut.result().success and fut.result().message == "ok", fut.result().message
        image_stamps.append(extra)
        gt_extra = ds.poses()[-1]
        time.sleep(0.5)
        assert h.alive()
    finally:
        h.stop()
        cl.close()
    log = (tmp_path / "localizer.log").read_text()
    assert ("ace_head runs on onnxruntime" in log) == (backend == "onnxruntime"), log[-2000:]
    st = {_ns(s.header.stamp): s for s in cl.statuses}
    assert sorted(st) == image_stamps
    accepted = [s for s in image_stamps if st[s].accepted]
    assert len(accepted) >= 5, [(st[s].reason, st[s].inlier_count) for s in image_stamps]
    assert all(st[s].reason == "ok" and st[s].front_end == "ace" and st[s].inlier_count >= 20 for s in accepted), \
        [(st[s].reason, st[s].front_end, st[s].inlier_count) for s in accepted]
    map_odom = {_ns(tr.header.stamp): transform_to_T(tr.transform) for m in cl.tf for tr in m.transforms
                if tr.header.frame_id == "map" and tr.child_frame_id == "odom"}
    poses = {_ns(p.header.stamp): p for p in cl.poses}  # transient-local depth 1: at least the last one
    gt = dict(zip(image_stamps, list(ds.poses()) + [gt_extra]))
    tol_ns = int(0.1e9)  # transform_tolerance: map->odom is post-dated
    errs = []
    for s in accepted:
        T_map_cam = map_odom[s + tol_ns] @ odom_base[s] @ T_BASE_CAMERA
        errs.append((np.linalg.norm(T_map_cam[:3, 3] - gt[s][:3, 3]), rotation_angle_deg(T_map_cam[:3, :3],
                                                                                       gt[s][:3, :3])))
    errs = np.array(errs)
    # offline, this map localizes its 6 frames within ~1 cm / 0.2 deg (threshold 2 px); the ROS path must add nothing
    assert np.all(errs[:, 0] < 0.05) and np.all(errs[:, 1] < 2.0), errs
    # the drifting odometry makes map->odom far from identity: the composition is really exercised
    assert max(np.linalg.norm(T[:3, 3]) for T in map_odom.values()) > 0.01 or \
        max(rotation_angle_deg(np.eye(3), T[:3, :3]) for T in map_odom.values()) > 0.5
    last = max(poses)
    p = poses[last]
    assert p.header.frame_id == "map"
    T_map_base = pose_to_T(p.pose.pose)
    T_map_cam = T_map_base @ T_BASE_CAMERA
    assert np.linalg.norm(T_map_cam[:3, 3] - gt[last][:3, 3]) < 0.05
    np.testing.assert_allclose(T_map_base, map_odom[last + tol_ns] @ odom_base[last], atol=1e-6)
    cov = covariance_from_ros(p.pose.covariance)
    assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    assert 0 < st[last].sigma_position_m < 0.5 and st[last].latency_total_ms > 0


def test_junk_input_is_counted_and_never_kills_the_node(env, mapped, tmp_path):
    from reloc_ros.ros.runner import start_localizer
    from sensor_msgs.msg import CameraInfo, Image

    map_path, _ = mapped
    name = "reloc_localizer_junk"
    h = start_localizer(REPO / "config" / "localizer.yaml",
                        {"map_path": str(map_path), "image_qos": "reliable", "queue_depth": 1000, "tf_timeout": 0.1,
                         "diagnostics_period": 0.2},
                        env=env, name=name, remaps={"image": "/junk/image", "camera_info": "/junk/camera_info"},
                        log_path=tmp_path / "junk.log")
    cl = Client(int(env["ROS_DOMAIN_ID"]), name)
    n_per_phase = 400
    sent, published = {}, [0]
    try:
        h.wait_active(timeout=180)
        img_pub, info_pub = cl.publisher(Image, "/junk/image"), cl.publisher(CameraInfo, "/junk/camera_info")
        # a message published before DDS has matched the node's subscription is lost: wait for the match
        cl.wait(lambda: img_pub.get_subscription_count() >= 1 and info_pub.get_subscription_count() >= 1, 30,
                "the localizer's image and camera_info subscriptions")
        good_k = [50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1]
        stamp, back_stamp = [1_000_000_000], [1_000_000_000]  # forward from 1 s; "back" frames go below 1 s

        def image(w=64, h_=48, enc="rgb8", short=False, back=False):
            m = Image(width=w, height=h_, encoding=enc, step=w * 3)
            m.data = bytes(w * h_ * 3 - (5 if short else 0))
            ctr = back_stamp if back else stamp
            ctr[0] += -100_000 if back else 1_000_000
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(ctr[0], 1_000_000_000)
            m.header.frame_id = "junk_cam"
            return m

        def phase(reason, make, info=None):
            if info is not None:
                info_pub.publish(info)
            # one probe at a time until the node reports this phase's reason (the camera_info is on another topic)
            for _ in range(200):
                m = make()
                img_pub.publish(m)
                published[0] += 1
                s = _ns(m.header.stamp)
                cl.wait(lambda: any(_ns(x.header.stamp) == s for x in cl.statuses), 30, f"status of probe {s}")
                with cl.lock:
                    if next(x for x in cl.statuses if _ns(x.header.stamp) == s).reason == reason:
                        break
            first = stamp[0]
            for _ in range(n_per_phase):  # as fast as rclpy publishes
                img_pub.publish(make())
            published[0] += n_per_phase
            # the next phase may change the camera_info (another topic): let this one drain first
            cl.wait(lambda: len(cl.statuses) >= published[0], 60, f"statuses of the {reason} phase")
            sent[reason] = (first, stamp[0])  # forward phases: stamps in (first, last]

        phase("no_camera_info", image)
        phase("bad_intrinsics", image, CameraInfo(width=64, height=48, k=[float("nan")] + good_k[1:]))
        phase("bad_encoding", lambda: image(enc="yuv422_weird"), CameraInfo(width=64, height=48, k=good_k))
        phase("size_mismatch", lambda: image(w=32, h_=24))
        phase("bad_image", lambda: image(short=True))
        # a valid frame (no TF for junk_cam -> missing_tf in the worker), then stamps going back in time
        phase("missing_tf", image)
        phase("out_of_order_stamp", lambda: image(back=True))
        time.sleep(1.0)
        cl.wait(lambda: len(cl.statuses) >= published[0], 60, "statuses of every published frame")
        assert h.alive(), h.log_tail()
        with cl.lock:
            statuses = list(cl.statuses)
        final = statuses[-1]
        # every frame the node received got exactly one status, and the counters add up
        assert final.frames_received == len(statuses)
        assert final.frames_rejected + final.frames_dropped == len(statuses)
        # reliable QoS with a deep queue: nothing is lost in DDS, so every published image was counted
        assert published[0] >= 7 * n_per_phase and final.frames_received == published[0], (len(statuses), published)
        for reason, (lo, hi) in sent.items():
            if reason == "out_of_order_stamp":  # every stamp below 1 s
                got = [x.reason for x in statuses if _ns(x.header.stamp) < 1_000_000_000]
            else:
                got = [x.reason for x in statuses if lo < _ns(x.header.stamp) <= hi]
            assert len(got) >= 0.5 * n_per_phase and set(got) <= {reason, "stale_frame"}, (reason, set(got))
            if reason != "missing_tf":  # rejected in the callback: never reaches the worker
                assert set(got) == {reason}
        counts = {}
        for x in statuses:
            counts[x.reason] = counts.get(x.reason, 0) + 1

        def diag_matches():
            for arr in reversed(cl.diag):
                for d in arr.status:
                    if d.name.startswith(name):
                        v = {kv.key: kv.value for kv in d.values}
                        return json.loads(v["reasons"]) == counts
            return False
        cl.wait(diag_matches, 10, f"/diagnostics reasons == {counts}")
        # the node still works after the storm: lifecycle services answer
        h.wait_active(timeout=30)
    finally:
        h.stop()
        cl.close()


def test_mapper_records_tf_posed_keyframes(env, tmp_path):
    """Images + camera_info + map->camera on /tf into the mapper process: the keyframes (>= 9 cm apart) land in a
    7-Scenes folder that open_dataset reads back with the published poses and pixels (5 cm steps, 9 cm threshold)."""
    from geometry_msgs.msg import TransformStamped
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import UInt32
    from tf2_msgs.msg import TFMessage

    from reloc_ros.datasets import open_dataset
    from reloc_ros.geometry.pose import make_T, so3_exp
    from reloc_ros.ros.conversions import T_to_transform, ns_to_stamp, rgb_to_image_msg
    from reloc_ros.ros.qos import latched_qos
    from reloc_ros.ros.runner import start_mapper

    out = tmp_path / "recorded"
    h = start_mapper(REPO / "config" / "mapper.yaml",
                     {"output_dir": str(out), "image_qos": "reliable", "min_translation": 0.09,
                      "min_rotation_deg": 30.0},
                     env=env, name="reloc_mapper_test", log_path=tmp_path / "mapper.log")
    cl = Client(int(env["ROS_DOMAIN_ID"]), "reloc_mapper_test")
    counts = []
    cl.node.create_subscription(UInt32, "/reloc_mapper_test/frame_count", lambda m: counts.append(m.data),
                                latched_qos(10))  # latched: a count published before DDS matched us still arrives
    rng = np.random.default_rng(0)
    sent_T, sent_img = [], []
    try:
        h.wait_active(timeout=120)
        img_pub, info_pub = cl.publisher(Image, "image"), cl.publisher(CameraInfo, "camera_info")
        tf_pub = cl.publisher(TFMessage, "/tf")
        cl.wait(lambda: img_pub.get_subscription_count() >= 1 and info_pub.get_subscription_count() >= 1
                and tf_pub.get_subscription_count() >= 1, 30, "the mapper's subscriptions (image, camera_info, /tf)")
        info = CameraInfo(width=64, height=48, k=[50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1], distortion_model="plumb_bob",
                          d=[0.0] * 5)
        for i in range(9):  # 5 cm steps: frames 0, 2, 4, 6, 8 are keyframes
            ns = 5_000_000_000 + i * 100_000_000
            T = make_T(so3_exp([0.0, 0.02 * i, 0.0]), [0.05 * i, 0.0, 1.0])
            tr = TransformStamped()
            tr.header.stamp, tr.header.frame_id, tr.child_frame_id = ns_to_stamp(ns, type(tr.header.stamp)), "map", "cam"
            T_to_transform(T, tr.transform)
            info.header.stamp = tr.header.stamp
            img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)

            def send():
                tf_pub.publish(TFMessage(transforms=[tr]))
                info_pub.publish(info)
                img_pub.publish(rgb_to_image_msg(img, Image, ns, "cam"))
            send()
            if i % 2 == 0:
                sent_T.append(T)
                sent_img.append(img)
                # The /tf publisher's subscription count includes this client's own /tf subscription, so the first
                # frame can go out before DDS matched the mapper's: re-send the same frame (the same pose records
                # nothing new once it was recorded) until its keyframe is counted.
                for _ in range(30):
                    try:
                        cl.wait(lambda: len(counts) >= len(sent_T), 1.0, f"keyframe {len(sent_T)}")
                        break
                    except AssertionError:
                        send()
                cl.wait(lambda: len(counts) >= len(sent_T), 5, f"keyframe {len(sent_T)}")
            time.sleep(0.05)
        assert h.alive()
    finally:
        h.stop()
        cl.close()
    assert counts == [1, 2, 3, 4, 5]
    ds = open_dataset(out, frames=str(out / "mapping.txt"))
    assert len(ds) == 5 and ds.camera.fx == 50.0
    for f, T, img in zip(ds, sent_T, sent_img):
        np.testing.assert_allclose(f.T_world_cam, T, atol=1e-6)
        np.testing.assert_array_equal(f.image, img)


def test_inline_executor_runs_offloaded_services_beside_inline_callbacks(env):
    """The localizer's executor: a service of an offloaded callback group may block until a subscription callback
    has run (as ~/relocalize waits for a frame); the subscription still runs, on the spinning thread, so the
    service completes. (A SingleThreadedExecutor would deadlock here.)"""
    import threading

    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from reloc_ros.ros.spin import InlineExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        server = rclpy.create_node("inline_exec_server", context=ctx)
        client = rclpy.create_node("inline_exec_client", context=ctx)
        got, threads = threading.Event(), {}

        def on_msg(msg):
            threads["sub"] = threading.current_thread().name
            got.set()

        def on_srv(request, response):
            threads["srv"] = threading.current_thread().name
            response.success = got.wait(10.0)
            return response

        group = MutuallyExclusiveCallbackGroup()
        server.create_subscription(String, "inline_exec_topic", on_msg, 10)
        server.create_service(Trigger, "inline_exec_srv", on_srv, callback_group=group)
        ex = InlineExecutor(offload_groups=[group], context=ctx)
        ex.add_node(server)
        spinner = threading.Thread(target=ex.spin, name="inline_spin", daemon=True)
        spinner.start()
        cex = SingleThreadedExecutor(context=ctx)
        cex.add_node(client)
        threading.Thread(target=cex.spin, name="client_spin", daemon=True).start()
        pub = client.create_publisher(String, "inline_exec_topic", 10)
        cli = client.create_client(Trigger, "inline_exec_srv")
        assert cli.wait_for_service(timeout_sec=20.0)
        deadline = time.monotonic() + 20
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        future = cli.call_async(Trigger.Request())
        while "srv" not in threads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "srv" in threads, "the service never started"
        pub.publish(String(data="frame"))
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done() and future.result().success
        assert threads["sub"] == "inline_spin" and threads["srv"].startswith("reloc_srv"), threads
        ex.shutdown()
        spinner.join(5.0)
        # an offloaded callback's exception surfaces in the spinning thread (as with MultiThreadedExecutor)
        broken = rclpy.create_node("inline_exec_broken", context=ctx)
        group2 = MutuallyExclusiveCallbackGroup()

        def on_broken(request, response):
            raise ValueError("service bug")

        broken.create_service(Trigger, "inline_exec_broken_srv", on_broken, callback_group=group2)
        ex2 = InlineExecutor(offload_groups=[group2], context=ctx)
        ex2.add_node(broken)
        cli2 = client.create_client(Trigger, "inline_exec_broken_srv")
        assert cli2.wait_for_service(timeout_sec=20.0)
        cli2.call_async(Trigger.Request())
        with pytest.raises(ValueError, match="service bug"):
            for _ in range(200):
                ex2.spin_once(timeout_sec=0.05)
        ex2.shutdown()
        cex.shutdown()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_bad_parameters_fail_configure_with_one_line_each(env, tmp_path):
    """The node started as `ros2 run` / a launch file starts it (its own --params-file and -p, not reloc-launch's
    checked merge): an int for a double is taken (it used to crash the node), an unknown name, a bad choice, a bad
    range and a -p value rcl dropped for the file's are each one error line at start-up, and configure fails.
    Later changes go through the same checks (ints for doubles too)."""
    import sys

    from rcl_interfaces.srv import GetParameters, SetParameters
    from rclpy.parameter import Parameter

    from reloc_ros.ros.runner import LifecycleError, NodeProcess
    name = "reloc_localizer_badparams"
    cmd = [sys.executable, "-m", "reloc_ros.ros.localizer_node", "--ros-args", "-r", f"__node:={name}",
           "--params-file", str(REPO / "config" / "localizer.yaml"), "-p", "max_rate:=5", "-p", "bogus:=3",
           "-p", "image_transport:=foo", "-p", "min_confidence:=-1.0", "-p", "refine:=banana"]
    h = NodeProcess("localizer", name, cmd, env, tmp_path / "node.log")
    cl = Client(int(env["ROS_DOMAIN_ID"]), name)
    try:
        with pytest.raises(LifecycleError, match="transition configure failed"):
            h.wait_active(timeout=120)
        errors = [ln for ln in h.log_path.read_text().splitlines() if "[ERROR]" in ln]
        for needle in ("unknown parameter 'bogus'", "image_transport: 'foo' is not allowed",
                       "min_confidence: -1 is out of range", "-p refine:=banana did not take effect",
                       "configure failed: 4 bad parameter(s)"):
            assert sum(needle in ln for ln in errors) == 1, (needle, errors)
        got = cl.call(GetParameters, f"/{name}/get_parameters", GetParameters.Request(names=["max_rate"]))
        assert got.values[0].double_value == 5.0
        req = SetParameters.Request(parameters=[Parameter("min_confidence", value=-1.0).to_parameter_msg(),
                                                Parameter("max_rate", value=3).to_parameter_msg()])
        res = cl.call(SetParameters, f"/{name}/set_parameters", req).results
        assert not res[0].successful and "out of range" in res[0].reason
        assert res[1].successful, res[1].reason
        got = cl.call(GetParameters, f"/{name}/get_parameters", GetParameters.Request(names=["max_rate"]))
        assert got.values[0].double_value == 3.0
        assert h.alive()
    finally:
        cl.close()
        h.stop()


def _change_state(cl, name, transition_id):
    from lifecycle_msgs.srv import ChangeState
    req = ChangeState.Request()
    req.transition.id = transition_id
    return cl.call(ChangeState, f"/{name}/change_state", req, timeout=120).success


def test_under_a_nav2_like_lifecycle_manager(env, mapped, tmp_path):
    """What nav2_lifecycle_manager does with a managed node, with bond messages written by hand (not bond.py): configure,
    activate, then its bond side (heartbeats every 0.1 s; the node must answer within bond_timeout / 2 = 2 s and
    never fall silent for bond_timeout = 4 s; the watch runs past the node's own 10 s connect timeout, which would
    end a bond that never formed); deactivate breaks the bond (active: false); cleanup and shutdown succeed."""
    from bond.msg import Status
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from reloc_ros.ros.runner import start_localizer
    map_path, _ = mapped
    name = "reloc_localizer_nav2"
    h = start_localizer(REPO / "config" / "localizer.yaml", {"map_path": str(map_path)}, env=env, name=name,
                        log_path=tmp_path / "node.log")
    cl = Client(int(env["ROS_DOMAIN_ID"]), name)
    heard = []  # (arrival time, active) of the node's bond statuses
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    cl.node.create_subscription(Status, "/bond", lambda m: heard.append((time.monotonic(), m.active))
                                if m.id == name and m.instance_id != "manager" else None, qos)
    mgr = cl.publisher(Status, "/bond", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    beating, done = threading.Event(), threading.Event()

    def manager_heartbeat():
        while not done.wait(0.1):
            if beating.is_set():
                mgr.publish(Status(id=name, instance_id="manager", active=True, heartbeat_timeout=4.0,
                                   heartbeat_period=0.1))
    threading.Thread(target=manager_heartbeat, daemon=True).start()
    try:
        h.wait_active(timeout=180)  # configure -> activate, as the manager's startup
        beating.set()
        cl.wait(lambda: any(active for _, active in heard), 30, "the node's first bond heartbeat")
        t_end = time.monotonic() + 12.0
        time.sleep(12.0)
        times = np.array([tm for tm, active in list(heard) if active])
        assert times[-1] > t_end - 1.0, "the node's heartbeats stopped (its side never formed)"
        gaps = np.diff(times)
        assert gaps.max() < 4.0, f"a {gaps.max():.1f} s gap: Nav2 would fail the node"
        assert len(times) >= 40  # ~10 Hz for 12 s
        assert _change_state(cl, name, Transition.TRANSITION_DEACTIVATE)
        cl.wait(lambda: any(not active for _, active in heard), 30, "the node breaking the bond (active: false)")
        beating.clear()
        assert _change_state(cl, name, Transition.TRANSITION_CLEANUP)
        assert _change_state(cl, name, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert h.alive()
    finally:
        done.set()
        cl.close()
        h.stop()

"""Parameter tables of the nodes: one place for name, default, description and allowed values.

The nodes declare exactly these (with ``ParameterDescriptor``s built from them) and config/*.yaml documents each
one; ``test/test_ros_units.py`` checks that the YAML files and these tables agree. No rclpy import here.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..frontends.registry import front_end_names

__all__ = ["Param", "LOCALIZER_PARAMS", "MAPPER_PARAMS"]


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str
    choices: tuple = ()
    min: float | None = None
    read_only: bool = False


LOCALIZER_PARAMS = [
    # map and compute
    Param("map_path", "", "Map file written by reloc-map (.safetensors); loaded in configure. Required."),
    Param("front_end", "", "Expected front end (a registered one: 'implicit' | 'ace'); empty = whatever the map "
          "holds. A mismatch fails configure.", choices=("",) + tuple(front_end_names())),
    Param("device", "cpu", "Torch device for the front end and the refiner ('cpu', 'cuda', 'cuda:0', ...)."),
    Param("refine", False, "Run the featuremetric refinement (needs the map's .ref.safetensors reference model)."),
    Param("front_end_options", "{}", "JSON object of front-end options passed to Localizer.from_map (e.g. "
          "'{\"threshold_px\": 2.0}' for ACE)."),
    Param("refiner_options", "{}", "JSON object of featuremetric refiner options (DEFAULT_REFINER_CONF keys in "
          "reloc_ros/refinement/refiner.py, e.g. '{\"max_points\": 512}'); used when refine is true. They go over the "
          "front end's own refiner defaults: the implicit front end turns the matching initialisation on "
          "('{\"match_init\": \"compete\", \"match_max_points\": 512}': the LM also starts from a PnP pose on feature "
          "matches, +5 ms, 67 -> 76 % within 5 cm/5° on 7-Scenes); '{\"match_init\": \"off\"}' turns it off. "
          "/initialpose priors always use it."),
    Param("position_sigma_floor", 0.03, "Map-accuracy floor (m): this standard deviation is added in quadrature to "
          "each position axis (x, y, z) of every published covariance (Localizer position_sigma_floor_m). Read with "
          "map_path: applied on configure and ~/reload_map.", min=0.0),
    Param("rotation_sigma_floor_deg", 0.75, "Map-accuracy floor (degrees): this standard deviation is added in "
          "quadrature to each rotation axis (rx, ry, rz) of every published covariance (Localizer "
          "rotation_sigma_floor_deg). Applied on configure and ~/reload_map.", min=0.0),
    Param("num_threads", 0, "torch intra-op threads; 0 = torch's default.", min=0),
    Param("autostart", False, "Configure and activate at start-up (without a lifecycle manager)."),
    # topics and QoS
    Param("image_transport", "raw", "'raw': sensor_msgs/Image on 'image'; 'compressed': sensor_msgs/CompressedImage "
          "on 'image/compressed'.", choices=("raw", "compressed")),
    Param("image_qos", "sensor_data", "QoS of the image and camera_info subscriptions: 'sensor_data' (best effort) "
          "or 'reliable'.", choices=("sensor_data", "reliable")),
    Param("queue_depth", 5, "History depth of the image and camera_info subscriptions (keep-last). The worker "
          "always takes the newest frame; a deeper queue only matters with reliable QoS and bursts.", min=1),
    # frames (REP-105)
    Param("map_frame", "map", "Frame of the published poses (the map's world frame)."),
    Param("odom_frame", "odom", "Odometry frame: map->odom is published, computed with odom->base at the image "
          "stamp. Empty = publish map->base (or map->camera) directly."),
    Param("base_frame", "base_link", "Robot body frame the pose is reported for. Empty = report the camera pose."),
    Param("camera_frame", "", "Optical frame of the camera (OpenCV axes). Empty = the image header's frame_id."),
    Param("camera_to_base", [0.0], "Extrinsic T_base_camera as [x, y, z, qx, qy, qz, qw] (m, quaternion). [0.0] "
          "(one value) = look it up in /tf_static (base_frame <- camera_frame)."),
    Param("publish_tf", True, "Publish map->odom (or map->base) on /tf for accepted poses."),
    Param("transform_tolerance", 0.1, "Seconds the published map->odom is post-dated by (as AMCL does).", min=0.0),
    Param("tf_republish_rate", 10.0, "Hz at which the last map->odom is re-published with a fresh stamp "
          "(0 = only on new poses). Ignored when odom_frame is empty.", min=0.0),
    Param("tf_timeout", 0.2, "Seconds to wait for odom->base (and the extrinsic) at the image stamp.", min=0.0),
    Param("tf_cache_time", 10.0, "Seconds of /tf history kept for lookups at image stamps.", min=0.1),
    # processing policy
    Param("mode", "continuous", "'continuous': localize the latest frame whenever the worker is free; 'on_demand': "
          "only after a ~/relocalize request (one frame per request).", choices=("continuous", "on_demand")),
    Param("max_rate", 0.0, "Maximum localizations per second (Hz); 0 = as fast as the worker goes.", min=0.0),
    Param("relocalize_timeout", 10.0, "Seconds ~/relocalize waits for a frame to be localized; on timeout the request "
          "is withdrawn (a later frame is not processed for it).", min=0.1),
    Param("max_frame_age", 0.0, "Seconds; frames older than this (node clock minus image stamp) when the worker "
          "takes them are dropped as stale_frame. 0 = no age limit (e.g. bag replay with original stamps).",
          min=0.0),
    # gating
    Param("min_confidence", 0.5, "Reject poses whose confidence is below this ([0, 1]). ACE: saturating in the "
          "RANSAC inlier count and ratio; implicit front end: exp(-sigma_pos / 0.25 m); a pose the refinement "
          "accepted: at least the refinement's exp(-sigma_pos / 0.25 m) from its covariance.", min=0.0),
    Param("min_inliers", 30, "ACE front end: reject poses with fewer RANSAC inliers.", min=0),
    Param("min_inlier_ratio", 0.0, "ACE front end: reject poses with a smaller inlier ratio.", min=0.0),
    Param("min_weight_mass", 0.0, "Implicit front end: reject poses with a smaller Kabsch weight mass.", min=0.0),
    Param("max_position_sigma", 0.0, "Reject poses whose position standard deviation sqrt(trace(cov_xyz)) exceeds "
          "this (m); 0 = off.", min=0.0),
    Param("require_refinement", False, "With refine: publish only poses the refinement accepted."),
    # priors and Nav2
    Param("use_initialpose_prior", True, "Use poses on /initialpose (base pose in map_frame) as a prior: refined "
          "with the featuremetric refiner when refine is on."),
    Param("prior_max_age", 5.0, "Seconds a /initialpose prior stays usable.", min=0.0),
    Param("publish_initialpose", False, "Publish an accepted pose on /initialpose (for Nav2 AMCL) when it follows "
          "a loss (no accepted pose for lost_timeout)."),
    Param("lost_timeout", 2.0, "Seconds without an accepted pose after which localization counts as lost.",
          min=0.0),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", min=0.05),
]

MAPPER_PARAMS = [
    Param("output_dir", "", "Dataset folder written in the 7-Scenes layout (frame-NNNNNN.color.png, .pose.txt, "
          "rgb-intrinsics.txt, mapping.txt). Required."),
    Param("bag_path", "", "rosbag2 folder/file to import instead of (or before) live topics; empty = live only."),
    Param("bag_image_topic", "/camera/image_raw", "Image topic inside bag_path."),
    Param("pose_source", "tf", "'tf': camera pose from TF (world_frame <- camera frame); 'pose': "
          "geometry_msgs/PoseStamped on 'pose'; 'odometry': nav_msgs/Odometry on 'odometry'. A pose/odometry topic "
          "gives the pose of pose_frame; camera_to_pose_frame maps it to the camera.",
          choices=("tf", "pose", "odometry")),
    Param("world_frame", "map", "Frame the recorded poses are expressed in."),
    Param("camera_frame", "", "Camera optical frame; empty = the image header's frame_id."),
    Param("camera_to_pose_frame", [0.0], "T_poseframe_camera [x, y, z, qx, qy, qz, qw] for pose/odometry sources; "
          "[0.0] = identity (the topic gives the camera pose)."),
    Param("max_time_offset", 0.05, "Seconds: a pose/odometry message further than this from the image stamp does "
          "not pose the image.", min=0.0),
    Param("tf_timeout", 0.2, "Seconds to wait for the TF chain at the image stamp.", min=0.0),
    Param("min_translation", 0.05, "Keyframe threshold: metres moved since the last recorded frame.", min=0.0),
    Param("min_rotation_deg", 5.0, "Keyframe threshold: degrees turned since the last recorded frame (either "
          "threshold records).", min=0.0),
    Param("image_qos", "sensor_data", "QoS of the image/camera_info subscriptions.",
          choices=("sensor_data", "reliable")),
    Param("map_path", "", "Map file written by ~/build_map; empty = <output_dir>/map.safetensors."),
    Param("front_end", "ace", "Front end trained by ~/build_map.", choices=tuple(front_end_names())),
    Param("device", "cpu", "Torch device for ~/build_map."),
    Param("train_minutes", 5.0, "Wall-clock cap of ~/build_map's training (minutes): the front end's iteration schedule is shortened, with a "
          "warning, to what the cap buys on this machine.", min=0.0),
    Param("build_reference", True, "Also build the refinement reference model in ~/build_map: reference points "
          "triangulated with pycolmap from the recorded poses (the recorder writes colour only), or back-projected "
          "from registered depth (<frame>.depth.png, uint16 mm) when every recorded frame has it. Needs a few dozen "
          "overlapping keyframes."),
    Param("train_overrides", "{}", "JSON object of front-end training options (its DEFAULT_CONF keys)."),
]

"""Parameter tables of the nodes: one place for name, default, description, allowed values and ranges, and the
checks every value goes through (at start-up, at configure and on every later change).

The nodes declare exactly these (with ``ParameterDescriptor``s built from them) and config/*.yaml documents each
one; ``test/test_ros_units.py`` checks that the YAML files and these tables agree. No rclpy import here: the node,
``reloc-launch`` (before it starts a node) and the tests use the same checks.
"""
from __future__ import annotations

import difflib
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..cli_args import parse_json_object
from ..frontends.registry import BACKENDS, front_end_names

__all__ = ["Param", "ParamError", "LOCALIZER_PARAMS", "MAPPER_PARAMS", "check_values", "unknown_name_error",
           "cli_param_values", "dropped_cli_values", "read_params_file", "extrinsic_values", "wants_help", "node_help"]

# Parameters rclpy declares itself on every node, and prefixes of the ones it may declare (QoS overrides).
ROS_PARAM_NAMES = ("use_sim_time", "start_type_description_service")
ROS_PARAM_PREFIXES = ("qos_overrides.",)


class ParamError(ValueError):
    """A parameter value (or name) the node cannot use; the message is one line naming the parameter."""


def extrinsic_values(values) -> list[float] | None:
    """``[x, y, z, qx, qy, qz, qw]`` (m, quaternion with a non-zero norm) -> the 7 floats; ``[0.0]`` (one value) ->
    None (meaning: look the extrinsic up / identity). ValueError otherwise."""
    v = [float(x) for x in values]
    if len(v) == 1:
        return None
    if len(v) != 7 or not all(math.isfinite(x) for x in v):
        raise ValueError(f"must be [x, y, z, qx, qy, qz, qw] (7 finite values) or [0.0], got {len(v)} values")
    if math.hypot(*v[3:]) < 1e-9:
        raise ValueError("the quaternion [qx, qy, qz, qw] has zero norm")
    return v


def _check_json_object(value) -> None:
    parse_json_object(value, "the value")


def _check_device(value) -> None:
    kind, _, index = value.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"{value!r} is not a device: expected 'cpu', 'cuda' or 'cuda:N'")


VALUE_CHECKS = {"extrinsic": extrinsic_values, "json_object": _check_json_object, "device": _check_device}
CHECK_WORDS = {"extrinsic": "[x, y, z, qx, qy, qz, qw] or [0.0]", "json_object": "a JSON object",
               "device": "'cpu', 'cuda' or 'cuda:N'"}


@dataclass(frozen=True)
class Param:
    """One node parameter. Its type is the default's (bool, integer, double, string, double array); an integer is
    accepted for a double (``-p max_rate:=5``). ``choices``: allowed values; ``min`` / ``max``: inclusive range;
    ``check``: a VALUE_CHECKS name for values with a structure (an extrinsic, a JSON object, a device)."""
    name: str
    default: object
    description: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    read_only: bool = False
    check: str | None = None

    @property
    def type_name(self) -> str:
        return _type_name(self.default)

    def constraints(self) -> str:
        """The allowed values in words (ParameterDescriptor.additional_constraints, error messages)."""
        if self.choices:
            return f"one of {list(self.choices)}"
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        return ", ".join(b for b in bounds if b) or CHECK_WORDS.get(self.check, "")

    def coerce(self, value):
        """``value`` as this parameter's type, checked; ParamError (one line naming the parameter) otherwise."""
        value = _coerce_type(self, value)
        if self.choices and value not in self.choices:
            raise ParamError(f"parameter {self.name}: {value!r} is not allowed; expected {self.constraints()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(f"parameter {self.name}: {value} is not a finite number")
        out_of_range = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (self.min is not None and value < self.min) or (self.max is not None and value > self.max))
        if out_of_range:
            raise ParamError(f"parameter {self.name}: {value:g} is out of range; expected {self.constraints()}")
        if self.check is not None:
            try:
                VALUE_CHECKS[self.check](value)
            except ValueError as err:
                raise ParamError(f"parameter {self.name}: {err}") from None
        return value


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "double array" if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value) \
            else "array"
    return type(value).__name__


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _coerce_type(param: Param, value):
    want = param.type_name
    if want == "double" and _is_number(value):
        return float(value)
    if want == "double array" and isinstance(value, (list, tuple)) and value and all(_is_number(x) for x in value):
        return [float(x) for x in value]
    if want == _type_name(value) and want in ("bool", "integer", "string"):
        return value
    article = "an" if want[0] in "aeiou" else "a"
    raise ParamError(f"parameter {param.name}: expected {article} {want}, got {value!r} (a {_type_name(value)})")


def unknown_name_error(name: str, known) -> str:
    """One line for a parameter name the node does not declare, with the closest declared name."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown parameter {name!r}{hint} (config/*.yaml lists every parameter)"


def is_ros_param(name: str) -> bool:
    return name in ROS_PARAM_NAMES or name.startswith(ROS_PARAM_PREFIXES)


def check_values(table: list[Param], values: dict) -> tuple[dict, list[str]]:
    """Check ``values`` ({name: value}, e.g. a node's parameter overrides) against ``table``: returns the values
    that pass (coerced: ints for doubles) and one error line per value that does not or per unknown name (rclpy's
    own parameters such as use_sim_time are known)."""
    by_name = {p.name: p for p in table}
    good, errors = {}, []
    for name, value in values.items():
        if name in by_name:
            try:
                good[name] = by_name[name].coerce(value)
            except ParamError as err:
                errors.append(str(err))
        elif not is_ros_param(name):
            errors.append(unknown_name_error(name, by_name))
    return good, errors


def cli_param_values(argv, node_name: str) -> dict[str, tuple[str, object]]:
    """The ``-p name:=value`` / ``--param`` rules of ``argv``'s ``--ros-args`` sections that apply to ``node_name``
    (no prefix or ``node_name:``): {name: (text, value typed as YAML, as rcl types it)}."""
    out, in_ros, args = {}, False, list(argv or [])
    for i, arg in enumerate(args):
        if arg == "--ros-args":
            in_ros = True
        elif arg == "--":
            in_ros = False
        elif in_ros and arg in ("-p", "--param") and i + 1 < len(args) and ":=" in args[i + 1]:
            name, text = args[i + 1].split(":=", 1)
            node, _, name = name.rpartition(":")
            if node in ("", node_name, "/" + node_name):
                try:
                    out[name] = (text, yaml.safe_load(text) if text.strip() else "")
                except yaml.YAMLError:
                    out[name] = (text, text)
    return out


def dropped_cli_values(cli_values: dict, overrides: dict) -> list[str]:
    """Error lines for ``-p`` values that did not reach the node: rcl keeps a --params-file value over a later
    ``-p`` of another type (``refine: false`` in the file, ``-p refine:=banana``: the node gets false, silently).
    ``overrides``: {name: value} the node received."""
    errors = []
    for name, (text, value) in cli_values.items():
        got = overrides.get(name, value)
        if type(got) is not type(value) or got != value:
            errors.append(f"parameter {name}: -p {name}:={text} did not take effect (the node got {got!r} from the "
                          f"parameter file); give it a value of the file's type ({_type_name(got)})")
    return errors


def read_params_file(path, node_name: str) -> dict:
    """The ``ros__parameters`` a ROS parameter YAML gives ``node_name`` (sections ``/**``, ``node_name``,
    ``/node_name`` or a wildcard that matches it, merged in file order). ParamError for a file that is not one."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ParamError(f"parameter file {path}: {err}") from None
    if not isinstance(doc, dict):
        raise ParamError(f"parameter file {path}: expected '<node>: {{ros__parameters: {{...}}}}' sections")
    merged = {}
    for key, section in doc.items():
        pattern = "/" + str(key).lstrip("/")
        if fnmatch.fnmatchcase("/" + node_name, pattern):
            params = section.get("ros__parameters") if isinstance(section, dict) else None
            if not isinstance(params, dict):
                raise ParamError(f"parameter file {path}: section {key!r} has no ros__parameters mapping")
            merged.update(params)
    return merged


LOCALIZER_PARAMS = [
    # map and compute
    Param("map_path", "", "Map file written by reloc-map (.safetensors); loaded in configure. Required."),
    Param("front_end", "", "Expected front end (a registered one: 'ace' | 'implicit' | 'sift'); empty = whatever the map "
          "holds. A mismatch fails configure.", choices=("",) + tuple(front_end_names())),
    Param("device", "cpu", "Torch device for the front end and the refiner ('cpu', 'cuda', 'cuda:0', ...).",
          check="device"),
    Param("refine", False, "Run the featuremetric refinement (needs the map's .ref.safetensors reference model)."),
    Param("backend", "", "Library that runs the front end's networks: 'torch', or 'onnxruntime' (the map's ONNX "
          "graphs from reloc-export: front_end_options' onnx_dir, else exported once into the user cache; "
          "onnx_providers picks CPU / CUDA / TensorRT; ace and implicit maps); empty = the front end's default.",
          choices=("",) + BACKENDS),
    Param("front_end_options", "{}", "JSON object of front-end options passed to Localizer.from_map (e.g. "
          "'{\"threshold_px\": 2.0}' for ACE).", check="json_object"),
    Param("refiner_options", "{}", "JSON object of featuremetric refiner options (DEFAULT_REFINER_CONF keys in "
          "reloc_ros/refinement/refiner.py, e.g. '{\"max_points\": 512}'); used when refine is true. They go over the "
          "front end's own refiner defaults: the implicit front end turns the matching initialisation on "
          "('{\"match_init\": \"compete\", \"match_max_points\": 512}': the LM also starts from a PnP pose on feature "
          "matches, +5 ms, 67 -> 76 % within 5 cm/5° on 7-Scenes); '{\"match_init\": \"off\"}' turns it off. "
          "/initialpose priors always use it.", check="json_object"),
    Param("position_sigma_floor", 0.0, "Extra position floor (m), added in quadrature to each position axis (x, y, "
          "z) on top of the map's calibrated covariance (fitted by reloc-map on held-out frames; Localizer "
          "position_sigma_floor_m): for maps whose poses you know to be worse. Applied on configure and "
          "~/reload_map.", min=0.0),
    Param("rotation_sigma_floor_deg", 0.0, "Extra rotation floor (degrees), added in quadrature to each rotation "
          "axis (rx, ry, rz) on top of the map's calibrated covariance (Localizer rotation_sigma_floor_deg). Applied "
          "on configure and ~/reload_map.", min=0.0),
    Param("num_threads", 0, "torch intra-op threads; 0 = torch's default.", min=0),
    Param("autostart", False, "Configure and activate at start-up (without a lifecycle manager)."),
    Param("bond_heartbeat_period", 0.1, "Seconds between the bond heartbeats (bond/msg/Status on 'bond') sent "
          "while active, which Nav2's lifecycle_manager watches (as nav2_util::LifecycleNode); 0 = no bond.", min=0.0),
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
          "(one value) = look it up in /tf_static (base_frame <- camera_frame).", check="extrinsic"),
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
          "accepted: at least the refinement's exp(-sigma_pos / 0.25 m) from its covariance.", min=0.0, max=1.0),
    Param("min_inliers", 30, "ACE front end: reject poses with fewer RANSAC inliers.", min=0),
    Param("min_inlier_ratio", 0.0, "ACE front end: reject poses with a smaller inlier ratio.", min=0.0, max=1.0),
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
          "[0.0] = identity (the topic gives the camera pose).", check="extrinsic"),
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
    Param("device", "cpu", "Torch device for ~/build_map.", check="device"),
    Param("train_minutes", 5.0, "Wall-clock cap of ~/build_map's training (minutes): the front end's iteration schedule is shortened, with a "
          "warning, to what the cap buys on this machine.", min=0.0),
    Param("build_reference", True, "Also build the refinement reference model in ~/build_map: reference points "
          "triangulated with pycolmap from the recorded poses (the recorder writes colour only), or back-projected "
          "from registered depth (<frame>.depth.png, uint16 mm) when every recorded frame has it. Needs a few dozen "
          "overlapping keyframes."),
    Param("calibration_holdout", 0.1, "Share of the recorded keyframes (blocks of consecutive frames) held out of the "
          "map in ~/build_map to calibrate its covariance and confidence; 0 = no calibration (the localizer then "
          "warns that its covariances are the estimators' own).", min=0.0, max=0.5),
    Param("train_overrides", "{}", "JSON object of front-end training options (its DEFAULT_CONF keys).",
          check="json_object"),
]


def wants_help(argv) -> bool:
    """``-h`` / ``--help`` among the program's own arguments (before any ``--ros-args``)."""
    args = list(argv or [])[1:]
    own = args[:args.index("--ros-args")] if "--ros-args" in args else args
    return "-h" in own or "--help" in own


def node_help(prog: str, summary: str, table: list[Param], yaml_name: str) -> str:
    """``--help`` of a node executable: usage, then every parameter with its type, default and allowed values."""
    lines = [f"usage: {prog} [--ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r FROM:=TO ...]]", "",
             summary.strip(), "",
             f"Parameters (documented in config/{yaml_name}; an unknown name or a bad value is refused at start-up "
             "and fails configure):"]
    for p in table:
        extra = f"; {p.constraints()}" if p.constraints() else ""
        lines.append(f"  {p.name} ({p.type_name}, default {p.default!r}{extra})")
        lines.append(f"      {p.description}")
    return "\n".join(lines)

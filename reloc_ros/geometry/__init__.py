"""Geometry core: pose conventions, camera model, weighted Kabsch. No ROS, no I/O."""
from .camera import Camera, InvalidCameraError
from .kabsch import DegenerateWeightsError, weighted_kabsch
from .pose import invert_T, make_T, rotation_angle_deg, transform_points

__all__ = ["Camera", "InvalidCameraError", "DegenerateWeightsError", "weighted_kabsch", "invert_T", "make_T",
           "rotation_angle_deg", "transform_points"]

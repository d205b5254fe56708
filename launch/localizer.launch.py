"""Launch the reloc_localizer lifecycle node on a ROS 2 install (`ros2 launch reloc_ros localizer.launch.py
map_path:=/path/map.safetensors`). Without launch_ros (pip wheels) use `reloc-launch localizer` instead.

autostart (default true) configures + activates the node itself; under Nav2's lifecycle_manager set it false and
add `reloc_localizer` to the manager's node_names (README, "Nav2 and robot_localization"). use_sim_time for bag
replay with /clock, log_level for the node's loggers, namespace for several cameras / robots. The Fast DDS SHM
profile (config/fastdds_shm.xml) is exported for best-effort 640x480 images.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description():
    share = get_package_share_directory("reloc_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "localizer.yaml"),
                              description="localizer parameter YAML"),
        DeclareLaunchArgument("map_path", description="map file written by reloc-map"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure + activate at start-up (false under a lifecycle manager)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
    ]
    node = LifecycleNode(
        package="reloc_ros", executable="localizer", name="reloc_localizer",
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"map_path": LaunchConfiguration("map_path"), "autostart": LaunchConfiguration("autostart"),
                     "use_sim_time": LaunchConfiguration("use_sim_time")}],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        remappings=[("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info")),
                    ("image/compressed", [LaunchConfiguration("image"), "/compressed"])],
    )
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    # Fast DDS 3 (Kilted) reads FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2 (Jazzy, Humble) FASTRTPS_DEFAULT_PROFILES_FILE
    fastdds2 = os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy")
    env = [SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE" if fastdds2 else "FASTDDS_DEFAULT_PROFILES_FILE",
                                  profile)]
    return LaunchDescription(args + env + [node])

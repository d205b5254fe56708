"""Launch the reloc_localizer lifecycle node on a ROS 2 install (`ros2 launch reloc_ros localizer.launch.py
map_path:=/path/map.safetensors`). Without launch_ros (pip wheels) use `reloc-launch localizer` instead.

autostart (default true) configures + activates the node itself; set it false to manage it with
nav2_lifecycle_manager. The Fast DDS SHM profile (config/fastdds_shm.xml) is exported for best-effort 640x480 images.
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
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "localizer.yaml")),
        DeclareLaunchArgument("map_path", description="map file written by reloc-map"),
        DeclareLaunchArgument("autostart", default_value="true"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("image", default_value="/camera/image_raw"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info"),
    ]
    node = LifecycleNode(
        package="reloc_ros", executable="localizer", name="reloc_localizer",
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"map_path": LaunchConfiguration("map_path"), "autostart": LaunchConfiguration("autostart")}],
        remappings=[("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info")),
                    ("image/compressed", [LaunchConfiguration("image"), "/compressed"])],
    )
    env = SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_shm.xml"))
    return LaunchDescription(args + [env, node])

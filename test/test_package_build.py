"""The package builds the way colcon builds it on a real ROS 2 install (ament_cmake: generate msg/, install the
Python package, launch and config files, node executables), here against the pip-wheel ROS in the venv."""
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def test_package_xml_declares_ros_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    deps = {e.text for e in root if e.tag.endswith("depend")}
    for needed in ("rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "tf2_msgs", "diagnostic_msgs",
                   "std_srvs", "lifecycle_msgs", "rosidl_default_generators", "rosidl_default_runtime",
                   "ament_cmake", "launch_ros"):
        assert needed in deps, f"package.xml does not declare {needed}"
    assert root.find("export/build_type").text == "ament_cmake"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_full_ament_build_installs_package(tmp_path):
    # colcon builds from <ws>/src/reloc_ros: copy the package there (the dev venv lives inside the checkout,
    # which CMake rejects as an include path "prefixed in the source directory").
    src, prefix, build = tmp_path / "src" / "reloc_ros", tmp_path / "install", tmp_path / "build"
    for name in ("CMakeLists.txt", "package.xml"):
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    for name in ("msg", "reloc_ros", "launch", "config", "scripts"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV))
    common = dict(cwd=src, env=env, capture_output=True, text=True, timeout=400)
    r = subprocess.run(["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
                        f"-DCMAKE_PREFIX_PATH={VENV}", f"-DPython3_EXECUTABLE={sys.executable}",
                        "-DBUILD_TESTING=OFF"], **common)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(["cmake", "--build", str(build), "-j2"], **common)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(["cmake", "--install", str(build)], **common)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "reloc_ros" / "msg" / "_relocalization_status.py").is_file()
    assert (site / "reloc_ros" / "localizer.py").is_file()
    assert (site / "reloc_ros" / "ros" / "localizer_node.py").is_file()
    assert (prefix / "share" / "reloc_ros" / "launch" / "localizer.launch.py").is_file()
    assert (prefix / "share" / "reloc_ros" / "config" / "localizer.yaml").is_file()
    assert os.access(prefix / "lib" / "reloc_ros" / "localizer", os.X_OK)
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "reloc_ros").is_file()

"""Re-point the CMake files exported by ROS 2 pip wheels at this venv's Python and numpy include dirs.

The wheels were built on a manylinux image; their exported CMake config names that machine's paths
(e.g. /opt/python/cp311-cp311/include/python3.11). Building messages against them needs this venv's paths.
Usage: python repoint_ros_cmake.py VENV  (idempotent)
"""
import pathlib
import re
import sys
import sysconfig

import numpy

venv = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
py_pat = re.compile(r"/opt/python/cp3\d+-cp3\d+t?/include/python3\.\d+t?")
np_pat = re.compile(r"/opt/python/cp3\d+-cp3\d+t?/lib/python3\.\d+t?/site-packages/numpy/(?:_core|core)/include")
changed = 0
for f in (venv / "share").glob("*/cmake/*"):
    if not f.is_file():
        continue
    try:
        text = f.read_text()
    except UnicodeDecodeError:
        continue
    new = np_pat.sub(np_inc, text)
    new = py_pat.sub(py_inc, new)
    if new != text:
        f.write_text(new)
        changed += 1
print(f"[setup] re-pointed {changed} CMake files at {py_inc}")

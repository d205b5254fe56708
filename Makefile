# The two commands: `make demo` (the product on the generated demo scene) and `make test`.
# Both run the idempotent setup first (.venv with torch CPU, ROS 2 kilted wheels, generated messages).
# ROS_DISTRO=jazzy: the ROS 2 Jazzy wheels in .venv-jazzy (kilted, the default, in .venv)
ROS_DISTRO ?= kilted
export ROS_DISTRO
ifeq ($(ROS_DISTRO),jazzy)
VENV ?= .venv-jazzy
else
VENV ?= .venv
endif
export VENV := $(abspath $(VENV))
PY := $(VENV)/bin/python
# glibc allocator tunables: up to 2.5x faster torch on CPU (see benchmarks/README.md).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
export HOME ?= /tmp
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PYTHONUNBUFFERED := 1
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test demo bench clean-venv

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest test -ra --durations=15 $(PYTEST_ARGS)

demo: setup
	$(PY) -m reloc_ros.demo $(DEMO_ARGS)

bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)

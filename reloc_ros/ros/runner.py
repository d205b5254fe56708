"""``reloc-launch``: start the nodes as subprocesses (the wheels have no ``launch``/``ros2 run``) and drive the
localizer's lifecycle.

    reloc-launch localizer --params config/localizer.yaml [-p name:=value ...] [--remap from:=to ...]
                 [--name NODE] [--no-activate] [--domain-id N]
    reloc-launch mapper --params config/mapper.yaml [...]

Python API (used by tests, the demo and ``reloc-eval-bag``)::

    env = ros_env(domain_id=42)                     # HOME, LOCALHOST discovery, Fast DDS SHM profile, glibc tunables
    h = start_localizer("config/localizer.yaml", {"map_path": "m.safetensors"}, env=env, log_path="loc.log")
    h.wait_active(timeout=60)                        # configure -> activate via lifecycle_msgs services
    ...
    h.stop()                                         # SIGINT, then SIGKILL after a grace period

Children run with this interpreter (the venv's python) and the parent's environment, so the ROS wheels'
bootstrapper settings (LD_LIBRARY_PATH, _ROS_WHEELS_BOOTSTRAP_COMPLETE) carry over.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

__all__ = ["ros_env", "fastdds_profile_path", "NodeProcess", "start_node", "start_localizer", "start_mapper",
           "node_params", "LifecycleError", "main"]

GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
NODE_MODULES = {"localizer": "reloc_ros.ros.localizer_node", "mapper": "reloc_ros.ros.mapper_node"}
DEFAULT_NAMES = {"localizer": "reloc_localizer", "mapper": "reloc_mapper"}


class LifecycleError(RuntimeError):
    """A lifecycle transition that failed or timed out (the message says which and points at the node's log)."""


def fastdds_profile_path() -> Path:
    """config/fastdds_shm.xml of the checkout, else of the installed package (pip prefix or ament share)."""
    from ..resources import share_file
    return share_file("config/fastdds_shm.xml")


FASTDDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS2_DISTROS = ("humble", "iron", "jazzy")


def fastdds_profile_vars(ros_distro: str) -> tuple:
    """The variable(s) naming the Fast DDS XML profile: Fast DDS 3 (Kilted and later) reads
    FASTDDS_DEFAULT_PROFILES_FILE (and warns that the other is deprecated), Fast DDS 2 (Jazzy and older) reads only
    FASTRTPS_DEFAULT_PROFILES_FILE: without it, Jazzy's /tf messages behind 640x480 images were lost and resent ~3 s
    later (a reliable writer's heartbeat). Both when ``ros_distro`` is unknown."""
    if ros_distro in FASTDDS2_DISTROS:
        return ("FASTRTPS_DEFAULT_PROFILES_FILE",)
    return ("FASTDDS_DEFAULT_PROFILES_FILE",) if ros_distro else FASTDDS_PROFILE_VARS


def ros_env(base: dict | None = None, domain_id: int | None = None, fastdds_profile: bool = True) -> dict:
    """Environment for ROS processes: the parent's, plus HOME (rclpy logging needs it), localhost-only discovery,
    the Fast DDS SHM profile, the glibc allocator tunables, unbuffered Python and ``ROS_DOMAIN_ID`` when given.
    Values already set in ``base`` win (except ``domain_id``, which is explicit)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("HOME", tempfile.gettempdir())
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("GLIBC_TUNABLES", GLIBC_TUNABLES)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if fastdds_profile:
        for name in fastdds_profile_vars(env.get("ROS_DISTRO", "")):
            env.setdefault(name, str(fastdds_profile_path()))
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    return env


class _Raw(str):
    """A command-line value, typed as YAML by ``node_params`` (as the ROS argument parser types ``-p`` values)."""


class NodeProcess:
    """A node running in a child process. ``pid``, ``returncode``, ``log_path``; ``wait_active`` drives the lifecycle
    (localizer) or waits for the node's services (mapper); ``stop`` sends SIGINT then SIGKILL."""

    def __init__(self, kind: str, name: str, cmd: list[str], env: dict, log_path: str | Path | None = None):
        self.kind, self.name, self.cmd, self.env = kind, name, cmd, env
        self.log_path = Path(log_path) if log_path else None
        out = open(self.log_path, "wb") if self.log_path else None
        self._log_file = out
        self.temp_files: list[Path] = []   # removed by stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(log on the console)"
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def configure_errors(self) -> list[str]:
        """The node's ERROR lines once its log says its configure failed (autostart), else []: a caller waiting for
        the node to come up stops at once with the node's reason."""
        lines = self.log_tail(20000).splitlines()
        if not any("configure failed" in ln for ln in lines):
            return []
        return [ln for ln in lines if "[ERROR]" in ln]

    def wait_active(self, timeout: float = 120.0) -> "NodeProcess":
        """Localizer: configure then activate (raises LifecycleError on failure). Mapper: wait for its services."""
        domain = int(self.env.get("ROS_DOMAIN_ID", "0") or 0)
        with _ClientNode(domain) as client:
            if self.kind == "localizer":
                client.lifecycle(self, timeout)
            else:
                client.wait_for_service(self, f"/{self.name}/build_map", timeout)
        return self

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (like Ctrl-C), wait ``timeout`` s, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for path in self.temp_files:
            path.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class _ClientNode:
    """A throw-away rclpy node in its own Context (does not touch the caller's rclpy.init)."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx, domain_id=domain_id)  # not sys.argv (reloc-launch arguments)
        self.node = rclpy.create_node(f"reloc_launch_{os.getpid()}_{int(time.monotonic() * 1e3) % 100000}",
                                      context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)

    def _call(self, client, request, proc: NodeProcess, deadline: float, what: str, attempt_s: float | None = None):
        """Call a service until ``deadline``. A service found by ``wait_for_service`` may not yet have matched this
        client's response reader (DDS discovery is per endpoint): its first response can be lost ("failed to send
        response"). With ``attempt_s`` an unanswered request is withdrawn after that long and None returned."""
        while not client.wait_for_service(timeout_sec=0.1):
            if not proc.alive():
                raise LifecycleError(f"{proc.name} exited (code {proc.returncode}) before {what}:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise LifecycleError(f"{proc.name}: service for {what} did not appear:\n{proc.log_tail()}")
        fut = client.call_async(request)
        t0 = time.monotonic()
        while not fut.done():
            self.executor.spin_once(timeout_sec=0.1)
            if not proc.alive():
                raise LifecycleError(f"{proc.name} exited (code {proc.returncode}) during {what}:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise LifecycleError(f"{proc.name}: {what} timed out:\n{proc.log_tail()}")
            if attempt_s is not None and time.monotonic() - t0 > attempt_s:
                client.remove_pending_request(fut)
                return None
        return fut.result()

    def wait_for_service(self, proc: NodeProcess, service: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            names = [n for n, _ in self.node.get_service_names_and_types()]
            if service in names:
                return
            if not proc.alive():
                raise LifecycleError(f"{proc.name} exited (code {proc.returncode}):\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise LifecycleError(f"{proc.name}: service {service} did not appear:\n{proc.log_tail()}")
            self.executor.spin_once(timeout_sec=0.1)

    def lifecycle(self, proc: NodeProcess, timeout: float):
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState
        deadline = time.monotonic() + timeout
        get = self.node.create_client(GetState, f"/{proc.name}/get_state")
        change = self.node.create_client(ChangeState, f"/{proc.name}/change_state")
        # Ask for the state, make the next transition, ask again: a lost response (see _call) only costs a retry.
        while True:
            res = self._call(get, GetState.Request(), proc, deadline, "get_state", attempt_s=2.0)
            state = None if res is None else res.current_state.label
            if state == "active":
                return
            if state is None:  # the response was lost: ask again
                continue
            if state in ("configuring", "activating"):  # the transition is running: ask again shortly
                self.executor.spin_once(timeout_sec=0.1)
                continue
            if state not in ("unconfigured", "inactive"):
                raise LifecycleError(f"{proc.name} is in lifecycle state {state!r}")
            label, tid = (("configure", Transition.TRANSITION_CONFIGURE) if state == "unconfigured"
                          else ("activate", Transition.TRANSITION_ACTIVATE))
            req = ChangeState.Request()
            req.transition.id = tid
            res = self._call(change, req, proc, deadline, label, attempt_s=10.0)
            if res is not None and not res.success:
                raise LifecycleError(f"{proc.name}: transition {label} failed (see its log):\n{proc.log_tail()}")


def node_params(kind: str, name: str, params_file: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The parameter values ``kind``'s node ``name`` gets: the file's section for it, then ``overrides`` on top
    (``_Raw`` command-line text typed as YAML, as rcl does), each checked (ints for doubles converted). Raises
    ParamError with one line per unknown name or bad value, before any node is started. (rcl itself keeps a file
    value over a ``-p`` of another type: the merge is done here.)"""
    from .params import LOCALIZER_PARAMS, MAPPER_PARAMS, ParamError, check_values, read_params_file
    values = {}
    if params_file is not None:
        if not Path(params_file).is_file():
            raise ParamError(f"parameter file {params_file} does not exist")
        values = read_params_file(params_file, name)
    for k, v in (overrides or {}).items():
        if isinstance(v, _Raw):
            try:
                v = yaml.safe_load(v) if v.strip() else ""
            except yaml.YAMLError:
                raise ParamError(f"parameter {k}: {str(v)!r} is not a YAML value") from None
        values[k] = os.fspath(v) if isinstance(v, os.PathLike) else v
    good, errors = check_values(LOCALIZER_PARAMS if kind == "localizer" else MAPPER_PARAMS, values)
    if errors:
        raise ParamError("\n".join(errors))
    return good


def start_node(kind: str, params_file: str | Path | None = None, overrides: dict | None = None,
               env: dict | None = None, name: str | None = None, remaps: dict | None = None,
               log_path: str | Path | None = None) -> NodeProcess:
    """Start ``kind`` ('localizer' | 'mapper') as ``python -m <module> --ros-args ...`` with ``env`` (default
    ``ros_env()``). ``params_file`` + ``overrides`` (parameter values over the file's): merged and checked by
    ``node_params`` and given to the node as one temporary parameter file; ``remaps``: topic remappings
    (``-r from:=to``)."""
    if kind not in NODE_MODULES:
        raise ValueError(f"unknown node {kind!r}; choose one of {sorted(NODE_MODULES)}")
    name = name or DEFAULT_NAMES[kind]
    values = node_params(kind, name, params_file, overrides)
    fd, merged = tempfile.mkstemp(prefix=f"{name}.", suffix=".params.yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"/**": {"ros__parameters": values}}, f)
    cmd = [sys.executable, "-m", NODE_MODULES[kind], "--ros-args", "-r", f"__node:={name}", "--params-file", merged]
    for a, b in (remaps or {}).items():
        cmd += ["-r", f"{a}:={b}"]
    proc = NodeProcess(kind, name, cmd, env if env is not None else ros_env(), log_path)
    proc.temp_files.append(Path(merged))
    return proc


def start_localizer(params_file=None, overrides=None, env=None, **kw) -> NodeProcess:
    return start_node("localizer", params_file, overrides, env, **kw)


def start_mapper(params_file=None, overrides=None, env=None, **kw) -> NodeProcess:
    return start_node("mapper", params_file, overrides, env, **kw)


def parse_ros_pairs(items: list[str], what: str = "-p") -> dict:
    """``["name:=value", ...]`` -> ``{name: value}``, values kept verbatim (``_Raw``) so that the ROS argument parser
    types them exactly as ``ros2 run ... -p name:=value`` would. Used for ``-p`` and ``--remap`` options."""
    out = {}
    for it in items:
        if ":=" not in it:
            raise SystemExit(f"{what} expects name:=value, got {it!r}")
        k, v = it.split(":=", 1)
        out[k] = _Raw(v)
    return out


def main(argv=None) -> int:
    from ..cli_args import HelpFormatter, number
    ap = argparse.ArgumentParser(prog="reloc-launch", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("node", choices=sorted(NODE_MODULES), help="which node to start")
    ap.add_argument("--params", type=Path, help="parameter YAML (config/localizer.yaml, config/mapper.yaml)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="parameter value over the YAML's (repeatable)")
    ap.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="topic remapping (repeatable)")
    ap.add_argument("--name", help="node name (default reloc_localizer / reloc_mapper)")
    ap.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID for the node")
    ap.add_argument("--no-activate", action="store_true", help="leave the localizer unconfigured")
    ap.add_argument("--timeout", type=number(float, min=0, min_exclusive=True), default=300.0, help="seconds allowed for configure + activate")
    args = ap.parse_args(argv)
    env = ros_env(domain_id=args.domain_id)
    from .params import ParamError
    try:
        h = start_node(args.node, args.params, parse_ros_pairs(args.param, "-p"), env, args.name,
                       parse_ros_pairs(args.remap, "--remap"))
    except ParamError as err:
        ap.error(str(err))
    forward = lambda sig, _frame: h.proc.send_signal(sig) if h.alive() else None  # noqa: E731
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    if args.node == "localizer" and not args.no_activate:
        try:
            h.wait_active(args.timeout)
            print(f"[reloc-launch] {h.name} (pid {h.pid}) is active", flush=True)
        except LifecycleError as err:
            print(f"[reloc-launch] {err}", file=sys.stderr)
            h.stop()
            return 1
    return h.proc.wait()


if __name__ == "__main__":
    sys.exit(main())

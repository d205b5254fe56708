"""Command-line tools refuse bad flags before any work: one line naming the flag, exit code 2, nothing written.

Each case is run as the user runs it (a subprocess of the installed entry point), so a traceback or a late failure
would show. Unwritable outputs use /proc (no file can be created there, even by root)."""
import subprocess
import sys

import pytest

UNWRITABLE = "/proc/reloc_ros_test/out"


def run_tool(module: str, *args, timeout=120) -> subprocess.CompletedProcess:
    code = f"import sys; from {module} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _map_args(demo_scene_root, out, *extra):
    return ["--dataset", demo_scene_root, "--out", out, "--set", "iterations=10", *extra]


def test_reloc_map_checks_outputs_and_config_first(demo_scene_root, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    m = "reloc_ros.mapping.cli"
    assert_refused(run_tool(m, *_map_args(demo_scene_root, folder)), "--out", "is an existing folder")
    assert_refused(run_tool(m, *_map_args(demo_scene_root, f"{UNWRITABLE}/m.map.safetensors")), "--out",
                   "cannot write in /proc")
    assert_refused(run_tool(m, *_map_args(demo_scene_root, tmp_path / "m.map.safetensors", "--config",
                                          tmp_path / "nope.yaml")), "--config", "no such file")
    assert_refused(run_tool(m, *_map_args(demo_scene_root, tmp_path / "m.map.safetensors", "--device", "banana")),
                   "device 'banana'")
    assert_refused(run_tool(m, *_map_args(demo_scene_root, tmp_path / "m.map.safetensors", "--set", "bogus=1")),
                   "unknown ace training option(s) ['bogus']")
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.ckpt.pt"))


def test_reloc_eval_checks_outputs_first(demo_map_ace, demo_scene_root, tmp_path):
    m = "reloc_ros.evaluation.offline"
    base = ["--map", demo_map_ace[0], "--dataset", demo_scene_root]
    assert_refused(run_tool(m, *base, "--json", tmp_path), "--json", "is an existing folder")
    assert_refused(run_tool(m, *base, "--json", f"{UNWRITABLE}/r.json"), "--json", "cannot write in /proc")
    (tmp_path / "file").write_text("")
    assert_refused(run_tool(m, *base, "--json", tmp_path / "r.json", "--plots", tmp_path / "file"), "--plots",
                   "is an existing file, expected a folder")
    assert_refused(run_tool(m, *base, "--json", tmp_path / "r.json", "--tum", f"{UNWRITABLE}/tum"), "--tum")
    assert_refused(run_tool(m, "--map", tmp_path / "nope.safetensors", "--dataset", demo_scene_root, "--json",
                            tmp_path / "r.json"), "--map", "no such file")
    assert_refused(run_tool(m, *base, "--json", tmp_path / "r.json", "--limit", "0"), "--limit", "must be >= 1")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("module, args, needles", [
    ("reloc_ros.datasets.bag_writer", ["--fps", "0"], ["--fps", "must be > 0"]),
    ("reloc_ros.datasets.bag_writer", ["--fps", "nan"], ["--fps", "not a finite number"]),
    ("reloc_ros.demo_scene", ["--n-query", "-3"], ["--n-query", "must be >= 1"]),
    ("reloc_ros.demo", ["--minutes", "0"], ["--minutes", "must be > 0"]),
    ("reloc_ros.demo", ["--limit", "2.5"], ["--limit", "'2.5' is not an integer"]),
])
def test_numeric_flags_are_range_checked(module, args, needles, demo_scene_root, tmp_path):
    extra = {"reloc_ros.datasets.bag_writer": ["--dataset", demo_scene_root, "--out", tmp_path / "bag"],
             "reloc_ros.demo_scene": ["--out", tmp_path / "scene"], "reloc_ros.demo": ["--out", tmp_path / "demo"]}
    assert_refused(run_tool(module, *extra[module], *args), *needles)
    assert not list(tmp_path.iterdir())


def test_a_backend_the_front_end_lacks_is_refused_first(tmp_path):
    assert_refused(run_tool("reloc_ros.demo", "--out", tmp_path / "demo", "--front-end", "sift", "--backend",
                            "onnxruntime"), "--backend onnxruntime", "the sift front end runs on torch only")
    assert not list(tmp_path.iterdir())


def test_output_folders_are_checked(demo_scene_root, tmp_path):
    (tmp_path / "bag").mkdir()
    assert_refused(run_tool("reloc_ros.datasets.bag_writer", "--dataset", demo_scene_root, "--out", tmp_path / "bag"),
                   "--out", "already exists")
    assert_refused(run_tool("reloc_ros.demo_scene", "--out", f"{UNWRITABLE}/scene"), "--out", "cannot write in /proc")
    assert_refused(run_tool("reloc_ros.demo", "--out", f"{UNWRITABLE}/demo"), "--out", "cannot write in /proc")


def test_reloc_map_checks_the_reference_input_before_training(small_scene, tmp_path):
    """Raw 7-Scenes depth (its own camera, no extrinsic) used to fail after the whole training, at the reference
    model; now reloc-map refuses it before training, naming the flag that accepts it."""
    root = small_scene
    (root / "depth-camera-intrinsics.txt").write_text("585 0 320\n0 585 240\n0 0 1\n")
    out = tmp_path / "m.map.safetensors"
    proc = run_tool("reloc_ros.mapping.cli", "--dataset", root, "--out", out, "--set", "iterations=50")
    assert_refused(proc, "frame-000000", "not registered", "--reference-set unregistered_depth=identity")
    assert "front end on" not in proc.stdout  # refused before the training started
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.ckpt.pt"))

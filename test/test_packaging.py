"""A user's install, not the checkout: build a wheel from the sources, install it (no editable install) into a
fresh venv, and run the tools from a folder outside the repository. Catches files the code loads but setup.py
does not install (config/fastdds_shm.xml was missing: ros_env() raised) and imports of the checkout.

The fresh venv reaches the already installed dependencies through a .pth line (nothing is downloaded; the
repository's own reloc_ros_src.pth is not followed, so the checkout is not on its path)."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, a working folder outside the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "package.xml"):
        shutil.copy(REPO / name, src / name)
    for name in ("reloc_ros", "config", "launch"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
          tmp / "dist", src], cwd=tmp)
    wheel, = (tmp / "dist").glob("reloc_ros-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    bin_dir = venv / "bin"
    site = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    return bin_dir, work


def test_the_wheel_installs_the_package_and_every_data_file(installed):
    bin_dir, work = installed
    code = ("import json, reloc_ros; from reloc_ros.resources import share_file; "
            "from reloc_ros.ros.runner import fastdds_profile_path, ros_env; "
            "print(json.dumps([reloc_ros.__file__, str(fastdds_profile_path()), str(share_file('config/localizer.yaml')),"
            " str(share_file('launch/localizer.launch.py')), ros_env()['FASTDDS_DEFAULT_PROFILES_FILE']]))")
    paths = json.loads(_run([bin_dir / "python", "-c", code], cwd=work))
    venv = bin_dir.parent.resolve()
    for p in paths:
        assert Path(p).resolve().is_relative_to(venv), (p, "not from the installed package")
    out = _run([bin_dir / "reloc-eval", "--help"], cwd=work)
    assert out.startswith("usage: reloc-eval")


def test_one_localization_from_the_installed_tools(installed, demo_map_ace, demo_scene_root):
    bin_dir, work = installed
    map_path, names = demo_map_ace
    (work / "frames.txt").write_text("\n".join(names[:2]) + "\n")
    _run([bin_dir / "reloc-eval", "--map", map_path, "--dataset", demo_scene_root, "--frames", work / "frames.txt",
          "--json", work / "eval.json"], cwd=work)
    res = json.loads((work / "eval.json").read_text())
    assert res["n_queries"] == 2 and res["recall_5cm_5deg"] == 1.0, res

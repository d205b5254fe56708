"""Mapping-time uncertainty calibration through the tools a user runs: ``reloc-map`` holds frames out and says what
it did with them; ``reloc-calibrate`` fits an existing map on other posed frames and refuses bad input."""
import json
import shutil
import subprocess
import sys

import pytest

from reloc_ros.map_file import read_metadata
from reloc_ros.mapping.calibrate import split_holdout


def _tool(module, *args):
    code = f"import sys; from {module} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_reloc_calibrate_writes_the_calibration_into_the_map(demo_map_ace, demo_scene_root, tmp_path):
    path = tmp_path / "m.map.safetensors"
    shutil.copy(demo_map_ace[0], path)
    before = read_metadata(path)["uncertainty"]
    mapping = (demo_scene_root / "mapping.txt").read_text().split()   # the map holds every 20th of the first 120
    frames = ",".join(mapping[i + k] for i in range(0, 120, 20) for k in (4, 17, 18, 19))   # others, next to them
    proc = _tool("reloc_ros.mapping.calibrate", "--map", path, "--dataset", demo_scene_root, "--frames", frames,
                 "--front-end-options", '{"cell_stride": 1}')
    assert proc.returncode == 0, proc.stderr
    assert "front_end: scale position" in proc.stdout and "refined" not in proc.stdout   # the map has no reference
    after = read_metadata(path)["uncertainty"]
    assert after["holdout"]["names"] == frames.split(",") and after["stages"]["front_end"] != before["stages"]["front_end"]
    assert after["holdout"]["degradations"] == ["blur", "cover", "mirror"]
    # the options it was fitted with are recorded (not the speed-only ones) and become the map's defaults
    assert after["front_end_options"]["cell_stride"] == 1 and "encoder_backend" not in after["front_end_options"]
    assert before["front_end_options"]["cell_stride"] != 1


def test_a_map_is_localized_with_the_options_its_calibration_was_fitted_with(demo_map_ace, tmp_path):
    from reloc_ros.localizer import Localizer
    from reloc_ros.map_file import update_metadata
    path = tmp_path / "m.map.safetensors"
    shutil.copy(demo_map_ace[0], path)
    recorded = read_metadata(path)["uncertainty"]["front_end_options"]
    update_metadata(path, {"uncertainty": {**read_metadata(path)["uncertainty"],
                                           "front_end_options": {**recorded, "cell_stride": 3}}})
    loc = Localizer.from_map(path)
    assert loc.front_end.options["cell_stride"] == 3 and loc.uncertainty_warning is None
    loc = Localizer.from_map(path, front_end_options={"cell_stride": 1, "encoder_backend": "torch"})
    assert loc.front_end.options["cell_stride"] == 1     # the caller's options win, with one warning line
    assert "cell_stride 1 (calibrated: 3)" in loc.uncertainty_warning and "encoder_backend" not in loc.uncertainty_warning


def test_reloc_calibrate_refuses_unposed_frames_and_bad_options(demo_map_ace, tmp_path):
    import cv2
    import numpy as np
    path = tmp_path / "m.map.safetensors"
    shutil.copy(demo_map_ace[0], path)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((480, 640, 3), 40 * i, np.uint8))
    np.savetxt(folder / "K.txt", [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
    proc = _tool("reloc_ros.mapping.calibrate", "--map", path, "--dataset", folder, "--intrinsics", folder / "K.txt")
    assert proc.returncode == 2 and "cannot calibrate the front_end poses: only 0 calibration frames" in proc.stderr
    proc = _tool("reloc_ros.mapping.calibrate", "--map", path, "--dataset", folder, "--conf", '{"bogus": 1}')
    assert proc.returncode == 2 and "bogus" in proc.stderr and "Traceback" not in proc.stderr
    proc = _tool("reloc_ros.mapping.calibrate", "--map", path, "--dataset", folder, "--intrinsics", folder / "K.txt",
                 "--conf", '{"distance_growth_stages": ["refind"]}')
    assert proc.returncode == 2 and "unknown calibration stage 'refind'" in proc.stderr
    assert read_metadata(path) == read_metadata(demo_map_ace[0])      # untouched


def test_reloc_map_holds_frames_out_and_warns_when_they_cannot_calibrate(demo_scene_root, tmp_path, capsys):
    """The registry's dummy front end answers one pose for every image: its held-out frames are all wrong, so the
    map is written uncalibrated, with one warning line and the reason in the report."""
    from test_registry import SPEC
    from reloc_ros.frontends.registry import register_front_end
    from reloc_ros.mapping.cli import main as reloc_map
    register_front_end(SPEC)
    out = tmp_path / "mean.map.safetensors"
    assert reloc_map(["--dataset", str(demo_scene_root), "--front-end", "mean_pose", "--out", str(out),
                      "--no-reference", "--calibration-holdout", "0.25"]) == 0
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "only 0 calibration frames" in warnings[0] and "uncalibrated" in warnings[0]
    meta = read_metadata(out)
    assert "uncertainty" not in meta
    n_mapping = len((demo_scene_root / "mapping.txt").read_text().split())
    assert n_mapping - meta["frames"] == len(split_holdout(n_mapping, 0.25, 50)[1]) > 0
    with pytest.raises(SystemExit):
        reloc_map(["--dataset", str(demo_scene_root), "--front-end", "mean_pose", "--out", str(out),
                   "--calibration-holdout", "x"])


def test_a_map_calibrated_before_options_were_recorded_keeps_the_options_of_then(demo_map_ace, tmp_path):
    from reloc_ros.frontends.ace.frontend import AceFrontEnd
    from reloc_ros.localizer import Localizer
    from reloc_ros.map_file import update_metadata
    path = tmp_path / "m.map.safetensors"
    shutil.copy(demo_map_ace[0], path)
    entry = {k: v for k, v in read_metadata(path)["uncertainty"].items() if k != "front_end_options"}
    update_metadata(path, {"uncertainty": entry})
    loc = Localizer.from_map(path)
    assert loc.front_end.options["cell_stride"] == AceFrontEnd.LEGACY_CALIBRATION_OPTIONS["cell_stride"] == 2
    assert loc.uncertainty_warning is None

"""``make demo`` orchestration (reloc_ros.demo): clear failure of a step, and steps 3–4 (bag, offline evaluation,
table, caching) on demo-scene frames with the small shared ACE map. Rendering and mapping have their own tests; the
replay through the node (step 5 = ``run_bag_replay``) is tested in test_evaluation_e2e.py."""
from __future__ import annotations

import json

from reloc_ros import demo


def test_demo_reports_the_failing_step(tmp_path, capsys):
    rc = demo.main(["--out", str(tmp_path / "out"), "--dataset", str(tmp_path / "nope")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "step 1/5 scene FAILED" in out and "nope" in out and "completed steps: none" in out


def test_summary_table_formats_both_columns():
    table = demo.summary_table({"median_translation_m": 0.0123, "recall_5cm_5deg": 0.5, "refinement_accepted": 97},
                               {"median_translation_m": 0.02, "availability": 0.9, "dropped_frames": 3})
    lines = {line[:26].strip(): line[26:].split() for line in table.splitlines()[2:]}
    assert lines["median translation (cm)"] == ["1.2", "2.0"]
    assert lines["within 5 cm / 5 deg (%)"] == ["50.0", "-"]
    assert lines["availability (%)"] == ["-", "90.0"] and lines["dropped frames"] == ["-", "3"]
    assert lines["refinement accepted"] == ["97", "-"]


def test_demo_steps_on_a_given_map(demo_map_ace, demo_scene_root, tmp_path, capsys):
    map_path, names = demo_map_ace
    frames = tmp_path / "frames.txt"
    frames.write_text("\n".join(names) + "\n")
    argv = ["--out", str(tmp_path / "out"), "--dataset", str(demo_scene_root), "--map", str(map_path),
            "--frames-query", str(frames), "--skip-node", "--no-refine"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "3/5 bag: writing 6 query frames" in out and "4/5 offline: 6 queries" in out and "5/5" not in out
    table = {line[:26].strip(): line[26:].split() for line in out.split("through node")[1].splitlines()[2:15]}
    res_dir = tmp_path / "out" / demo_scene_root.name
    offline = json.loads((res_dir / "results" / "offline.json").read_text())
    assert offline["n_queries"] == 6 and offline["recall_5cm_5deg"] >= 5 / 6
    assert table["within 5 cm / 5 deg (%)"] == [f"{100 * offline['recall_5cm_5deg']:.1f}", "-"]
    assert (res_dir / "plots" / "offline" / "trajectory.png").stat().st_size > 5000
    assert (res_dir / "query_bag" / "metadata.yaml").is_file()
    # a second run reuses the bag (cached step) and says so
    assert demo.main(argv + ["--skip-offline"]) == 0
    assert "3/5 bag: reusing" in capsys.readouterr().out
    # --backend onnxruntime: the map's networks exported (user cache) and run by onnxruntime, the same accuracy
    assert demo.main(argv + ["--backend", "onnxruntime"]) == 0
    assert "ace + refinement" not in (out := capsys.readouterr().out) and "ace on onnxruntime" in out
    by_ort = json.loads((res_dir / "results" / "offline.json").read_text())
    assert by_ort["backends"] == {"ace_encoder": "onnxruntime", "ace_head": "onnxruntime"}
    assert offline["backends"] != by_ort["backends"]
    assert abs(by_ort["median_translation_m"] - offline["median_translation_m"]) < 2e-3
    assert by_ort["recall_5cm_5deg"] == offline["recall_5cm_5deg"]

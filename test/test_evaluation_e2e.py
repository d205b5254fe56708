"""End to end: ``reloc-eval`` offline and ``reloc-eval-bag`` through the real localizer node, on demo-scene frames
that the small overfitted ACE map (``demo_map_ace``) knows, so the expected accuracy is ~1 cm."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reloc_ros.datasets import open_dataset
from reloc_ros.datasets.bag_writer import write_bag
from reloc_ros.evaluation import bag_replay, offline
from reloc_ros.map_file import reference_path

CONTRACT_KEYS = {"n_queries", "median_translation_m", "median_rotation_deg", "recall_2cm_2deg", "recall_5cm_5deg",
                 "recall_10cm_5deg", "latency_ms_median", "latency_ms_p95", "map_bytes", "front_end", "refine",
                 "latency_stage_ms_median", "n_failed", "machine"}
PLOTS = ("trajectory.png", "errors_over_time.png", "error_cdf.png", "latency_hist.png")


def test_reloc_eval_offline(demo_map_ace, demo_scene_root, tmp_path, capsys):
    map_path, names = demo_map_ace
    frames = tmp_path / "frames.txt"
    frames.write_text("\n".join(names) + "\n")
    rc = offline.main(["--map", str(map_path), "--dataset", str(demo_scene_root), "--frames", str(frames),
                       "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "plots"),
                       "--tum", str(tmp_path / "tum")])
    assert rc == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert CONTRACT_KEYS <= set(res)
    assert res["n_queries"] == 6 and res["front_end"] == "ace" and res["refine"] is False
    assert res["recall_5cm_5deg"] >= 5 / 6 and res["median_translation_m"] < 0.03
    assert res["map_bytes"] == map_path.stat().st_size and not reference_path(map_path).exists()
    assert 0 < res["latency_ms_median"] <= res["latency_ms_p95"]
    assert [q["name"] for q in res["per_query"]] == names
    assert res["refinement_ran"] == 0 and not any(q["refinement_ran"] for q in res["per_query"])  # refine off
    for p in PLOTS:
        assert (tmp_path / "plots" / p).stat().st_size > 5000
    assert len((tmp_path / "tum" / "groundtruth.tum").read_text().splitlines()) == 6
    assert "5cm/5deg %" in capsys.readouterr().out
    # a refinement request without a reference model is a clear error, not a silent fallback
    rc = offline.main(["--map", str(map_path), "--dataset", str(demo_scene_root), "--frames", str(frames),
                       "--refine", "--json", str(tmp_path / "r2.json")])
    assert rc == 2 and "reference model" in capsys.readouterr().err


@pytest.mark.ros
def test_reloc_eval_bag_through_the_node(demo_map_ace, demo_scene_root, tmp_path):
    map_path, names = demo_map_ace
    bag = write_bag(open_dataset(demo_scene_root, frames=names), tmp_path / "query_bag", fps=10.0, progress=False)
    # min_confidence 0: this 6-frame map's calibration puts its own frames near the default 0.5 (test_gating.py)
    rc = bag_replay.main(["--bag", str(bag), "--map", str(map_path), "--max-rate", "--json", str(tmp_path / "bag.json"),
                          "--plots", str(tmp_path / "plots"), "--work-dir", str(tmp_path / "work"),
                          "-p", "min_confidence:=0.0"])
    assert rc == 0, (tmp_path / "work" / "localizer.log").read_text()[-3000:]
    res = saved = json.loads((tmp_path / "bag.json").read_text())
    assert CONTRACT_KEYS | {"availability", "false_accept_rate", "dropped_frames", "nees_inside_95",
                            "node_cpu_percent", "node_rss_mb"} <= set(saved)
    assert res["n_queries"] == 6 and res["n_sent"] == 6 and res["dropped_frames"] == 0
    assert res["n_status"] == 6, res["reasons"]
    assert res["availability"] >= 5 / 6 and res["recall_5cm_5deg"] >= 5 / 6, res["reasons"]
    assert res["false_accept_rate"] == 0.0
    assert res["pose_frame"] == "camera" and res["front_end"] == "ace" and res["refinement_ran"] == 0
    assert 0 < res["latency_ms_median"] < 30_000 and res["node_rss_mb"] > 50
    for p in PLOTS:
        assert (tmp_path / "plots" / p).stat().st_size > 5000


@pytest.mark.ros
def test_reloc_eval_bag_stops_with_the_nodes_reason_when_configure_fails(demo_map_ace, demo_scene_root, tmp_path,
                                                                        capsys):
    """A map the node cannot load (here: truncated): reloc-eval-bag used to wait out its 180 s start timeout and
    print two tracebacks; it now stops as soon as the node logs the failed configure, with the node's reason."""
    map_path, names = demo_map_ace
    broken = tmp_path / "broken.map.safetensors"
    broken.write_bytes(Path(map_path).read_bytes()[:5000])
    bag = write_bag(open_dataset(demo_scene_root, frames=names[:2]), tmp_path / "bag", fps=10.0, progress=False)
    rc = bag_replay.main(["--bag", str(bag), "--map", str(broken), "--json", str(tmp_path / "bag.json"),
                          "--work-dir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert "the localizer's configure failed" in err and "truncated or corrupt" in err and "180 s" not in err, err
    assert not (tmp_path / "bag.json").exists()


@pytest.mark.ros
def test_the_node_and_reloc_eval_make_the_same_gate_decisions(demo_map_ace, demo_scene_root, tmp_path):
    """The gate lives in the core: with a min_inliers threshold that splits the frames, reloc-eval (--gate) and the
    live node (-p min_inliers:=N, through reloc-eval-bag) accept and reject exactly the same frames."""
    map_path, names = demo_map_ace
    frames = tmp_path / "frames.txt"
    frames.write_text("\n".join(names) + "\n")
    args = ["--map", str(map_path), "--dataset", str(demo_scene_root), "--frames", str(frames)]
    assert offline.main(args + ["--json", str(tmp_path / "all.json")]) == 0
    counts = sorted(q["inlier_count"] for q in json.loads((tmp_path / "all.json").read_text())["per_query"])
    threshold = counts[len(counts) // 2]  # about half of the frames below it
    gate = json.dumps({"min_inliers": threshold, "min_confidence": 0.0})
    assert offline.main(args + ["--gate", gate, "--json", str(tmp_path / "gated.json")]) == 0
    offline_accepted = [q["accepted"] for q in json.loads((tmp_path / "gated.json").read_text())["per_query"]]
    assert 0 < sum(offline_accepted) < len(offline_accepted), (counts, threshold)
    bag = write_bag(open_dataset(demo_scene_root, frames=names), tmp_path / "bag", fps=10.0, progress=False)
    rc = bag_replay.main(["--bag", str(bag), "--map", str(map_path), "--json", str(tmp_path / "bag.json"),
                          "-p", f"min_inliers:={threshold}", "-p", "min_confidence:=0.0",
                          "--work-dir", str(tmp_path / "work")])
    assert rc == 0, (tmp_path / "work" / "localizer.log").read_text()[-3000:]
    node_accepted = [f["accepted"] for f in json.loads((tmp_path / "bag.json").read_text())["per_frame"]]
    assert node_accepted == offline_accepted

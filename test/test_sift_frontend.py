"""The classical peer front end "sift" (``reloc_ros/frontends/sift``): mutual ratio matching, bag-of-words retrieval,
and ``reloc-map`` / ``reloc-eval`` running it end to end on demo-scene frames, with clear errors on bad map files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reloc_ros.frontends.sift.features import BagOfWords, mutual_ratio_matches


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_mutual_ratio_matches_recovers_a_permutation_and_drops_ambiguous_ones():
    rng = np.random.default_rng(0)
    db = _unit(rng.normal(size=(300, 128)))
    db[1] = _unit(db[:1] + 0.01 * rng.normal(size=(1, 128)))[0]       # db 0 and 1: twins, ambiguous
    pick = rng.permutation(np.arange(2, 300))[:100]
    query = _unit(np.concatenate([db[[0]], db[pick]]) + 0.02 * rng.normal(size=(101, 128)))
    q, d = mutual_ratio_matches(query, db, ratio=0.8)
    assert 0 not in q                                                   # the twin fails the ratio test
    np.testing.assert_array_equal(d, pick[q - 1])
    assert len(q) == 100
    # mutual: two queries wanting the same db descriptor keep only the closer one
    q2, d2 = mutual_ratio_matches(np.concatenate([query[1:2], _unit(query[1:2] + 0.2 * rng.normal(size=(1, 128)))]),
                                  db, ratio=0.95)
    assert q2.tolist() == [0] and d2.tolist() == [pick[0]]
    assert mutual_ratio_matches(query[:0], db, 0.8)[0].shape == (0,)


def test_bag_of_words_ranks_the_image_that_shares_the_words_first():
    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(40, 128)))
    images = []
    for i in range(8):   # image i sees words 5i..5i+9 (neighbours overlap by half), word 39 is everywhere
        words = np.r_[np.arange(5 * i, 5 * i + 10) % 39, 39]
        images.append(_unit(centres[rng.choice(words, 300)] + 0.05 * rng.normal(size=(300, 128))))
    bow = BagOfWords.fit(images, num_words=40, seed=0)
    vectors = np.stack([bow.embed(d) for d in images])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert bow.idf[bow.words(centres[39:40])[0]] == pytest.approx(0.0)   # in every image: no information
    for i in range(8):
        query = _unit(images[i][:100] + 0.05 * rng.normal(size=(100, 128)))
        assert np.argmax(vectors @ bow.embed(query)) == i
    with pytest.raises(ValueError, match="too few for a vocabulary of 4000 words"):
        BagOfWords.fit(images[:1], num_words=4000)


@pytest.fixture(scope="module")
def sift_map(demo_scene_root, tmp_path_factory):
    """A sift map of 30 demo mapping frames (every 4th), built by reloc-map, calibrated on 6 held-out frames."""
    from reloc_ros.mapping.cli import main as reloc_map
    root = tmp_path_factory.mktemp("sift")
    frames = root / "frames.txt"
    frames.write_text("\n".join((demo_scene_root / "mapping.txt").read_text().split()[:120:4]) + "\n")
    out = root / "demo.map.safetensors"
    assert reloc_map(["--dataset", str(demo_scene_root), "--frames", str(frames), "--front-end", "sift",
                      "--out", str(out), "--no-reference", "--calibration-holdout", "0.2", "--set", "num_threads=2",
                      "--set", "num_words=256", "--set", "num_neighbors=6"]) == 0
    return out


def test_reloc_map_and_reloc_eval_run_the_peer(sift_map, demo_scene_root, tmp_path):
    from reloc_ros.evaluation.offline import main as reloc_eval
    from reloc_ros.map_file import read_metadata
    meta = read_metadata(sift_map)
    assert meta["front_end"] == "sift" and meta["training"]["triangulation"]["points"] > 1000
    assert "front_end" in meta["uncertainty"]["stages"]          # calibrated like any front end
    queries = tmp_path / "q.txt"
    queries.write_text("\n".join((demo_scene_root / "query.txt").read_text().split()[:40:5]) + "\n")
    assert reloc_eval(["--map", str(sift_map), "--dataset", str(demo_scene_root), "--frames", str(queries),
                       "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["front_end"] == "sift" and res["n_queries"] == 8
    assert res["recall_2cm_2deg"] >= 7 / 8 and res["median_translation_m"] < 0.01, res["per_query"]
    assert {"network", "matching", "solver"} <= set(res["latency_stage_ms_median"])
    assert min(q["inlier_count"] for q in res["per_query"] if q["success"]) >= 20


def test_bad_sift_map_files_are_one_clear_error(sift_map, tmp_path):
    from reloc_ros.localizer import Localizer
    from reloc_ros.map_file import MapFileError, load_map, save_map
    tensors, meta = load_map(sift_map, kind="map")
    broken = dict(tensors, obs_point=torch.full_like(tensors["obs_point"], len(tensors["points_xyz"])))
    save_map(tmp_path / "points.map.safetensors", broken, meta)
    with pytest.raises(MapFileError, match="points.map.safetensors: the sift map's observations refer to points"):
        Localizer.from_map(tmp_path / "points.map.safetensors")
    save_map(tmp_path / "less.map.safetensors", {k: v for k, v in tensors.items() if k != "vocabulary"}, meta)
    with pytest.raises(MapFileError, match=r"lacks the tensors \['vocabulary'\]"):
        Localizer.from_map(tmp_path / "less.map.safetensors")
    save_map(tmp_path / "meta.map.safetensors", tensors, {k: v for k, v in meta.items() if k != "sift"})
    with pytest.raises(MapFileError, match="sift"):
        Localizer.from_map(tmp_path / "meta.map.safetensors")

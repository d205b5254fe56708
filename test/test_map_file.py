"""Map files: round trip, atomic writes, safe loading, clear errors for malformed / foreign / newer files."""
import json

import pytest
import torch

from reloc_ros.map_file import (MAP_FORMAT_VERSION, MapFileError, load_map, read_metadata, reference_path, save_map)


def test_round_trip_and_metadata(tmp_path):
    t = {"w": torch.randn(4, 5), "b": torch.arange(3, dtype=torch.int64), "h": torch.randn(2).half()}
    p = save_map(tmp_path / "scene.map.safetensors", t, {"front_end": "ace", "scene_mean": [1.0, 2.0, 3.0]})
    tensors, meta = load_map(p)
    for k in t:
        assert torch.equal(tensors[k], t[k]) and tensors[k].dtype == t[k].dtype
    assert meta["front_end"] == "ace" and meta["scene_mean"] == [1.0, 2.0, 3.0]
    assert meta["format_version"] == MAP_FORMAT_VERSION and meta["kind"] == "map" and "created" in meta
    assert read_metadata(p) == meta
    assert [f.name for f in tmp_path.iterdir()] == ["scene.map.safetensors"]  # no temporary file left behind


def test_reference_path_naming(tmp_path):
    assert reference_path(tmp_path / "k.map.safetensors").name == "k.ref.safetensors"
    assert reference_path(tmp_path / "k.safetensors").name == "k.ref.safetensors"
    assert reference_path(tmp_path / "k.bin").name == "k.bin.ref.safetensors"


def test_failed_write_keeps_old_file(tmp_path):
    p = save_map(tmp_path / "a.safetensors", {"x": torch.zeros(2)}, {"front_end": "ace"})
    with pytest.raises(TypeError):
        save_map(p, {"x": torch.zeros(2)}, {"front_end": "ace", "bad": object()})  # not JSON-serialisable
    assert torch.equal(load_map(p)[0]["x"], torch.zeros(2))
    assert len(list(tmp_path.iterdir())) == 1


def test_errors_are_clear(tmp_path):
    with pytest.raises(MapFileError, match="map file not found"):
        load_map(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(MapFileError, match="junk.safetensors: not a reloc_ros map file"):
        load_map(junk)
    pickle_file = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(2)}, pickle_file)
    with pytest.raises(MapFileError, match="not a reloc_ros map file"):
        load_map(pickle_file)
    p = save_map(tmp_path / "r.safetensors", {"x": torch.zeros(2)}, {}, kind="reference")
    with pytest.raises(MapFileError, match="'reference' file, expected a 'map' file"):
        load_map(p)
    # truncated tensor data
    good = save_map(tmp_path / "t.safetensors", {"x": torch.zeros(1000)}, {"front_end": "ace"})
    data = good.read_bytes()
    good.write_bytes(data[:-100])
    with pytest.raises(MapFileError, match="truncated or corrupt"):
        load_map(good)
    with pytest.raises(ValueError, match="front_end"):
        save_map(tmp_path / "n.safetensors", {"x": torch.zeros(1)}, {})


def test_newer_format_is_refused(tmp_path):
    p = save_map(tmp_path / "v.safetensors", {"x": torch.zeros(1)}, {"front_end": "ace"})
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["reloc_ros"])
    meta["format_version"] = MAP_FORMAT_VERSION + 1
    header["__metadata__"]["reloc_ros"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    p.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    with pytest.raises(MapFileError, match="format version .* is not supported"):
        load_map(p)


def test_metadata_is_strict_json_without_nan(tmp_path):
    import json

    from reloc_ros.map_file import read_metadata, save_map
    path = save_map(tmp_path / "m.map.safetensors", {"w": torch.zeros(2)},
                    {"front_end": "ace", "training": {"final_loss": float("nan"), "curve": [1.0, float("inf")]}})
    meta = read_metadata(path)
    assert meta["training"] == {"final_loss": None, "curve": [1.0, None]}
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    json.loads(next(iter(header.values())), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

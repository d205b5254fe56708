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


def rewrite_metadata(src, dst, edit) -> None:
    """Copy the map file ``src`` to ``dst`` with its JSON metadata passed through ``edit(meta) -> meta``, bytes of
    the tensors untouched (save_map would re-stamp the format version)."""
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["reloc_ros"] = json.dumps(edit(json.loads(header["__metadata__"]["reloc_ros"])))
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    dst.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])


@pytest.mark.parametrize("version", [MAP_FORMAT_VERSION + 1, 0, "1", None, True])
def test_format_version_outside_the_supported_range_is_refused(tmp_path, version):
    p = save_map(tmp_path / "v.safetensors", {"x": torch.zeros(1)}, {"front_end": "ace"})
    rewrite_metadata(p, p, lambda m: {**m, "format_version": version})
    with pytest.raises(MapFileError, match=r"v\.safetensors: map format version .* is not supported by this reloc_ros \(supports 1\.\.1\)"):
        load_map(p)


def _drop(key):
    def edit(meta):
        parent, _, leaf = key.rpartition(".")
        node = meta[parent] if parent else meta
        del node[leaf]
        return meta
    return edit


def _set(key, value):
    def edit(meta):
        parent, _, leaf = key.rpartition(".")
        (meta[parent] if parent else meta)[leaf] = value
        return meta
    return edit


@pytest.mark.parametrize("edit, message", [
    (_drop("front_end"), r"'front_end' is a required property"),
    (_drop("head"), r"'head' is a required property"),
    (_drop("encoder"), r"'encoder' is a required property"),
    (_set("image_height", "tall"), r"at 'image_height': 'tall' is not of type 'integer'"),
    (_set("head.width", 7.5), r"at 'head\.width': 7\.5 is not of type 'integer'"),
    (_set("kind", "banana"), r"at 'kind': 'banana' is not one of \['map', 'reference'\]"),
    (_set("front_end", "nerf"), r"front end 'nerf', which this reloc_ros does not have"),
    (_set("head.width", 100), r"tensors do not fit the ACE head \(in_dim 64, width 100, .* the metadata describes: "
                              r"\S+ is \d+(x\d+)?, expected 100(x100)?;"),
])
def test_bad_ace_metadata_is_one_clear_line(demo_map_ace, tmp_path, edit, message):
    """A map whose metadata lacks a key, has a wrong type or disagrees with its tensors: one MapFileError line
    naming the file and the key, before any network is run."""
    from reloc_ros.localizer import Localizer
    bad = tmp_path / "bad.map.safetensors"
    rewrite_metadata(demo_map_ace[0], bad, edit)
    with pytest.raises(MapFileError, match=message) as info:
        Localizer.from_map(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """A map written by one user must be readable by a node running as another (mkstemp alone gives 0600)."""
    import os
    old = os.umask(umask)
    try:
        p = save_map(tmp_path / "m.map.safetensors", {"x": torch.zeros(1)}, {"front_end": "ace"})
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == mode

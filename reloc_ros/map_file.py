"""Map files: safetensors tensors + versioned JSON metadata, written atomically, loaded without running code.

Layout: one ``.safetensors`` file whose header metadata holds ``{"reloc_ros": "<json>"}``. The JSON always has
``format_version``, ``kind`` ("map" or "reference"), ``created`` (UTC ISO time) and, for maps, ``front_end``
(``BASE_SCHEMA``). Each front end declares the rest of its map's metadata as a JSON Schema (``METADATA_SCHEMA``
next to its code; the reference model's in ``refinement/reference.py``); ``check_metadata`` validates a file
against it before any tensor is used, so a bad key is one line naming the file, the key and what was expected.
The refinement reference model lives next to a map as ``<stem>.ref.safetensors`` (see ``reference_path``).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from pathlib import Path

import jsonschema
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .uncertainty import CALIBRATION_SCHEMA

__all__ = ["MAP_FORMAT_VERSION", "MIN_FORMAT_VERSION", "BASE_SCHEMA", "MapFileError", "save_map", "load_map",
           "read_metadata", "check_metadata", "reference_path", "atomic_write_bytes", "atomic_torch_save",
           "update_metadata", "read_tensor"]

MAP_FORMAT_VERSION = 1
MIN_FORMAT_VERSION = 1
_KEY = "reloc_ros"

# What every map / reference file's metadata holds (JSON Schema, draft 2020-12).
BASE_SCHEMA = {
    "type": "object",
    "required": ["format_version", "kind"],
    "properties": {
        "format_version": {"type": "integer"},
        "kind": {"enum": ["map", "reference"]},
        "created": {"type": "string"},
        "front_end": {"type": "string"},
        "uncertainty": CALIBRATION_SCHEMA,   # the map's covariance / confidence calibration (uncertainty.py)
    },
    "if": {"properties": {"kind": {"const": "map"}}},
    "then": {"required": ["front_end"]},
}


class MapFileError(RuntimeError):
    """A map file that is missing, not a reloc_ros map, from a newer format, or of the wrong kind."""


def reference_path(map_path: str | os.PathLike) -> Path:
    """Where the featuremetric reference model of a map lives: ``kitchen.map.safetensors`` -> ``kitchen.ref.safetensors``."""
    p = Path(map_path)
    name = p.name
    for suffix in (".map.safetensors", ".safetensors"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".ref.safetensors")
    return p.with_name(name + ".ref.safetensors")


def _umask() -> int:
    """The process umask (read from /proc on Linux, else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path`` (same directory). The file gets the
    mode a plain ``open(path, "w")`` would (0666 minus the umask), not mkstemp's 0600: a node running as another
    user must be able to read the map."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` (training checkpoints, feature buffers) with the same atomic rename; load them back with
    ``torch.load(..., weights_only=True)``."""
    return atomic_write_bytes(path, lambda tmp: torch.save(obj, tmp))


def _finite_json(value):
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, so that the metadata is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def save_map(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict, kind: str = "map") -> Path:
    """Write ``tensors`` (contiguous CPU copies are made) and JSON-serialisable ``metadata`` atomically. The
    metadata is written as strict JSON: non-finite floats (a loss that was never measured) become null."""
    if kind == "map" and "front_end" not in metadata:
        raise ValueError("map metadata must name its 'front_end'")
    meta = dict(metadata)
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["format_version"] = MAP_FORMAT_VERSION
    meta["kind"] = kind
    header = {_KEY: json.dumps(_finite_json(meta), allow_nan=False)}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, lambda tmp: save_file(cpu, tmp, metadata=header))


def update_metadata(path: str | os.PathLike, updates: dict) -> Path:
    """Rewrite a map file (atomically) with ``updates`` merged into its metadata; the tensors are unchanged."""
    tensors, meta = load_map(path, kind=None)
    meta.update(updates)
    check_metadata(meta, BASE_SCHEMA, path)
    return save_map(path, tensors, meta, kind=meta["kind"])


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a map file, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"{path}: map file not found")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"][_KEY])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise MapFileError(f"{path}: not a reloc_ros map file (safetensors with reloc_ros metadata): {e}") from e
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or not (
            MIN_FORMAT_VERSION <= version <= MAP_FORMAT_VERSION):
        raise MapFileError(f"{path}: map format version {version!r} is not supported by this reloc_ros "
                           f"(supports {MIN_FORMAT_VERSION}..{MAP_FORMAT_VERSION}); "
                           + ("upgrade reloc_ros or re-map the scene" if isinstance(version, int)
                              and version > MAP_FORMAT_VERSION else "re-map the scene"))
    check_metadata(meta, BASE_SCHEMA, path)
    return meta


def read_tensor(path: str | os.PathLike, name: str, kind: str | None = None) -> torch.Tensor:
    """One tensor of a map file, without reading the others (safetensors' lazy access); ``MapFileError`` when the
    file is not a map file (of ``kind``), lacks ``name`` or is corrupt."""
    meta = read_metadata(path)
    if kind is not None and meta.get("kind") != kind:
        raise MapFileError(f"{path}: this is a {meta.get('kind')!r} file, expected a {kind!r} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            if name not in f.keys():
                raise MapFileError(f"{path}: the file has no tensor {name!r}")
            return f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as e:
        raise MapFileError(f"{path}: cannot read tensor {name!r} (truncated or corrupt file?): {e}") from e


def check_metadata(meta: dict, schema: dict, source) -> None:
    """Raise ``MapFileError`` naming ``source`` (the file), the first offending key and what was expected unless
    ``meta`` satisfies the JSON Schema ``schema``."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(meta), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if not errors:
        return
    err = errors[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
    raise MapFileError(f"{source}: bad map metadata{f' at {where!r}' if where else ''}: {err.message}")


def load_map(path: str | os.PathLike, device: str = "cpu", kind: str | None = "map",
             schema: dict | None = None) -> tuple[dict, dict]:
    """Load ``(tensors, metadata)``, the metadata checked against ``schema`` (JSON Schema) when given; raises
    ``MapFileError`` with the file name and the problem."""
    meta = read_metadata(path)
    if kind is not None and meta.get("kind") != kind:
        raise MapFileError(f"{path}: this is a {meta.get('kind')!r} file, expected a {kind!r} file")
    if schema is not None:
        check_metadata(meta, schema, path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise MapFileError(f"{path}: cannot read tensors (truncated or corrupt file?): {e}") from e
    return tensors, meta

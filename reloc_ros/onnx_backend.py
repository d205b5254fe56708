"""A map's exported graphs (``reloc-export``) run by onnxruntime: the ``network_backend: onnxruntime`` option of the
ACE front end, for robots and Jetsons that deploy through onnxruntime's CPU, CUDA or TensorRT execution providers.

``onnx_dir`` None exports the map's graphs once into the user cache (``$XDG_CACHE_HOME/reloc_ros/onnx``, keyed by
the map's tensors, the image size and the library versions); a given ``onnx_dir`` must hold a ``reloc-export`` of
this very map (its ``tensors_sha256``) at the query's size, or loading fails with one line saying what differs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["PROVIDERS", "check_providers", "make_session", "ExportedGraphs"]

INT8_EXPORT = "reloc-export --map MAP --out DIR --precisions fp32,int8 --int8-images DATASET"
# short names a parameter takes -> onnxruntime execution providers
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def check_providers(names) -> list[str]:
    """onnxruntime provider names for the short ``names`` (in order of preference); ValueError in one line when a
    name is unknown or its provider is not in this onnxruntime build."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("network_backend 'onnxruntime' needs the onnxruntime package "
                         "(pip install onnxruntime, or onnxruntime-gpu for CUDA / TensorRT)") from None
    if isinstance(names, str) or not names:
        raise ValueError(f"onnx_providers must be a non-empty list of {sorted(PROVIDERS)}, got {names!r}")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown onnx_providers {unknown}; choose from {sorted(PROVIDERS)}")
    have = ort.get_available_providers()
    missing = [n for n in names if PROVIDERS[n] not in have]
    if missing:
        raise ValueError(f"onnxruntime provider(s) {[PROVIDERS[n] for n in missing]} not available in this "
                         f"onnxruntime {ort.__version__} (available: {have}); install onnxruntime-gpu "
                         f"(CUDA) / TensorRT, or use onnx_providers ['cpu']")
    return [PROVIDERS[n] for n in names]


def make_session(path, threads: int, providers=("CPUExecutionProvider",)):
    """An onnxruntime session of ``path`` with ``threads`` intra-op threads and thread spinning off: spinning
    threads otherwise keep the cores after each run, away from the torch stages that follow (measured +14-23 ms
    per query on 2 cores, benchmarks/RESULTS.md "XFeat through onnxruntime")."""
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = int(threads), 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), o, providers=list(providers))


class ExportedGraphs:
    """The sessions of one map's exported graphs at one image size. ``run(graph, **inputs)`` -> list of arrays."""

    def __init__(self, tensors: dict, metadata: dict, size: tuple[int, int] | None, precision: str = "fp32",
                 providers=("cpu",), threads: int | None = None, folder: str | Path | None = None):
        from .export import PRECISIONS, tensors_digest
        if precision not in PRECISIONS:
            raise ValueError(f"onnx_precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if precision == "int8" and folder is None:
            raise ValueError(f"onnx_precision 'int8' needs onnx_dir: a folder made by {INT8_EXPORT} (int8 is "
                             "calibrated on frames of the scene, which a map does not hold)")
        self.providers = check_providers(list(providers))
        self.precision, self.threads = precision, int(threads or torch.get_num_threads())
        digest = tensors_digest(tensors)
        if folder is None:
            folder = self._cached_export(tensors, metadata, size, digest)
        self.folder = Path(folder)
        self.manifest = self._read_manifest(digest, size)
        self._sessions: dict = {}

    @staticmethod
    def _cached_export(tensors, metadata, size, digest) -> Path:
        import onnxruntime as ort

        from .export import export_graphs
        from .xfeat_onnx import onnx_cache_dir
        from .export import FORMAT
        tag = hashlib.sha256(repr((digest, size, torch.__version__, ort.__version__, FORMAT)).encode()).hexdigest()[:16]
        folder = onnx_cache_dir() / f"map_{metadata['front_end']}_{tag}"
        if not (folder / "manifest.json").is_file():
            export_graphs(tensors, metadata, folder, size, progress=False, source=f"map {digest[:12]}")
        return folder

    def _read_manifest(self, digest: str, size) -> dict:
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise ValueError(f"onnx_dir {self.folder}: no manifest.json (make it with reloc-export)")
        manifest = json.loads(path.read_text())
        if manifest.get("tensors_sha256") != digest:
            raise ValueError(f"onnx_dir {self.folder} was exported from another map (reloc-export this map there)")
        for name, g in manifest["graphs"].items():
            shape = next(iter(g["inputs"].values()))["shape"]
            if size is not None and len(shape) == 4 and tuple(shape[2:]) != tuple(size):
                raise ValueError(f"onnx_dir {self.folder}: graph {name} takes {shape[2]}x{shape[3]} images, the "
                                 f"query is {size[0]}x{size[1]} (reloc-export --image-size {size[0]}x{size[1]})")
            if self.precision not in g:
                how = f" ({INT8_EXPORT})" if self.precision == "int8" else ""
                raise ValueError(f"onnx_dir {self.folder} has no {self.precision} {name} graph{how}")
        return manifest

    def outputs(self, graph: str) -> list[str]:
        """The output names of ``graph``, in order."""
        return list(self.manifest["graphs"][graph]["outputs"])

    def session(self, graph: str):
        if graph not in self._sessions:
            path = self.folder / self.manifest["graphs"][graph][self.precision]["file"]
            self._sessions[graph] = make_session(path, self.threads, self.providers)
        return self._sessions[graph]

    def run(self, graph: str, **inputs) -> list[np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        return self.session(graph).run(None, feeds)

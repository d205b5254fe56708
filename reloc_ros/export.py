"""``reloc-export``: a map's query-time networks as ONNX graphs, for onnxruntime or TensorRT on a robot or a Jetson::

    reloc-export --map X.map.safetensors --out DIR [--image-size HxW] [--precisions fp32,fp16]

Per front end (``GRAPH_BUILDERS``; the classical ``sift`` front end has no network):

- ``ace``: ``ace_encoder`` (gray (1, 1, H, W) float32 in [0, 1], BT.601 → raw features (1, C, H/8, W/8) and, for
  XFeat, the cell score (1, 1, H/8, W/8)) and ``ace_head`` (raw features (N, C), N dynamic → scene coordinates
  (N, 3) float32, world m; the map's feature standardisation is inside the graph).
- ``implicit``: ``implicit_network`` (ImageNet-normalised RGB (1, 3, H, W) float32 → ``scene`` (1, M, 3) world m,
  ``depth`` (1, M) m, ``weight`` (1, M)).

Shapes are static, taken from the map (the ACE image height; the width from ``--image-size``, default 4:3), except
the head's cell count. What has data-dependent shapes (top-k, RANSAC, Kabsch, LM) stays outside the graphs.
Each graph is written in fp32 and, with ``fp16``, with fp16 weights and activations (inputs and outputs stay
float32: ``onnxruntime.transformers.float16``). Every graph is run once through onnxruntime against torch at
export; ``manifest.json`` records inputs, outputs, normalisation, versions, sha256 of every file and that parity.
Opset 18 (HardSwish needs ≥ 14, GridSample ≥ 16, and TensorRT mis-computes GridSample at opset 20).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .map_file import MapFileError, atomic_write_bytes, load_map

__all__ = ["OPSET", "GraphSpec", "GRAPH_BUILDERS", "export_map", "export_graphs", "tensors_digest", "main"]

OPSET = 18
PRECISIONS = ("fp32", "fp16")


@dataclass
class GraphSpec:
    """One graph to export: a torch module, example inputs (float32), names, dynamic axes, a note for the manifest."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic_axes: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


class _AceEncoderGraph(nn.Module):
    """The encoder at a static (H, W). XFeat pads its input to multiples of 32 by replicating the last row and
    column; here that is a constant-index gather (the exporter cannot write the pyramid's own ``F.pad``), and the
    outputs are cropped back to (H/8, W/8): the same numbers."""

    def __init__(self, encoder, h: int, w: int):
        super().__init__()
        self.encoder, self.h, self.w = encoder, h, w
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        self.register_buffer("rows", torch.clamp(torch.arange(hp), max=h - 1))
        self.register_buffer("cols", torch.clamp(torch.arange(wp), max=w - 1))

    def forward(self, gray):
        x = gray.index_select(2, self.rows).index_select(3, self.cols)
        f, score = self.encoder(x)
        f = f[..., : self.h // 8, : self.w // 8]
        return (f,) if score is None else (f, score[..., : self.h // 8, : self.w // 8])


class _AceHeadGraph(nn.Module):
    """Standardisation (the map's feature mean / std) + the head."""

    def __init__(self, head, mean, std):
        super().__init__()
        self.head = head
        self.register_buffer("mean", mean.float().reshape(1, -1))
        self.register_buffer("std", std.float().reshape(1, -1))

    def forward(self, features):
        return self.head((features - self.mean) / self.std)


class _ImplicitGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model(image)
        return out["scene"], out["depth"], out["weight"]


def _smooth_image(h: int, w: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A deterministic image-like input in [0, 1] (low-frequency noise: not flat, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, channels, max(h // 16, 2), max(w // 16, 2), generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _ace_graphs(tensors: dict, meta: dict, size: tuple[int, int] | None) -> list[GraphSpec]:
    from .frontends.ace.frontend import AceFrontEnd
    fe = AceFrontEnd.from_map(tensors, meta, encoder_precision="fp32", head_precision="fp32", encoder_backend="torch")
    h, w = fe.typical_size
    if size is not None:
        if size[0] != fe.image_height:
            raise ValueError(f"--image-size height {size[0]} differs from the map's image height {fe.image_height} "
                             "(the ACE front end resizes every query to it)")
        h, w = size
    if h % 8 or w % 8:
        raise ValueError(f"--image-size {h}x{w}: both sides must be multiples of 8 (the encoder's cells)")
    enc_out = ["features"] + (["score"] if fe.encoder.spec == "xfeat" else [])
    cells = (h // 8) * (w // 8)
    feats = torch.randn(cells, fe.head.in_dim, generator=torch.Generator().manual_seed(1))
    feats = feats * fe.feature_std.cpu() + fe.feature_mean.cpu()
    return [
        GraphSpec("ace_encoder", _AceEncoderGraph(fe.encoder, h, w).eval(), {"gray": _smooth_image(h, w, 1)}, enc_out,
                  notes={"input": "BT.601 grayscale in [0, 1] of the query resized to the map's image height",
                         "cells": "8x8 pixels; cell (i, j) centre at (8j + 3.5, 8i + 3.5) px"}),
        GraphSpec("ace_head", _AceHeadGraph(fe.head, fe.feature_mean.cpu(), fe.feature_std.cpu()).eval(),
                  {"features": feats}, ["scene_coordinates"], {"features": {0: "cells"},
                                                               "scene_coordinates": {0: "cells"}},
                  notes={"input": "the encoder's raw features, one row per cell (standardised inside)",
                         "output": "world frame, metres"}),
    ]


def _implicit_graphs(tensors: dict, meta: dict, size: tuple[int, int] | None) -> list[GraphSpec]:
    from .frontends.implicit.model import IMAGENET_MEAN, IMAGENET_STD
    from .frontends.implicit.frontend import model_from_map
    m = meta["model"]
    h, w = int(m["image_height"]), int(m["image_width"])
    if size is not None and tuple(size) != (h, w):
        raise ValueError(f"--image-size {size[0]}x{size[1]}: the implicit network takes {h}x{w} (the map's size)")
    model = model_from_map(tensors, meta, "cpu").eval()
    x = (_smooth_image(h, w, 3) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return [GraphSpec("implicit_network", _ImplicitGraph(model).eval(), {"image": x}, ["scene", "depth", "weight"],
                      notes={"input": f"RGB resized to {w}x{h}, /255, ImageNet-normalised (mean {list(IMAGENET_MEAN)}, "
                                      f"std {list(IMAGENET_STD)})",
                             "outputs": "scene (world m), depth (camera m), weight, one per output cell"})]


# front end -> builder(tensors, metadata, (H, W) or None) -> [GraphSpec]: one registry of what each front end exports
GRAPH_BUILDERS = {"ace": _ace_graphs, "implicit": _implicit_graphs}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_fp32(spec: GraphSpec, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks, not actionable
        atomic_write_bytes(path, lambda tmp: torch.onnx.export(
            spec.module, tuple(spec.inputs.values()), str(tmp), input_names=list(spec.inputs),
            output_names=spec.outputs, dynamic_axes=spec.dynamic_axes or None, opset_version=OPSET, dynamo=False))


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    atomic_write_bytes(dst, lambda tmp: onnx.save(model, str(tmp)))


def _parity(spec: GraphSpec, path: Path) -> dict:
    """Max |onnxruntime − torch| per output, absolute and relative to the torch output's largest magnitude."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in spec.inputs.items()})
    with torch.no_grad():
        ref = spec.module(*spec.inputs.values())
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    out = {}
    for name, a, b in zip(spec.outputs, got, ref):
        b = b.float().numpy()
        diff = float(np.abs(a.astype(np.float64) - b).max())
        out[name] = {"max_abs": diff, "max_rel": diff / max(float(np.abs(b).max()), 1e-12)}
    return out


def _describe(spec: GraphSpec) -> dict:
    return {"inputs": {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in spec.inputs.items()},
            "outputs": spec.outputs, "dynamic_axes": spec.dynamic_axes, "notes": spec.notes}


def tensors_digest(tensors: dict) -> str:
    """sha256 over a map's tensors (names, dtypes, shapes, bytes): what an export was made from, checkable without
    the map file (``manifest["tensors_sha256"]``)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_map(map_path, out_dir, size: tuple[int, int] | None = None, precisions=("fp32", "fp16"),
               progress: bool = True) -> dict:
    """Export ``map_path``'s query-time graphs into ``out_dir``; returns the manifest (also written as
    ``manifest.json``). Raises ``MapFileError`` / ``ValueError`` before writing anything for a bad map or options."""
    tensors, meta = load_map(map_path)
    manifest = export_graphs(tensors, meta, out_dir, size, precisions, progress, source=str(map_path))
    return manifest


def export_graphs(tensors: dict, meta: dict, out_dir, size: tuple[int, int] | None = None,
                  precisions=("fp32", "fp16"), progress: bool = True, source: str = "map") -> dict:
    """``export_map`` for a loaded map (``tensors``, ``meta``); ``source`` names it in messages."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions or "fp32" not in precisions:
        raise ValueError(f"precisions must include 'fp32' and be among {list(PRECISIONS)}, got {list(precisions)}")
    builder = GRAPH_BUILDERS.get(meta["front_end"])
    if builder is None:
        raise ValueError(f"{source}: front end {meta['front_end']!r} has no network to export "
                         f"(exportable: {sorted(GRAPH_BUILDERS)})")
    specs = builder(tensors, meta, size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import onnx
    import onnxruntime
    graphs = {}
    for spec in specs:
        entry = _describe(spec)
        for precision in precisions:
            path = out_dir / f"{spec.name}.{precision}.onnx"
            if precision == "fp32":
                _export_fp32(spec, path)
            else:
                _to_fp16(out_dir / f"{spec.name}.fp32.onnx", path)
            entry[precision] = {"file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
                                "parity_vs_torch_fp32": _parity(spec, path)}
            if progress:
                worst = max(v["max_rel"] for v in entry[precision]["parity_vs_torch_fp32"].values())
                print(f"[reloc-export] {path.name}: {path.stat().st_size / 1e6:.1f} MB, max difference to torch "
                      f"{worst:.1e} of the output range", flush=True)
        graphs[spec.name] = entry
    src = Path(source)
    manifest = {"format": 1, "map": str(src.resolve()) if src.is_file() else source,
                "map_sha256": _sha256(src) if src.is_file() else None, "tensors_sha256": tensors_digest(tensors),
                "front_end": meta["front_end"], "opset": OPSET, "graphs": graphs,
                "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxruntime": onnxruntime.__version__}}
    atomic_write_bytes(out_dir / "manifest.json",
                       lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n"))
    return manifest


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 480x640), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sides, got {text!r}")
    return h, w


def main(argv=None) -> int:
    from .cli_args import HelpFormatter, check_input_file, check_output_dir
    p = argparse.ArgumentParser(prog="reloc-export", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="the map file (reloc-map output)")
    p.add_argument("--out", type=Path, required=True, help="folder for the .onnx files and manifest.json")
    p.add_argument("--image-size", type=_size, metavar="HxW",
                   help="input size of the image graphs (default: the map's; ACE: its image height at 4:3)")
    p.add_argument("--precisions", default="fp32,fp16", help="comma-separated: fp32 (always) and fp16")
    args = p.parse_args(argv)
    try:
        check_input_file(args.map, "--map")
        check_output_dir(args.out, "--out")
        export_map(args.map, args.out, args.image_size, tuple(s.strip() for s in args.precisions.split(",")))
    except (ValueError, MapFileError, ImportError) as e:
        print(f"reloc-export: error: {e}", file=sys.stderr)
        return 2
    print(f"[reloc-export] wrote {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

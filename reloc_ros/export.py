"""``reloc-export``: a map's query-time networks as ONNX graphs, for onnxruntime or TensorRT on a robot or a Jetson::

    reloc-export --map X.map.safetensors --out DIR [--image-size HxW] [--precisions fp32,fp16[,int8]]
                 [--int8-images DATASET [--int8-frames N]]

Per front end (``GRAPH_BUILDERS``; the classical ``sift`` front end has no network):

- ``ace``: ``ace_encoder`` (gray (1, 1, H, W) float32 in [0, 1], BT.601 → raw features (1, C, H/8, W/8) and, for
  XFeat, the cell score (1, 1, H/8, W/8) and the levels the refinement reuses, ``level_b1`` (1/2) and
  ``level_x2`` (1/4)) and ``ace_head`` (raw features (N, C), N dynamic → scene coordinates
  (N, 3) float32, world m; the map's feature standardisation is inside the graph).
- ``implicit``: ``implicit_network`` (ImageNet-normalised RGB (1, 3, H, W) float32 → ``scene`` (1, M, 3) world m,
  ``depth`` (1, M) m, ``weight`` (1, M)).

Shapes are static, taken from the map (the ACE image height; the width from ``--image-size``, default 4:3), except
the head's cell count. What has data-dependent shapes (top-k, RANSAC, Kabsch, LM) stays outside the graphs.
Each graph is written in fp32 and, with ``fp16``, with fp16 weights and activations (inputs and outputs stay
float32: ``onnxruntime.transformers.float16``) and, with ``int8``, quantised by ``onnxruntime.quantization``: the
image graphs statically (QDQ, int8 weights per channel and int8 activations whose ranges are calibrated on
``--int8-images``, frames of the mapped scene: onnxruntime's recommended S8S8), the ACE head dynamically (int8
weights per channel with a 7-bit range, which keeps AVX2's u8 x s8 products from saturating; activation ranges
per call). int8 moves ACE scene coordinates by ~3 cm median on redkitchen (benchmarks/RESULTS_export.md).
Every graph is run once through onnxruntime against torch at export; ``manifest.json`` records inputs, outputs,
normalisation, versions, sha256 of every file and that parity.
Opset 18 (HardSwish needs ≥ 14, GridSample ≥ 16, and TensorRT mis-computes GridSample at opset 20).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .map_file import MapFileError, atomic_write_bytes, load_map

__all__ = ["OPSET", "PRECISIONS", "GraphSpec", "GRAPH_BUILDERS", "export_map", "export_graphs", "tensors_digest",
           "calibration_images", "main"]

OPSET = 18
FORMAT = 2   # of the export folder; 2: the ACE encoder graph also outputs SHARED_LEVELS
PRECISIONS = ("fp32", "fp16", "int8")
INT8_FRAMES = 32   # calibration frames of --int8-images, spread evenly over the selection


@dataclass
class GraphSpec:
    """One graph to export: a torch module, example inputs (float32), names, dynamic axes, a note for the manifest."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic_axes: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    # (H, W, 3) uint8 RGB -> this graph's inputs, for the int8 calibration of its activation ranges; None: the
    # graph is quantised dynamically (weights only; MatMul graphs such as the ACE head)
    calibration_inputs: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None


# XFeat levels the ACE encoder graph also outputs (as ``level_<name>``), for the featuremetric refinement to reuse
# instead of its own XFeat pass (``AceFrontEnd.share_levels``): those of the default reference model
# (refinement/reference.py), "fused" being ``features`` itself. A reference with other levels refines from its own
# pass. Each output costs: ~1 ms in fp32 and ~3 ms in int8 for these two at 480x640 (dequantised, copied out).
SHARED_LEVELS = ("b1", "x2")


class _AceEncoderGraph(nn.Module):
    """The encoder at a static (H, W). XFeat pads its input to multiples of 32 by replicating the last row and
    column; here that is a constant-index gather (the exporter cannot write the pyramid's own ``F.pad``), and the
    outputs are cropped back to the image (H/8, W/8 for the cells): the same numbers. With XFeat, the
    ``SHARED_LEVELS`` follow the features and the score."""

    def __init__(self, encoder, h: int, w: int):
        super().__init__()
        self.encoder, self.h, self.w = encoder, h, w
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        self.register_buffer("rows", torch.clamp(torch.arange(hp), max=h - 1))
        self.register_buffer("cols", torch.clamp(torch.arange(wp), max=w - 1))
        self.xfeat = encoder.spec == "xfeat"
        if self.xfeat:
            encoder.share_levels(SHARED_LEVELS)

    def forward(self, gray):
        x = gray.index_select(2, self.rows).index_select(3, self.cols)
        f, score = self.encoder(x)
        f = _crop(f, self.h // 8, self.w // 8)
        if not self.xfeat:
            return (f,)
        from .xfeat import LEVELS
        levels = [_crop(self.encoder.last_levels[lv], -(-self.h // LEVELS[lv][0]), -(-self.w // LEVELS[lv][0]))
                  for lv in SHARED_LEVELS]
        return (f, _crop(score, self.h // 8, self.w // 8), *levels)


def _crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``x[..., :h, :w]``, with no Slice in the graph where that is all of it (a Slice between quantised layers
    costs a dequantise-quantise pair in the int8 graph)."""
    return x if tuple(x.shape[-2:]) == (h, w) else x[..., :h, :w]


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


def _resized(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """``rgb`` at (h, w), as the front ends resize a query (area when shrinking, bilinear otherwise)."""
    if rgb.shape[:2] == (h, w):
        return rgb
    import cv2
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if rgb.shape[1] > w else cv2.INTER_LINEAR)


def _smooth_image(h: int, w: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A deterministic image-like input in [0, 1] (low-frequency noise: not flat, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, channels, max(h // 16, 2), max(w // 16, 2), generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _ace_graphs(tensors: dict, meta: dict, size: tuple[int, int] | None) -> list[GraphSpec]:
    from .frontends.ace.encoders import rgb_to_gray_tensor
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
    enc_out = ["features"]
    if fe.encoder.spec == "xfeat":
        enc_out += ["score"] + [f"level_{lv}" for lv in SHARED_LEVELS]
    cells = (h // 8) * (w // 8)
    feats = torch.randn(cells, fe.head.in_dim, generator=torch.Generator().manual_seed(1))
    feats = feats * fe.feature_std.cpu() + fe.feature_mean.cpu()
    return [
        GraphSpec("ace_encoder", _AceEncoderGraph(fe.encoder, h, w).eval(), {"gray": _smooth_image(h, w, 1)}, enc_out,
                  notes={"input": "BT.601 grayscale in [0, 1] of the query resized to the map's image height",
                         "cells": "8x8 pixels; cell (i, j) centre at (8j + 3.5, 8i + 3.5) px"},
                  calibration_inputs=lambda rgb: {"gray": rgb_to_gray_tensor(_resized(rgb, h, w)).numpy()}),
        GraphSpec("ace_head", _AceHeadGraph(fe.head, fe.feature_mean.cpu(), fe.feature_std.cpu()).eval(),
                  {"features": feats}, ["scene_coordinates"], {"features": {0: "cells"},
                                                               "scene_coordinates": {0: "cells"}},
                  notes={"input": "the encoder's raw features, one row per cell (standardised inside)",
                         "output": "world frame, metres"}),
    ]


def _implicit_graphs(tensors: dict, meta: dict, size: tuple[int, int] | None) -> list[GraphSpec]:
    from .frontends.implicit.model import IMAGENET_MEAN, IMAGENET_STD, normalize_images
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
                             "outputs": "scene (world m), depth (camera m), weight, one per output cell"},
                      calibration_inputs=lambda rgb: {
                          "image": normalize_images(_resized(rgb, h, w), "cpu", channels_last=False).numpy()})]


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


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantiser logs its per-tensor fallbacks (e.g. a 1-D norm weight) as root-logger warnings: not actionable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _to_int8(spec: GraphSpec, src: Path, dst: Path, images: list[np.ndarray] | None) -> None:
    """``src`` (fp32) quantised to int8 (module docstring): static QDQ calibrated on ``images`` where the graph has
    ``calibration_inputs``, dynamic otherwise."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Frames(CalibrationDataReader):
        def __init__(self):
            self.feeds = (spec.calibration_inputs(rgb) for rgb in images)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="reloc_int8_") as tmp, warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))   # shape inference + graph clean-up, as the quantiser asks
        if spec.calibration_inputs is None:
            quantize_dynamic(str(pre), str(Path(tmp) / "q.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True)
        else:
            quantize_static(str(pre), str(Path(tmp) / "q.onnx"), _Frames(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        atomic_write_bytes(dst, lambda t: Path(t).write_bytes((Path(tmp) / "q.onnx").read_bytes()))


def calibration_images(dataset, count: int = INT8_FRAMES) -> list[np.ndarray]:
    """``count`` RGB frames spread evenly over ``dataset`` (a folder ``open_dataset`` reads: its mapping.txt frames
    where it has one, as reloc-map; or a plain folder of images), for the int8 calibration."""
    from .datasets import detect_layout, open_dataset
    from .datasets.image_folder import image_files
    from .datasets.io import read_rgb
    if detect_layout(dataset) == "images":   # no poses or intrinsics needed: only the pixels
        files = image_files(Path(dataset))
        return [read_rgb(files[int(i)]) for i in np.unique(np.linspace(0, len(files) - 1, count).round())]
    mapping = Path(dataset) / "mapping.txt"   # reloc-map's default selection: never the query frames
    ds = open_dataset(dataset, frames=str(mapping) if mapping.is_file() else None)
    return [ds[int(i)].image for i in np.unique(np.linspace(0, len(ds) - 1, count).round())]


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
               progress: bool = True, int8_images: list[np.ndarray] | None = None) -> dict:
    """Export ``map_path``'s query-time graphs into ``out_dir``; returns the manifest (also written as
    ``manifest.json``). Raises ``MapFileError`` / ``ValueError`` before writing anything for a bad map or options.
    ``int8_images``: RGB frames of the scene (``calibration_images``), needed for the ``int8`` precision."""
    tensors, meta = load_map(map_path)
    manifest = export_graphs(tensors, meta, out_dir, size, precisions, progress, source=str(map_path),
                             int8_images=int8_images)
    return manifest


def check_precisions(precisions, int8_images) -> None:
    """A ValueError unless ``precisions`` include fp32, are known, and int8 comes with calibration images."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions or "fp32" not in precisions:
        raise ValueError(f"precisions must include 'fp32' and be among {list(PRECISIONS)}, got {list(precisions)}")
    if "int8" in precisions and not int8_images:
        raise ValueError("the int8 precision needs frames of the mapped scene to calibrate its activation ranges "
                         "(reloc-export --int8-images DATASET)")


def export_graphs(tensors: dict, meta: dict, out_dir, size: tuple[int, int] | None = None,
                  precisions=("fp32", "fp16"), progress: bool = True, source: str = "map",
                  int8_images: list[np.ndarray] | None = None) -> dict:
    """``export_map`` for a loaded map (``tensors``, ``meta``); ``source`` names it in messages."""
    check_precisions(precisions, int8_images)
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
            elif precision == "fp16":
                _to_fp16(out_dir / f"{spec.name}.fp32.onnx", path)
            else:
                _to_int8(spec, out_dir / f"{spec.name}.fp32.onnx", path, int8_images)
            entry[precision] = {"file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
                                "parity_vs_torch_fp32": _parity(spec, path)}
            if progress:
                worst = max(v["max_rel"] for v in entry[precision]["parity_vs_torch_fp32"].values())
                print(f"[reloc-export] {path.name}: {path.stat().st_size / 1e6:.1f} MB, max difference to torch "
                      f"{worst:.1e} of the output range", flush=True)
        graphs[spec.name] = entry
    src = Path(source)
    manifest = {"format": FORMAT, "map": str(src.resolve()) if src.is_file() else source,
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
    from .cli_args import HelpFormatter, check_input_file, check_output_dir, number
    from .datasets import DatasetError
    p = argparse.ArgumentParser(prog="reloc-export", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--map", type=Path, required=True, help="the map file (reloc-map output)")
    p.add_argument("--out", type=Path, required=True, help="folder for the .onnx files and manifest.json")
    p.add_argument("--image-size", type=_size, metavar="HxW",
                   help="input size of the image graphs (default: the map's; ACE: its image height at 4:3)")
    p.add_argument("--precisions", default="fp32,fp16",
                   help="comma-separated: fp32 (always), fp16 (for GPUs), int8 (for CPUs; needs --int8-images)")
    p.add_argument("--int8-images", type=Path, metavar="DATASET",
                   help="frames of the mapped scene for the int8 calibration: a dataset folder reloc-map reads "
                        "(its mapping frames) or a folder of images")
    p.add_argument("--int8-frames", type=number(int, min=1), default=INT8_FRAMES,
                   help=f"calibration frames taken evenly from --int8-images (default {INT8_FRAMES})")
    args = p.parse_args(argv)
    try:
        precisions = tuple(s.strip() for s in args.precisions.split(","))
        check_input_file(args.map, "--map")
        check_output_dir(args.out, "--out")
        if args.int8_images is not None and not args.int8_images.exists():
            raise ValueError(f"--int8-images {args.int8_images}: no such dataset folder")
        check_precisions(precisions, args.int8_images is not None)
        images = calibration_images(args.int8_images, args.int8_frames) if "int8" in precisions else None
        export_map(args.map, args.out, args.image_size, precisions, int8_images=images)
    except (ValueError, MapFileError, ImportError, DatasetError) as e:
        print(f"reloc-export: error: {e}", file=sys.stderr)
        return 2
    print(f"[reloc-export] wrote {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

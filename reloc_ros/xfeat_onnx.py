"""XFeat's backbone through onnxruntime on the CPU: the same levels, the same numbers as ``XFeatPyramid`` (to float
rounding), faster on CPUs where torch's fp32 convolutions are the bottleneck (benchmarks/RESULTS.md, "XFeat
through onnxruntime").

The graph is exported from the loaded torch weights (nothing is downloaded) once per (weights, levels, input size,
torch and onnxruntime versions) into the user's cache folder (``$XDG_CACHE_HOME/reloc_ros/onnx``, else
``~/.cache/reloc_ros/onnx``), written atomically; later runs load it. ``OnnxXFeatPyramid`` has the interface of
``XFeatPyramid`` (``levels``, ``set_levels``, ``forward(gray) -> {level: tensor}``).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .map_file import atomic_write_bytes
from .xfeat import LEVELS, XFeatPyramid, check_levels

__all__ = ["OnnxXFeatPyramid", "onnx_cache_dir", "onnxruntime_available"]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        return False


def onnx_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reloc_ros" / "onnx"


class _Trunk(nn.Module):
    """The pyramid's forward on a padded (1, 1, Hp, Wp) input -> the levels' tensors, in ``levels`` order."""

    def __init__(self, pyramid: XFeatPyramid, levels: tuple):
        super().__init__()
        self.pyramid, self.levels = pyramid, levels

    def forward(self, gray: torch.Tensor):
        out = self.pyramid(gray)
        return tuple(out[lv] for lv in self.levels)


class OnnxXFeatPyramid:
    """``XFeatPyramid`` run by onnxruntime (CPUExecutionProvider, ``threads`` intra-op threads; None = torch's
    count). ``pyramid``: the loaded torch pyramid whose weights are exported. Inputs are (1, 1, H, W) float32 in
    [0, 1] (one image per call, as the localizer runs)."""

    def __init__(self, pyramid: XFeatPyramid, threads: int | None = None, cache_dir: Path | None = None):
        if not onnxruntime_available():
            raise ImportError("encoder backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)")
        self.pyramid = pyramid
        self.levels = pyramid.levels
        self.threads = int(threads or torch.get_num_threads())
        self.cache_dir = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
        self._sessions: dict = {}
        self._weights_key = hashlib.sha256(b"".join(
            t.detach().cpu().numpy().tobytes() for t in pyramid.net.state_dict().values())).hexdigest()[:16]

    def set_levels(self, levels) -> None:
        self.levels = check_levels(levels)

    def __call__(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(gray)

    def forward(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        if gray.ndim != 4 or gray.shape[:2] != (1, 1):
            raise ValueError(f"expected a (1, 1, H, W) grayscale tensor, got {tuple(gray.shape)}")
        _, _, H, W = gray.shape
        Hp, Wp = -(-H // 32) * 32, -(-W // 32) * 32
        x = gray.float()
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        session = self._session(Hp, Wp)
        outs = session.run(None, {"gray": np.ascontiguousarray(x.cpu().numpy())})
        res = {}
        for lv, arr in zip(self.levels, outs):
            s = LEVELS[lv][0]
            res[lv] = torch.from_numpy(arr)[..., : -(-H // s), : -(-W // s)]
        return res

    def _session(self, Hp: int, Wp: int):
        key = (self.levels, Hp, Wp)
        if key not in self._sessions:
            from .onnx_backend import make_session
            self._sessions[key] = make_session(self._export(Hp, Wp), self.threads)
        return self._sessions[key]

    def _export(self, Hp: int, Wp: int) -> Path:
        import onnxruntime as ort
        tag = hashlib.sha256(repr((self._weights_key, self.levels, Hp, Wp, torch.__version__,
                                   ort.__version__)).encode()).hexdigest()[:16]
        path = self.cache_dir / f"xfeat_{'-'.join(self.levels)}_{Hp}x{Wp}_{tag}.onnx"
        if path.is_file():
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        pyr = self.pyramid
        saved = pyr.levels, pyr.channels_last
        pyr.set_levels(self.levels)
        pyr.channels_last = False  # a torch memory layout, not part of the graph
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape checks, not actionable
                atomic_write_bytes(path, lambda tmp: torch.onnx.export(
                    _Trunk(pyr, self.levels).eval(), (torch.zeros(1, 1, Hp, Wp),), str(tmp), input_names=["gray"],
                    output_names=list(self.levels), opset_version=17, dynamo=False))
        finally:
            pyr.levels, pyr.channels_last = saved
        return path

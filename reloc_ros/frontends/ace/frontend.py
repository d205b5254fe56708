"""ACE front end at localization time: encoder → head (scene coordinates per 8×8 cell) → PnP inside RANSAC."""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from ...conf import merge_conf
from ...estimators.pnp import pnp_ransac
from ...geometry.camera import Camera
from ...images import check_rgb_image
from ...map_file import MapFileError, check_metadata
from ...precision import PrecisionChoice, autocast_context, resolve_precision
from ..base import LocalizationResult, load_weights
from ..registry import check_backend
from .encoders import cell_centers, make_encoder, rgb_to_gray_tensor, strided_cells
from .head import SceneCoordinateHead

__all__ = ["AceFrontEnd", "DEFAULT_OPTIONS"]

DEFAULT_OPTIONS = {
    "backend": "opencv",       # PnP RANSAC: "opencv" (USAC_FAST, fastest and as accurate as any here) | "poselib" |
                               # "pycolmap" | "dsac" (DSAC*-style; measured in benchmarks/RESULTS_ace.md)
    "backend_options": None,   # dict of "dsac" options (estimators/dsac.py DSAC_DEFAULTS: num_hypotheses, seed, ...)
                               # or "opencv" options (estimators/pnp.py OPENCV_DEFAULTS: local_optimization)
    "threshold_px": 10.0,      # RANSAC inlier threshold in pixels of the resized image
    "max_iterations": 10000,
    "confidence": 0.9999,
    "min_inliers": 30,         # fewer → success False, reason "too_few_inliers"
    "num_cells": None,         # cells passed to the head and RANSAC, best XFeat reliability first; None = all (the
                               # reliability top-2000 lost 6 points of 10cm/5° recall on 7-Scenes: RESULTS_ace.md)
    "cell_stride": 4,          # s: the cells whose (row + column) % s == 0 go to the head and RANSAC (2: a
                               # checkerboard, half of them; 4: a quarter, still uniform; 1 = all). 7-Scenes, 400
                               # queries, maps calibrated with each: 4 and 2 the same accuracy on both pose sets,
                               # ± refinement; 4 is 5-12 ms faster (bf16) and ~20 ms on the fp32 branch
                               # (benchmarks/RESULTS.md, "cell_stride")
    "encoder_precision": "auto",  # encoder autocast: "auto" (measured: bf16 only where it is faster, precision.py) |
                               # "fp32" (as the training buffer) | "bf16" | "fp16" (CUDA). On an AMX CPU bf16 has the
                               # same accuracy as fp32 on 7-Scenes (400 queries), 6 ms less (RESULTS_ace.md); on an
                               # AVX2-only CPU it is ~40x slower
    "head_precision": "auto",  # head autocast: "auto" | "fp32" | "bf16" | "fp16" (CUDA)
    "encoder_backend": "auto", # "torch" | "onnxruntime" (the XFeat encoder in fp32 on the CPU, xfeat_onnx.py; the
                               # same features to 1e-4 of their range) | "auto": onnxruntime where the encoder runs fp32 on the CPU
                               # and onnxruntime is installed, else torch (benchmarks/RESULTS.md, "XFeat through
                               # onnxruntime")
    "encoder_weights": None,   # overrides the ACE encoder weights path stored in the map
    "network_backend": "torch",  # "torch" | "onnxruntime": encoder and head from the map's exported ONNX graphs
                               # (reloc-export; reloc_ros/onnx_backend.py), e.g. for CUDA / TensorRT on a Jetson
    "onnx_dir": None,          # a reloc-export folder of this map; None: exported once into the user cache
    "onnx_precision": "fp32",  # "fp32" | "fp16" (for GPUs) | "int8" (for CPUs; an onnx_dir exported with int8)
    "onnx_providers": ["cpu"], # onnxruntime execution providers in order of preference: "cpu", "cuda", "tensorrt"
}


_INT = {"type": "integer", "minimum": 1}
# What an ACE map's metadata must hold (JSON Schema; ace/train.py _write_ace_map writes it).
ACE_METADATA_SCHEMA = {
    "type": "object",
    "required": ["front_end", "encoder", "image_height", "head"],
    "properties": {
        "front_end": {"const": "ace"},
        "encoder": {"type": "string", "minLength": 1},
        "encoder_dim": _INT,
        "standardize_features": {"type": "boolean"},
        "image_height": {"type": "integer", "minimum": 8},
        "head": {"type": "object", "required": ["in_dim", "width", "num_blocks", "homogeneous"],
                 "properties": {"in_dim": _INT, "width": _INT, "num_blocks": {"type": "integer", "minimum": 0},
                                "homogeneous": {"type": "boolean"}}},
        "scene_mean": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "training": {"type": "object"},
    },
}


class AceFrontEnd:
    """Scene-coordinate regression with a frozen encoder and a per-scene head (front end "ace")."""

    name = "ace"
    METADATA_SCHEMA = ACE_METADATA_SCHEMA
    # options that change how fast, not what is estimated (a map's calibration records the others)
    RUNTIME_OPTIONS = ("encoder_precision", "head_precision", "encoder_backend", "encoder_weights", "network_backend",
                       "onnx_dir", "onnx_precision", "onnx_providers")
    # what maps calibrated before the calibration recorded its options were fitted with (the default then)
    LEGACY_CALIBRATION_OPTIONS = {"cell_stride": 2}

    def __init__(self, encoder, head: SceneCoordinateHead, feature_mean, feature_std, image_height: int,
                 device="cpu", **options):
        self.options = merge_conf(DEFAULT_OPTIONS, options, "ACE front-end")
        self.device = str(device)
        self.encoder = encoder.eval()
        self.head = head.eval().to(self.device)
        self.feature_mean = feature_mean.float().to(self.device)
        self.feature_std = feature_std.float().to(self.device)
        self.image_height = int(image_height)
        self.graphs: dict = {}             # (H, W) -> onnx_backend.ExportedGraphs (network_backend "onnxruntime")
        self._graph_source = None          # (tensors, metadata) the graphs are exported from
        self._graph_levels: tuple = ()     # XFeat levels the exported encoder hands to the refinement
        if check_backend(self.options["network_backend"]) == "onnxruntime":
            p = self.options["onnx_precision"]
            self.precision = {s: PrecisionChoice(s, p, p, "onnxruntime") for s in ("ace_encoder", "ace_head")}
            self.backends = {"ace_encoder": "onnxruntime", "ace_head": "onnxruntime"}
        else:
            self.precision = self._resolve_precisions()
            self.backends = {"ace_encoder": self._resolve_encoder_backend()}

    @property
    def typical_size(self) -> tuple[int, int]:
        """(H, W) of a 4:3 query at the map's image height, sides multiples of 8: what the precision probe and the
        exported graphs assume by default."""
        return self.image_height // 8 * 8, int(round(self.image_height * 4 / 3)) // 8 * 8

    def _resolve_precisions(self) -> dict:
        """``{"ace_encoder": PrecisionChoice, "ace_head": ...}`` for the encoder and head options (probed on a
        4:3 image of the map's height and the cells the head then sees)."""
        h, w = self.typical_size
        n_cells = max((h // 8) * (w // 8) // int(self.options["cell_stride"]), 1)

        def encoder_run():
            with torch.inference_mode():
                self.encoder(torch.zeros(1, 1, h, w, device=self.device))

        def head_run():
            with torch.inference_mode():
                self.head(torch.randn(n_cells, self.head.in_dim, device=self.device))

        return {"ace_encoder": resolve_precision(self.options["encoder_precision"], self.device, "ace_encoder",
                                                 encoder_run, f"{self.encoder.spec}_{h}x{w}"),
                "ace_head": resolve_precision(self.options["head_precision"], self.device, "ace_head", head_run,
                                              f"w{self.head.width}_n{n_cells}")}

    def _resolve_encoder_backend(self) -> str:
        """"torch" or "onnxruntime" for the ``encoder_backend`` option (after the precision is resolved)."""
        from ...xfeat_onnx import onnxruntime_available
        want = self.options["encoder_backend"]
        if want not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"encoder_backend must be 'auto', 'torch' or 'onnxruntime', got {want!r}")
        possible = (hasattr(self.encoder, "use_onnxruntime") and self.device == "cpu"
                    and self.precision["ace_encoder"].precision == "fp32")
        if want == "onnxruntime" and not possible:
            raise ValueError(f"encoder_backend 'onnxruntime' runs the XFeat encoder in fp32 on the CPU; this map's "
                             f"encoder is {self.encoder.spec!r} on {self.device} in "
                             f"{self.precision['ace_encoder'].precision}")
        if want == "torch" or (want == "auto" and not (possible and onnxruntime_available())):
            return "torch"
        self.encoder.use_onnxruntime()
        return "onnxruntime"

    def share_levels(self, levels, gray: str) -> bool:
        """Also compute the XFeat ``levels`` (grayscale ``gray``) in the encoder pass, for the refinement to reuse
        (``LocalizationResult.dense_features``). Possible with the XFeat encoder and BT.601 grayscale only; the
        levels are only handed out for images the front end neither resizes nor crops (sides multiples of 8), where
        they equal the refiner's own pass. With ``network_backend`` "onnxruntime", from the exported encoder graph's
        ``level_*`` outputs (reloc-export since format 2). Returns whether sharing is set up."""
        if not hasattr(self.encoder, "share_levels") or gray != "bt601":
            return False
        if self._graph_source is not None:
            outputs = next(iter(self.graphs.values())).outputs("ace_encoder")
            if not all(lv == "fused" or f"level_{lv}" in outputs for lv in levels):
                return False
            self._graph_levels = tuple(levels)
            return True
        self.encoder.share_levels(levels)
        return True

    @classmethod
    def from_map(cls, tensors: dict, metadata: dict, device: str = "cpu", **options) -> "AceFrontEnd":
        """Build from ``load_map`` output (metadata as in ``ACE_METADATA_SCHEMA``). ``options``: see
        ``DEFAULT_OPTIONS``. Raises ``MapFileError`` when the tensors do not fit the metadata."""
        check_metadata(metadata, ACE_METADATA_SCHEMA, "ACE map")
        missing = [k for k in ("feature_mean", "feature_std") if k not in tensors]
        if missing:
            raise MapFileError(f"the ACE map lacks the tensors {missing}")
        hc = metadata["head"]
        head = SceneCoordinateHead(hc["in_dim"], hc["width"], hc["num_blocks"], hc["homogeneous"])
        sd = {k[len("head."):]: v.float() for k, v in tensors.items() if k.startswith("head.")}
        load_weights(head, sd, f"ACE head (in_dim {hc['in_dim']}, width {hc['width']}, {hc['num_blocks']} blocks)")
        encoder = make_encoder(metadata["encoder"], device, weights=options.get("encoder_weights"))
        if encoder.dim != hc["in_dim"]:
            raise MapFileError(f"encoder {metadata['encoder']} gives {encoder.dim}-d features, the head expects "
                               f"{hc['in_dim']}")
        fe = cls(encoder, head, tensors["feature_mean"], tensors["feature_std"], metadata["image_height"], device,
                 **options)
        if fe.options["network_backend"] == "onnxruntime":
            fe.use_exported_graphs(tensors, metadata)
        return fe

    def use_exported_graphs(self, tensors: dict, metadata: dict) -> None:
        """Run the encoder and head from the map's exported graphs (``network_backend`` "onnxruntime"); set up
        now for a 4:3 image (or ``onnx_dir``'s size), so that a missing provider or a wrong folder fails at load."""
        self._graph_source = (tensors, metadata)
        g = self._exported(None if self.options["onnx_dir"] else self.typical_size)
        shape = g.manifest["graphs"]["ace_encoder"]["inputs"]["gray"]["shape"]
        self.graphs[tuple(shape[2:])] = g

    def _exported(self, size):
        from ...onnx_backend import ExportedGraphs
        if size in self.graphs:
            return self.graphs[size]
        o = self.options
        g = ExportedGraphs(*self._graph_source, size, o["onnx_precision"], o["onnx_providers"], folder=o["onnx_dir"])
        if size is not None:
            self.graphs[size] = g
        return g

    @torch.inference_mode()
    def predict(self, image: np.ndarray, camera: Camera, timings: dict | None = None, num_cells="default",
                shared: dict | None = None):
        """Scene coordinates of the selected cells: (uv (M, 2) pixels of the resized image, X (M, 3) world m,
        score (M,) encoder cell score or None, resized camera). ``num_cells``: the best-scored cells to keep
        (default: the ``num_cells`` option; None = all; encoders without a score always give all cells).
        ``shared``: filled with the levels set up by ``share_levels`` when they can be reused (see there)."""
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        check_rgb_image(image, camera)
        s = self.image_height / image.shape[0]
        cam = camera
        if abs(s - 1) > 1e-9:
            cam = camera.scaled(s)
            image = cv2.resize(image, (cam.width, cam.height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        gray = rgb_to_gray_tensor(image, self.device)
        t1 = time.perf_counter()
        graphs = self._exported(tuple(gray.shape[2:])) if self._graph_source is not None else None
        if graphs is not None:
            outs = dict(zip(graphs.outputs("ace_encoder"), graphs.run("ace_encoder", gray=gray.cpu().numpy())))
            f, score = torch.from_numpy(outs["features"]).to(self.device), outs.get("score")
            score = None if score is None else torch.from_numpy(score).to(self.device)
            levels = {lv: f if lv == "fused" else torch.from_numpy(outs[f"level_{lv}"]).to(self.device)
                      for lv in self._graph_levels}
        else:
            with autocast_context(self.device, self.precision["ace_encoder"].precision):
                f, score = self.encoder(gray)
            levels = getattr(self.encoder, "last_levels", {})
        if shared is not None and abs(s - 1) <= 1e-9 and image.shape[0] % 8 == 0 and image.shape[1] % 8 == 0:
            shared.update({lv: v.float() for lv, v in levels.items()})
        C, h, w = f.shape[1:]
        f = f[0].reshape(C, -1).T.float()
        self._sync()
        t2 = time.perf_counter()
        uv = cell_centers(h, w)
        stride = int(self.options["cell_stride"])
        if stride > 1:
            keep_np = strided_cells(h, w, stride)
            keep = torch.from_numpy(keep_np).to(f.device)
            f, uv = f[keep], uv[keep_np]
            if score is not None:
                score = score.reshape(-1)[keep].reshape(1, 1, -1)
        k = self.options["num_cells"] if num_cells == "default" else num_cells
        sc = None
        if score is not None:
            sc = score[0, 0].reshape(-1).float()
            if k is not None and k < len(uv):
                sel = torch.topk(sc, int(k)).indices
                f, sc = f[sel], sc[sel]
                uv = uv[sel.cpu().numpy()]
            sc = sc.cpu().numpy()
        if graphs is not None:   # the standardisation is inside the exported head
            (X,) = graphs.run("ace_head", features=f.cpu().numpy())
            X = X.astype(np.float64)
        else:
            x = (f - self.feature_mean) / self.feature_std
            with autocast_context(self.device, self.precision["ace_head"].precision):
                X = self.head(x)
            X = X.float().cpu().numpy().astype(np.float64)
        t3 = time.perf_counter()
        timings.update(preprocess=(t1 - t0) * 1e3, encoder=(t2 - t1) * 1e3, head=(t3 - t2) * 1e3)
        return uv, X, sc, cam

    def solve(self, uv: np.ndarray, X: np.ndarray, cam: Camera, **overrides):
        """``pnp_ransac`` on predicted correspondences with the front end's options (``overrides`` win)."""
        o = {**self.options, **overrides}
        finite = np.all(np.isfinite(X), 1)
        return pnp_ransac(uv[finite], X[finite], cam, threshold_px=o["threshold_px"],
                          max_iterations=o["max_iterations"], confidence=o["confidence"],
                          min_inliers=o["min_inliers"], backend=o["backend"], backend_options=o["backend_options"])

    def _sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def localize(self, image: np.ndarray, camera: Camera) -> LocalizationResult:
        t0 = time.perf_counter()
        timings: dict = {}
        shared: dict = {}
        uv, X, _, cam = self.predict(image, camera, timings, shared=shared)
        t1 = time.perf_counter()
        res = self.solve(uv, X, cam)
        t2 = time.perf_counter()
        timings["solver"] = (t2 - t1) * 1e3
        timings["network"] = timings["encoder"] + timings["head"]
        timings["total"] = (t2 - t0) * 1e3
        if not res.success:
            reason = "too_few_inliers" if res.reason in ("too_few_inliers", "too_few_points", "ransac_failed") \
                else res.reason
            return LocalizationResult(False, None, None, 0.0, self.name, reason, res.num_inliers,
                                      res.inlier_ratio, 0.0, timings, dense_features=shared or None)
        # the estimator's covariance and no confidence: the Localizer applies the map's calibration (uncertainty.py)
        return LocalizationResult(True, res.T_world_cam, res.covariance, float("nan"), self.name, "ok",
                                  res.num_inliers, res.inlier_ratio, float(res.num_inliers), timings,
                                  dense_features=shared or None)


"""Inference of the implicit front end: image + camera → ``LocalizationResult`` (pose, covariance, confidence).

Pipeline: undistort (when the camera has distortion) → resize to the map's input size (K scaled with
``Camera.resized``) → network → camera points ``P_i = ray_i·depth_i`` → weighted Kabsch to the scene points
``Q_i`` → ``T_world_cam``.

Covariance model. The pose minimises ``E = Σ w_i ‖R P_i + t − Q_i‖²``; with the right perturbation ``T·Exp(ρ, φ)``
(``se3_exp_right``: ``t' = t + Rρ``, ``R' = R Exp(φ)``) the Jacobian of ``r_i`` is ``J_i = R [I₃, −[P_i]×]``, the
Gauss–Newton Hessian ``H = Σ w_i J_iᵀ J_i``, and ``Σ_right`` is the sandwich ``H⁻¹ (Σ s_i s_iᵀ) H⁻¹`` with
``s_i = w_i J_iᵀ r_i`` (``uncertainty.sandwich_covariance``); ``covariance_right_to_world`` turns it into the
(position, left rotation) world convention. The network's errors are spatially correlated, so this is too small:
the map's calibration, fitted at mapping time, scales it, and gives the confidence (``uncertainty.py``).
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from ...geometry.camera import Camera, InvalidCameraError
from ...geometry.kabsch import DegenerateWeightsError
from ...geometry.pose import covariance_right_to_world, make_T
from ...uncertainty import sandwich_covariance
from ...map_file import MapFileError, check_metadata, load_map
from ...precision import PrecisionChoice, autocast_context, resolve_precision
from ..base import LocalizationResult, load_weights
from ..registry import check_backend
from .model import ImplicitPoseNet, camera_rays, normalize_images
from .train import IMPLICIT_MAP_VERSION

__all__ = ["ImplicitFrontEnd", "load_implicit_map", "model_from_map", "pose_covariance"]


def _implicit_metadata_schema() -> dict:
    """What an implicit map's metadata must hold (JSON Schema; train.py ``map_metadata`` writes it)."""
    number, positive_int = {"type": "number"}, {"type": "integer", "minimum": 1}
    model = {"arch": {"type": "string"}, "output_stride": positive_int, "dilated": {"type": "boolean"},
             "head_channels": positive_int, "head_layers": positive_int, "image_width": positive_int,
             "image_height": positive_int, "d_min": number, "d_max": number}
    return {
        "type": "object",
        "required": ["front_end", "implicit_version", "model", "scene_centre", "scene_extent_m"],
        "properties": {
            "front_end": {"const": "implicit"},
            "implicit_version": {"type": "integer", "minimum": 1, "maximum": IMPLICIT_MAP_VERSION},
            "model": {"type": "object", "required": sorted(model), "properties": model},
            "scene_centre": {"type": "array", "items": number, "minItems": 3, "maxItems": 3},
            "scene_extent_m": {"type": "number", "exclusiveMinimum": 0},
            "training": {"type": "object"},
        },
    }


IMPLICIT_METADATA_SCHEMA = _implicit_metadata_schema()


def model_from_map(tensors: dict, metadata: dict, device="cpu") -> ImplicitPoseNet:
    """Build the network described by an implicit map's metadata (``IMPLICIT_METADATA_SCHEMA``) and load its
    tensors (MapFileError if the metadata or the tensors do not fit)."""
    check_metadata(metadata, IMPLICIT_METADATA_SCHEMA, "implicit map")
    mconf = metadata["model"]
    try:
        model = ImplicitPoseNet(mconf["arch"], int(mconf["output_stride"]), bool(mconf["dilated"]),
                                int(mconf["head_channels"]), int(mconf["head_layers"]), metadata["scene_centre"],
                                float(metadata["scene_extent_m"]), float(mconf["d_min"]), float(mconf["d_max"]))
    except (ValueError, KeyError) as e:
        raise MapFileError(f"implicit map metadata describes no buildable network: {e}") from e
    load_weights(model, {k: v.to("cpu") for k, v in tensors.items()}, f"implicit network ({mconf['arch']})")
    return model.to(device).eval()


def pose_covariance(R: np.ndarray, t: np.ndarray, P: np.ndarray, Q: np.ndarray, w: np.ndarray
                    ) -> tuple[np.ndarray | None, float]:
    """6×6 world-convention sandwich covariance of ``T_world_cam = [R | t]`` fitted to ``Q ≈ R P + t`` with weights
    ``w`` (see the module docstring; None when singular), and the weighted RMS residual (m)."""
    r = P @ R.T + t - Q
    wsum = w.sum()
    n = len(w)
    # H = Σ w [[I, −[P]×], [[P]×, −[P]×²]] (R cancels: RᵀR = I)
    Px = np.zeros((n, 3, 3))
    Px[:, 0, 1], Px[:, 0, 2], Px[:, 1, 2] = -P[:, 2], P[:, 1], -P[:, 0]
    Px[:, 1, 0], Px[:, 2, 0], Px[:, 2, 1] = P[:, 2], -P[:, 1], P[:, 0]
    H = np.zeros((6, 6))
    H[:3, :3] = wsum * np.eye(3)
    H[:3, 3:] = -(w[:, None, None] * Px).sum(0)
    H[3:, :3] = H[:3, 3:].T
    H[3:, 3:] = -(w[:, None, None] * (Px @ Px)).sum(0)
    rc = r @ R                                                   # Rᵀ rᵢ
    scores = w[:, None] * np.concatenate([rc, np.einsum("nij,nj->ni", Px, rc)], axis=1)  # w Jᵢᵀ rᵢ
    cov_right = sandwich_covariance(H, scores.T @ scores, n)
    rms = float(np.sqrt((w * (r ** 2).sum(-1)).sum() / max(wsum, 1e-12)))
    if cov_right is None:
        return None, rms
    return covariance_right_to_world(make_T(R, t), cov_right), rms


class ImplicitFrontEnd:
    """Front end A. Build with ``from_map`` (or ``load_implicit_map``); ``localize(image, camera)``.

    Options: ``precision`` (network autocast: "auto" = bf16 only where measured faster, ~1.5× on AMX CPUs and
    far slower on AVX2-only ones; "fp32" | "bf16" | "fp16" (CUDA)), ``channels_last`` (default True),
    ``threads`` (torch intra-op threads; None leaves torch's setting), ``min_weight_mass`` (below it:
    ``success=False``, reason "low_confidence"); ``network_backend`` "torch" | "onnxruntime" (the map's exported
    graph, reloc_ros/onnx_backend.py) with ``onnx_dir``, ``onnx_precision``, ``onnx_providers`` as for ACE.
    """

    name = "implicit"
    METADATA_SCHEMA = IMPLICIT_METADATA_SCHEMA

    def __init__(self, model: ImplicitPoseNet, metadata: dict, device="cpu", precision: str = "auto",
                 channels_last: bool = True, threads: int | None = None, min_weight_mass: float = 3.0,
                 network_backend: str = "torch", onnx_dir: str | None = None, onnx_precision: str = "fp32",
                 onnx_providers=("cpu",), graph_source: tuple | None = None):
        self.model, self.metadata, self.device = model, metadata, torch.device(device)
        self.channels_last = bool(channels_last)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if threads:
            torch.set_num_threads(int(threads))
        m = metadata["model"]
        self.width, self.height = int(m["image_width"]), int(m["image_height"])
        self.stride = int(m["output_stride"])
        self.min_weight_mass = float(min_weight_mass)
        self._rays: dict = {}
        self.graphs = None
        if check_backend(network_backend) == "onnxruntime":
            if graph_source is None:
                raise ValueError("network_backend 'onnxruntime' needs the map's tensors: build with from_map")
            from ...onnx_backend import ExportedGraphs
            self.graphs = ExportedGraphs(*graph_source, (self.height, self.width), onnx_precision, onnx_providers,
                                         folder=onnx_dir)
            self.precision = {"implicit_network": PrecisionChoice("implicit_network", onnx_precision, onnx_precision,
                                                                  "onnxruntime")}
            self.backends = {"implicit_network": "onnxruntime"}
        else:
            self.precision = {"implicit_network": self._resolve_precision(precision)}
            self.backends = {"implicit_network": "torch"}

    def _resolve_precision(self, requested: str):
        x = torch.zeros(1, 3, self.height, self.width, device=self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                self.model(x)

        m = self.metadata["model"]
        return resolve_precision(requested, self.device, "implicit_network", run,
                                 f"{m['arch']}_os{self.stride}_{self.width}x{self.height}")

    @classmethod
    def from_map(cls, tensors: dict, metadata: dict, device: str = "cpu", **options) -> "ImplicitFrontEnd":
        return cls(model_from_map(tensors, metadata, device), metadata, device, graph_source=(tensors, metadata),
                   **options)

    def _rays_for(self, cam: Camera) -> torch.Tensor:
        key = tuple(np.round(cam.K.ravel(), 9))
        if key not in self._rays:
            self._rays = {key: torch.as_tensor(camera_rays(cam, self.stride), dtype=torch.float32,
                                               device=self.device)}
        return self._rays[key]

    def _fail(self, reason: str, timings: dict) -> LocalizationResult:
        return LocalizationResult(False, None, None, 0.0, self.name, reason=reason, timings_ms=timings)

    def preprocess(self, image: np.ndarray, camera: Camera) -> tuple[torch.Tensor, Camera]:
        """Undistort, resize to the map's input size → (network input (1, 3, H, W), its pinhole camera)."""
        if camera.is_distorted:
            image = camera.undistort_image(image)
            camera = Camera(camera.width, camera.height, camera.K)
        if (image.shape[1], image.shape[0]) != (self.width, self.height):
            shrink = image.shape[1] > self.width
            image = cv2.resize(image, (self.width, self.height),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            camera = camera.resized(self.width, self.height)
        return normalize_images(image, self.device, self.channels_last), camera

    @torch.inference_mode()
    def localize(self, image: np.ndarray, camera: Camera) -> LocalizationResult:
        """Localize one (H, W, 3) uint8 RGB image seen by ``camera``; never raises on bad input (the result's
        ``reason`` says what was wrong: "bad_encoding", "size_mismatch", "bad_intrinsics", "low_confidence")."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            return self._fail("bad_encoding", timings)
        if (image.shape[1], image.shape[0]) != camera.size:
            return self._fail("size_mismatch", timings)
        try:
            camera.validate()
        except InvalidCameraError:
            return self._fail("bad_intrinsics", timings)
        x, cam_in = self.preprocess(image, camera)
        rays = self._rays_for(cam_in)
        t1 = time.perf_counter()
        if self.graphs is not None:
            arrays = self.graphs.run("implicit_network", image=x.contiguous().cpu().numpy())
            out = {k: torch.from_numpy(a).to(self.device) for k, a in zip(("scene", "depth", "weight"), arrays)}
        else:
            with autocast_context(self.device.type, self.precision["implicit_network"].precision):
                out = self.model(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        P = ImplicitPoseNet.camera_points(out["depth"], rays)
        try:
            R, t = ImplicitPoseNet.solve(P, out["scene"], out["weight"], check=True)
        except DegenerateWeightsError:
            timings.update(preprocess=1e3 * (t1 - t0), network=1e3 * (t2 - t1))
            return self._fail("low_confidence", timings)
        R, t = R[0].cpu().numpy(), t[0].cpu().numpy()
        Pn = P[0].double().cpu().numpy()
        Qn = out["scene"][0].double().cpu().numpy()
        wn = out["weight"][0].double().cpu().numpy()
        cov, rms = pose_covariance(R, t, Pn, Qn, wn)
        t3 = time.perf_counter()
        mass = float(wn.sum())
        timings.update(preprocess=1e3 * (t1 - t0), network=1e3 * (t2 - t1), solver=1e3 * (t3 - t2),
                       total=1e3 * (t3 - t0))
        ok = mass >= self.min_weight_mass and cov is not None and np.all(np.isfinite(cov))
        if not ok:
            return LocalizationResult(False, None, None, 0.0, self.name, reason="low_confidence",
                                      weight_mass=mass, timings_ms=timings)
        # the estimator's covariance and no confidence: the Localizer applies the map's calibration (uncertainty.py)
        return LocalizationResult(True, make_T(R, t), cov, float("nan"), self.name, weight_mass=mass,
                                  timings_ms=timings)


def load_implicit_map(path, device: str = "cpu", **options) -> ImplicitFrontEnd:
    """Load an implicit map file and build its front end (``MapFileError`` for unusable files)."""
    tensors, meta = load_map(path, device="cpu")
    return ImplicitFrontEnd.from_map(tensors, meta, device=device, **options)

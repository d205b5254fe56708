"""``Localizer``: one image + its camera → ``T_world_cam`` with covariance, via a front end and optional refinement.

The one entry point used by the ROS node, the evaluation tools and Python users::

    loc = Localizer.from_map("kitchen.map.safetensors", device="cpu", refine=True)
    result = loc.localize(image_rgb, Camera.from_camera_info(info))
    if result.success: T_world_cam = result.T_world_cam

The front end is named in the map file's metadata; the refinement reference model is read from
``map_file.reference_path(map)`` unless given.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .device import check_device
from .frontends.base import LocalizationResult, RefinementInfo, estimate_options
from .frontends.registry import BACKENDS, front_end_names, front_end_spec
from .geometry.camera import Camera
from .images import InputImageError, check_rgb_image
from .map_file import MapFileError, load_map, read_tensor, reference_path
from .uncertainty import Calibration, gaussian_within, nearest_view_distance, support_features

__all__ = ["Localizer", "InputImageError"]




def _view_centres(map_path, reference=None) -> np.ndarray | None:
    """Camera centres (M, 3) of the mapped views: the reference model's images (``reference``, default beside the
    map); None where there is none or it cannot be read (``uncertainty_warning`` then says so when the calibration
    needs them)."""
    ref = Path(reference) if reference is not None else reference_path(map_path)
    if not ref.is_file():
        return None
    try:
        poses = read_tensor(ref, "image_poses", kind="reference").numpy()
    except MapFileError:
        return None
    return np.asarray(poses[:, :3, 3], dtype=np.float64)


def backend_options(spec, backend: str | None, front_end_options: dict) -> dict:
    """The front-end options that select ``backend`` for the front end ``spec`` ({} for None, or "torch" on a front
    end with torch only). A ValueError when the front end lacks it or ``front_end_options`` asks for another."""
    if backend is None:
        return {}
    if backend not in spec.backends:
        raise ValueError(f"backend {backend!r}: the {spec.name} front end runs on {' | '.join(spec.backends)} only")
    if len(spec.backends) == 1:
        return {}
    asked = front_end_options.get("network_backend", backend)
    if asked != backend:
        raise ValueError(f"backend {backend!r} contradicts the front-end option network_backend {asked!r}")
    return {"network_backend": backend}


def calibrated_options(metadata: dict, front_end_cls) -> dict:
    """The front-end options a map's calibration was fitted with: as recorded (``calibrate_map``), else, for a map
    calibrated before they were recorded, the front end's ``LEGACY_CALIBRATION_OPTIONS`` (the defaults of then
    that differ from today's); {} for an uncalibrated map."""
    entry = metadata.get("uncertainty") or {}
    if not entry.get("stages"):
        return {}
    if "front_end_options" in entry:
        return dict(entry["front_end_options"])
    return dict(getattr(front_end_cls, "LEGACY_CALIBRATION_OPTIONS", {}))


class Localizer:
    """A loaded map (front end) and, optionally, the featuremetric refiner of its reference model."""

    def __init__(self, front_end, refiner=None, map_path: str | Path | None = None, metadata: dict | None = None,
                 position_sigma_floor_m: float = 0.0, rotation_sigma_floor_deg: float = 0.0,
                 view_centres: np.ndarray | None = None):
        """The covariance and confidence follow the map's calibration (metadata "uncertainty", fitted by reloc-map
        on held-out mapping frames, ``uncertainty.py``). ``*_sigma_floor_*``: an extra standard deviation (m, deg)
        added in quadrature on top, for a user who knows the map's poses are worse than its calibration saw.
        ``view_centres`` (M, 3) world m: the mapped views' camera centres (the reference model's images), for the
        calibration's growth with the distance to them."""
        self.view_centres = None if view_centres is None else np.asarray(view_centres, dtype=np.float64)
        self.extra_floor = np.diag([position_sigma_floor_m ** 2] * 3 + [np.deg2rad(rotation_sigma_floor_deg) ** 2] * 3)
        self.front_end = front_end
        self.refiner = refiner
        self.map_path = Path(map_path) if map_path is not None else None
        self.metadata = metadata or {}
        self.calibration = {k: Calibration.from_dict(v)
                            for k, v in (self.metadata.get("uncertainty") or {}).get("stages", {}).items()}
        # One XFeat pass for both: the ACE front end (XFeat encoder) also computes the refiner's levels.
        self.shares_features = bool(refiner is not None and hasattr(front_end, "share_levels")
                                    and front_end.share_levels(refiner.map_levels, refiner.ref.gray))

    @property
    def uncertainty_warning(self) -> str | None:
        """A warning line when a stage in use has no calibration in the map (its covariance and confidence are then
        the estimators' own: overconfident), or when the front end runs with options other than those the
        calibration was fitted with (``estimate_options``; recorded by ``calibrate_map``)."""
        missing = [s for s in (("front_end", "refined") if self.refine else ("front_end",)) if s not in self.calibration]
        if not missing and self.view_centres is None and any(c.growth_per_m > 0 for c in self.calibration.values()):
            return ("the map's calibration grows the covariance with the distance to the mapped views, but its "
                    "reference model (their poses) is missing: covariances are too small away from them")
        if missing:
            return (f"the map has no uncertainty calibration for {' and '.join(missing)} poses: covariances are the "
                    "estimators' own (too small) and confidence is uncalibrated; rebuild the map with reloc-map "
                    "(--calibration-holdout > 0) or run reloc-calibrate on posed frames")
        recorded = calibrated_options(self.metadata, type(self.front_end))
        now = estimate_options(self.front_end)
        changed = {k: (recorded[k], now[k]) for k in recorded if k in now and now[k] != recorded[k]}
        if not changed:
            return None
        what = ", ".join(f"{k} {new!r} (calibrated: {old!r})" for k, (old, new) in sorted(changed.items()))
        return (f"front-end options differ from the map's calibration: {what}; covariance and confidence are "
                "calibrated for the recorded options (run reloc-calibrate to refit)")

    @property
    def front_end_name(self) -> str:
        return self.front_end.name

    @property
    def refine(self) -> bool:
        return self.refiner is not None

    @property
    def precision_choices(self) -> dict:
        """Stage -> ``PrecisionChoice`` of every network stage in use ("ace_encoder", "ace_head", "implicit_network",
        "refiner_features"; the refiner's pass is absent when the front end computes its features)."""
        out = dict(getattr(self.front_end, "precision", {}))
        if self.refiner is not None and not self.shares_features:
            out.update(self.refiner.precision)
        return out

    @property
    def backends(self) -> dict:
        """Stage -> the library that runs it where it is not torch (e.g. {"ace_encoder": "onnxruntime"})."""
        return {k: v for k, v in getattr(self.front_end, "backends", {}).items() if v != "torch"}

    @property
    def precision(self) -> dict:
        """Stage -> the precision it runs in ("fp32" / "bf16" / "fp16")."""
        return {k: c.precision for k, c in self.precision_choices.items()}

    @property
    def training_warning(self) -> str | None:
        """A warning line when the map was trained on less than half its schedule (``training_budget``)."""
        from .training_budget import undertrained_warning
        return undertrained_warning(self.metadata)

    @classmethod
    def from_map(cls, map_path: str | Path, device: str = "cpu", refine: bool = False,
                 reference: str | Path | None = None, front_end_options: dict | None = None,
                 refiner_options: dict | None = None, backend: str | None = None,
                 **localizer_options) -> "Localizer":
        """Load a map file (and its reference model when ``refine``). Raises ``MapFileError`` with the reason.
        ``backend``: "torch" | "onnxruntime" (the map's networks as ONNX graphs, ``reloc-export``; the front-end
        option ``network_backend``), None = the front end's default; one the front end lacks is a ValueError."""
        device = check_device(device)
        if backend is not None and backend not in BACKENDS:   # before reading the map
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        tensors, meta = load_map(map_path, device="cpu", kind="map")
        if meta["front_end"] not in front_end_names():
            raise MapFileError(f"{map_path}: the map is for front end {meta['front_end']!r}, which this reloc_ros "
                               f"does not have (it has {front_end_names()})")
        spec = front_end_spec(meta["front_end"])
        cls_ = spec.load_class()
        # the options the map's calibration was fitted with are its defaults; the caller's win
        front_end_options = {**calibrated_options(meta, cls_), **(front_end_options or {}),
                             **backend_options(spec, backend, front_end_options or {})}
        try:  # from_map validates the metadata against its METADATA_SCHEMA before building anything
            front_end = cls_.from_map(tensors, meta, device=device, **front_end_options)
        except MapFileError as e:
            raise MapFileError(f"{map_path}: {e}") from e
        refiner = None
        if refine:
            ref = Path(reference) if reference is not None else reference_path(map_path)
            if not ref.is_file():
                raise MapFileError(f"{ref}: refinement was requested but the map has no reference model there "
                                   "(re-run reloc-map without --no-reference, or pass reference=...)")
            from .refinement import FeaturemetricRefiner
            # the front end's own refiner defaults (e.g. the implicit one turns the matching initialisation on),
            # then the caller's options
            refiner_options = {**spec.refiner_defaults, **(refiner_options or {})}
            refiner = FeaturemetricRefiner.from_reference(ref, device=device, **refiner_options)
        # the mapped views' centres: from the reference model the refiner already loaded, else read from its file
        centres = (refiner.ref.image_poses.cpu().numpy()[:, :3, 3] if refiner is not None
                   else _view_centres(map_path, reference))
        return cls(front_end, refiner, map_path, meta, view_centres=centres, **localizer_options)

    # ------------------------------------------------------------------------------------------------------------
    def localize(self, image: np.ndarray, camera: Camera, prior_T_world_cam: np.ndarray | None = None
                 ) -> LocalizationResult:
        """Front end, then refinement of its pose when enabled. When the front end fails and a prior pose is
        given (e.g. from /initialpose), the refiner starts from the prior instead."""
        t0 = time.perf_counter()
        check_rgb_image(image, camera)
        camera.validate()
        result = self.front_end.localize(image, camera)
        if self.refiner is not None:
            if result.success:
                self._apply_refinement(result, image, camera, result.T_world_cam)
            elif prior_T_world_cam is not None:
                self._apply_refinement(result, image, camera, prior_T_world_cam, from_prior=True)
        result.dense_features = None
        self._apply_calibration(result)
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result

    def _apply_calibration(self, result: LocalizationResult) -> None:
        """Calibrated covariance (+ the extra floor) and confidence of the published stage ("refined" when the
        refinement was accepted, else "front_end"); without a calibration: the raw covariance and P_N of it."""
        if not result.success or result.covariance is None:
            result.confidence = 0.0
            return
        stage = "refined" if result.refinement is not None and result.refinement.accepted else "front_end"
        raw = result.raw_covariance = result.covariance
        cal = self.calibration.get(stage)
        result.view_distance_m = nearest_view_distance(result.T_world_cam, self.view_centres)
        if cal is None:
            result.covariance = raw + self.extra_floor
            result.confidence = gaussian_within(result.covariance)
            return
        result.covariance = cal.covariance(raw, result.view_distance_m) + self.extra_floor
        result.confidence = cal.confidence(cal.covariance(raw) + self.extra_floor, support_features(result, raw))

    def refine_from_prior(self, image: np.ndarray, camera: Camera, T_world_cam_prior: np.ndarray
                          ) -> LocalizationResult:
        """Refine a user-given pose (no front end). Needs a localizer loaded with ``refine=True``."""
        if self.refiner is None:
            raise RuntimeError("refine_from_prior needs a Localizer loaded with refine=True")
        t0 = time.perf_counter()
        check_rgb_image(image, camera)
        result = LocalizationResult(False, None, None, 0.0, "prior", reason="refinement_rejected")
        self._apply_refinement(result, image, camera, np.asarray(T_world_cam_prior, dtype=np.float64), from_prior=True)
        self._apply_calibration(result)
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result

    def _apply_refinement(self, result: LocalizationResult, image, camera, T_start, from_prior: bool = False) -> None:
        """Refine ``T_start`` (the front end's pose, or a prior with ``from_prior``: then with the matching
        initialisation, ``refinement.refine_from_prior``) and fold the outcome into ``result``."""
        from .refinement.refiner import refine_from_prior

        t0 = time.perf_counter()
        if from_prior:
            r = refine_from_prior(self.refiner, image, camera, T_start, raw_features=result.dense_features)
        else:
            r = self.refiner.refine(image, camera, T_start, raw_features=result.dense_features)
        result.timings_ms["refinement"] = (time.perf_counter() - t0) * 1e3
        accepted = bool(r.accepted)
        result.refinement = RefinementInfo(ran=True, accepted=accepted, iterations=int(r.iterations),
                                           cost_initial=float(r.cost_initial), cost_final=float(r.cost_final),
                                           reason=str(r.reason), init=r.init)
        if accepted:
            result.T_world_cam = r.T_world_cam
            if r.covariance is not None:
                result.covariance = r.covariance
            if not result.success:  # a refined prior
                result.success = True
                result.reason = "ok"
        elif result.front_end == "prior":
            result.reason = "refinement_rejected"

"""Front-end interface shared by the implicit-geometry and ACE front ends (the registry: ``frontends/registry.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..geometry.camera import Camera

__all__ = ["estimate_options", "LocalizationResult", "RefinementInfo", "FrontEnd", "load_weights"]


@dataclass
class RefinementInfo:
    """What the featuremetric refinement did to a pose."""

    ran: bool
    accepted: bool
    iterations: int = 0
    cost_initial: float = float("nan")
    cost_final: float = float("nan")
    reason: str = "ok"
    init: str = "prior"   # where the kept LM run started: "prior" (the given pose) or "matches" (match_init)


@dataclass
class LocalizationResult:
    """Outcome of localizing one image.

    T_world_cam: (4, 4) float64 camera-to-world or None when ``success`` is False. covariance: (6, 6) over
    (x, y, z, rx, ry, rz) — camera position in the world frame (m) and a left rotation about world axes (rad).
    timings_ms: per stage ("preprocess", "network", "solver", "refinement", "total"). The ``Localizer`` replaces the
    front end's estimator covariance with the map's calibrated one (kept in ``raw_covariance``) and sets
    ``confidence``: the calibrated probability that the pose is within 10 cm / 5° (``uncertainty.py``).
    dense_features: raw XFeat levels of the image that the front end computed for the refinement to reuse
    (``Localizer`` sets it up and clears it after use; None otherwise).
    """

    success: bool
    T_world_cam: np.ndarray | None
    covariance: np.ndarray | None
    confidence: float
    front_end: str
    reason: str = "ok"
    inlier_count: int = 0
    inlier_ratio: float = 0.0
    weight_mass: float = 0.0
    timings_ms: dict = field(default_factory=dict)
    refinement: RefinementInfo | None = None
    dense_features: dict | None = field(default=None, repr=False)
    raw_covariance: np.ndarray | None = field(default=None, repr=False)  # the estimator's, before calibration
    view_distance_m: float | None = None   # from the pose to the nearest mapped view (m; set by the Localizer
                                           # where the map has a reference model; the calibration's input)


class FrontEnd(Protocol):
    """Optional members: ``options`` (dict, the merged options) and ``RUNTIME_OPTIONS`` (names among them that
    change the speed, not the estimates); a map's calibration records the other options (``estimate_options``)."""

    name: str
    METADATA_SCHEMA: dict   # JSON Schema of the map metadata this front end reads (map_file.check_metadata)

    @classmethod
    def from_map(cls, tensors: dict, metadata: dict, device: str = "cpu", **options) -> "FrontEnd": ...

    def localize(self, image: np.ndarray, camera: Camera) -> LocalizationResult: ...


def estimate_options(front_end) -> dict:
    """The front end's options that shape its estimates (all of ``options`` but ``RUNTIME_OPTIONS``): what a map's
    calibration is fitted with and records; {} for a front end without ``options``."""
    runtime = set(getattr(front_end, "RUNTIME_OPTIONS", ()))
    return {k: v for k, v in dict(getattr(front_end, "options", {}) or {}).items() if k not in runtime}


def load_weights(module, state_dict: dict, what: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, raising one ``MapFileError`` line that names the first
    missing, unexpected or misshaped tensors (not torch's 20-line size-mismatch report). ``what``: e.g. "ACE head
    (width 512)"."""
    from ..map_file import MapFileError

    own = module.state_dict()
    problems = [f"{k} missing" for k in own if k not in state_dict]
    problems += [f"{k} unexpected" for k in state_dict if k not in own]
    shape = lambda t: "x".join(map(str, t.shape)) or "scalar"  # noqa: E731
    problems += [f"{k} is {shape(v)}, expected {shape(own[k])}" for k, v in state_dict.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MapFileError(f"the tensors do not fit the {what} the metadata describes: "
                           f"{'; '.join(problems[:3])}{more}")
    module.load_state_dict(state_dict, strict=True)

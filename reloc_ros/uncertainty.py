"""Pose uncertainty, one model for every estimator and front end: covariance, its calibration, and the confidence.

Convention: 6×6 covariances over (x, y, z, rx, ry, rz): camera position in the world frame (m) and a left rotation
about world axes (rad) (docs/architecture.md).

1. **Estimator covariance.** Kabsch, PnP and the featuremetric LM each linearise their own cost at the solution and
   return the sandwich ``H⁻¹ (Σᵢ sᵢ sᵢᵀ) H⁻¹`` (``sandwich_covariance``), with ``H`` the Gauss–Newton Hessian and
   ``sᵢ`` observation i's gradient contribution (``ψ(rᵢ)·Jᵢᵀ`` for a robust cost). It counts every observation as
   independent; scene-coordinate and feature errors are spatially correlated, so it is too small by a factor that
   depends on the scene and the estimator.
2. **Calibration** (``Calibration``, one per stage: "front_end" and "refined"), stored in the map:
   ``Σ = c · (D Σ_est D + diag(f_p² I₃, f_r² I₃))`` with ``D = diag(√k_p I₃, √k_r I₃)``. Scales ``k`` and floors
   ``f`` (the map's own accuracy) are fitted jointly by 6-DoF maximum likelihood on the pose errors of mapping frames
   held out of the map, then ``c`` puts 95 % of those errors inside the 95 % ellipsoid (``fit_calibration``;
   ``reloc-map`` does it, ``mapping/calibrate.py``). No constant is tuned by hand. Where the map has a reference
   model, the covariance also grows with the distance ``d`` (m) from the pose to the nearest mapped view (camera
   centres of the reference images): ``Σ · (1 + g·d)²`` (σ linear in d; ``g`` 1/m, fitted with the rest). Errors grow
   away from the mapped views faster than the estimators' covariances do (7-Scenes: query frames lie a median 15 cm
   from a mapped view, held-out mapping frames 6 cm; RESULTS_uncertainty.md).
3. **Confidence**: the calibrated probability that the pose is within 10 cm / 5°:
   ``σ(logit P_N + βᵀz + β₀)``, with ``P_N`` the Gaussian probability of that region under the calibrated
   covariance before the distance growth and ``z`` the support features (inliers, inlier ratio, weight mass, estimator spread), ``β`` fitted
   by L2-regularised logistic regression on the held-out frames and degraded copies of them (blurred, covered,
   mirrored), whose labels are their real errors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["sandwich_covariance", "nearest_view_distance", "Calibration", "CalibrationSample", "fit_calibration", "gaussian_within", "is_correct",
           "support_features", "expected_calibration_error", "CALIBRATION_SCHEMA", "WITHIN_M", "WITHIN_DEG",
           "STAGES"]

WITHIN_M, WITHIN_DEG = 0.10, 5.0       # what "correct" means for the confidence (the accuracy targets' 10 cm / 5°)
STAGES = ("front_end", "refined")
CHI2_95_6 = 12.591587243743977     # χ²₆ 95 % quantile (scipy.stats.chi2.ppf(0.95, 6); test_uncertainty checks it)
FEATURES = ("log_inliers", "inlier_ratio", "log_weight_mass", "log_raw_sigma_m", "log_raw_sigma_deg")
_Z = np.random.default_rng(0).standard_normal((4096, 6))   # fixed draws: P_N is deterministic


def sandwich_covariance(H: np.ndarray, meat: np.ndarray, n_obs: int | None = None) -> np.ndarray | None:
    """``H⁻¹ M H⁻¹`` (symmetric) for a (6, 6) Hessian ``H`` and meat ``M = Σᵢ sᵢ sᵢᵀ`` (``sᵢ`` observation i's
    gradient contribution, same parametrisation as H), times ``n/(n − 6)`` for ``n_obs`` observations (the
    small-sample correction: residuals at the solution are smaller than the noise); None when H is singular or the
    result is not finite."""
    H = np.asarray(H, dtype=np.float64)
    if not np.all(np.isfinite(H)) or np.linalg.cond(H) > 1e14:
        return None
    Hi = np.linalg.inv(H)
    cov = Hi @ np.asarray(meat, dtype=np.float64) @ Hi
    if n_obs is not None:
        cov = cov * (n_obs / max(n_obs - H.shape[0], 1))
    cov = 0.5 * (cov + cov.T)
    return cov if np.all(np.isfinite(cov)) else None


def nearest_view_distance(T_world_cam: np.ndarray, view_centres: np.ndarray | None) -> float | None:
    """Distance (m) from the camera centre of ``T_world_cam`` to the nearest of ``view_centres`` (M, 3) world m
    (the mapped views'); None without views."""
    if view_centres is None or len(view_centres) == 0:
        return None
    return float(np.sqrt(((np.asarray(view_centres) - np.asarray(T_world_cam)[:3, 3]) ** 2).sum(1).min()))


def is_correct(t_err_m: float, r_err_deg: float) -> bool:
    """Whether a pose error (m, deg) is within WITHIN_M / WITHIN_DEG: the event the confidence is the probability of."""
    return t_err_m <= WITHIN_M and r_err_deg <= WITHIN_DEG


def _error_m_deg(error: np.ndarray) -> tuple[float, float]:
    """(position error m, rotation error deg) of a (6,) error vector (δc m, δθ rad)."""
    return float(np.linalg.norm(error[:3])), math.degrees(float(np.linalg.norm(error[3:])))


def _block_sigmas(cov: np.ndarray) -> tuple[float, float]:
    """(σ_position m, σ_rotation deg): square roots of the blocks' traces."""
    return (math.sqrt(max(float(np.trace(cov[:3, :3])), 0.0)),
            math.degrees(math.sqrt(max(float(np.trace(cov[3:, 3:])), 0.0))))


def support_features(result, raw_covariance: np.ndarray | None) -> np.ndarray:
    """The confidence model's inputs (``FEATURES``) of a ``LocalizationResult`` and its stage's estimator
    covariance."""
    sm, sd = _block_sigmas(raw_covariance) if raw_covariance is not None else (1.0, 1.0)
    return np.array([math.log1p(max(result.inlier_count, 0)), float(result.inlier_ratio),
                     math.log1p(max(result.weight_mass, 0.0)), math.log(max(sm, 1e-9)), math.log(max(sd, 1e-9))])


def gaussian_within(cov: np.ndarray, within_m: float = WITHIN_M, within_deg: float = WITHIN_DEG) -> float:
    """P(‖δc‖ ≤ within_m ∧ ‖δθ‖ ≤ within_deg) for a zero-mean Gaussian error with covariance ``cov`` (fixed draws),
    within [0.5/N, 1 − 0.5/N] for the N draws (so that its logit is finite). A covariance that is positive
    semi-definite but not numerically definite (eigenvalues from 1e-17 to 1, as PnP on thousands of inliers gives
    next to a weak direction) is drawn from through its eigen-decomposition; a non-finite one gets the lower bound."""
    sym = 0.5 * (cov + cov.T)
    if not np.all(np.isfinite(sym)):
        return 0.5 / len(_Z)
    try:
        L = np.linalg.cholesky(sym + 1e-18 * np.eye(6))
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(sym)
        L = V * np.sqrt(np.clip(w, 0.0, None))
    e = _Z @ L.T
    ok = (np.linalg.norm(e[:, :3], axis=1) <= within_m) & (np.linalg.norm(e[:, 3:], axis=1) <= math.radians(within_deg))
    return float(np.clip(ok.mean(), 0.5 / len(_Z), 1 - 0.5 / len(_Z)))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class Calibration:
    """One stage's calibration: ``k_*`` scales and ``f_*`` floors (m, rad) per block, common factor ``c``; the
    confidence model's ``beta`` over standardised ``FEATURES`` (``mean``/``std``) and intercept ``beta0``;
    ``n_samples`` it was fitted on; ``growth_per_m``: the covariance's growth with the distance to the nearest
    mapped view (0: none)."""

    k_position: float = 1.0
    k_rotation: float = 1.0
    floor_m: float = 0.0
    floor_rad: float = 0.0
    c: float = 1.0
    growth_per_m: float = 0.0
    beta: list = field(default_factory=lambda: [0.0] * len(FEATURES))
    beta0: float = 0.0
    mean: list = field(default_factory=lambda: [0.0] * len(FEATURES))
    std: list = field(default_factory=lambda: [1.0] * len(FEATURES))
    n_samples: int = 0

    def covariance(self, raw: np.ndarray, view_distance_m=None) -> np.ndarray:
        """The calibrated covariance of an estimator covariance ``raw`` (6, 6), or of a stack (N, 6, 6), at
        ``view_distance_m`` (m, scalar or (N,)) from the nearest mapped view (None: 0, the growth is not applied)."""
        d = np.sqrt(np.r_[[self.k_position] * 3, [self.k_rotation] * 3])
        floor = np.r_[[self.floor_m ** 2] * 3, [self.floor_rad ** 2] * 3]
        cov = self.c * (d[:, None] * np.asarray(raw) * d[None, :] + np.diag(floor))
        if view_distance_m is None or self.growth_per_m == 0:
            return cov
        grow = (1.0 + self.growth_per_m * np.asarray(view_distance_m, dtype=np.float64)) ** 2
        return cov * (grow[..., None, None] if np.ndim(grow) else grow)

    def confidence(self, calibrated_cov: np.ndarray, features: np.ndarray) -> float:
        """P(within 10 cm / 5°) from the calibrated covariance *without* the distance growth (``covariance(raw)``:
        the model is fitted on held-out frames near mapped views) and the support features. The growth widens
        the published covariance, not the confidence: on 7-Scenes redkitchen (dSLAM poses) a P_N from the grown
        covariance cut the refined poses' availability from 100 to 87 % at no false-accept gain
        (RESULTS_uncertainty.md), while the confidence without it keeps its ECE at 0.01-0.02."""
        z = (np.asarray(features) - np.asarray(self.mean)) / np.asarray(self.std)
        x = _logit(gaussian_within(calibrated_cov)) + float(np.dot(self.beta, z)) + self.beta0
        return float(1 / (1 + math.exp(-np.clip(x, -50, 50))))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(**d)


_NUM = {"type": "number"}
_POS = {"type": "number", "exclusiveMinimum": 0}
_VEC = {"type": "array", "items": _NUM, "minItems": len(FEATURES), "maxItems": len(FEATURES)}
_STAGE_SCHEMA = {"type": "object", "additionalProperties": False,
                 "required": ["k_position", "k_rotation", "floor_m", "floor_rad", "c", "beta", "beta0", "mean", "std"],
                 "properties": {"k_position": _POS, "k_rotation": _POS, "floor_m": {"type": "number", "minimum": 0},
                                "floor_rad": {"type": "number", "minimum": 0}, "c": _POS, "beta": _VEC,
                                "beta0": _NUM, "mean": _VEC, "std": _VEC, "n_samples": {"type": "integer"},
                                "growth_per_m": {"type": "number", "minimum": 0}}}
# The map metadata's "uncertainty" entry (map_file.BASE_SCHEMA).
CALIBRATION_SCHEMA = {"type": "object", "required": ["stages"],
                      "properties": {"stages": {"type": "object", "additionalProperties": False,
                                                "properties": {s: _STAGE_SCHEMA for s in STAGES}},
                                     "holdout": {"type": "object"},
                                     # the front end's options the calibration localized with (those that shape
                                     # the estimates: not precision or backend); the Localizer uses them as the
                                     # map's defaults, so a map is queried as it was calibrated
                                     "front_end_options": {"type": "object"}}}


@dataclass
class CalibrationSample:
    """One localized calibration image: ``error`` (6,) against its true pose (None: no true pose, e.g. a
    mirrored image: any pose is wrong), the stage's estimator covariance ``raw`` (6, 6), ``features``, and the
    pose's distance to the nearest mapped view (m; None where the map has no reference model)."""

    error: np.ndarray | None
    raw: np.ndarray
    features: np.ndarray
    view_distance_m: float | None = None

    @property
    def correct(self) -> bool:
        return self.error is not None and is_correct(*_error_m_deg(self.error))


def _calibration_of(params) -> Calibration:
    """``Calibration`` of the fitted parameters (log k_p, log k_r, log f_p, log f_r[, log g])."""
    k_p, k_r, f_p, f_r = (math.exp(x) for x in params[:4])
    return Calibration(k_p, k_r, f_p, f_r, growth_per_m=math.exp(params[4]) if len(params) > 4 else 0.0)


def _nll(params, E: np.ndarray, C: np.ndarray, dist: np.ndarray | None = None) -> float:
    """6-DoF Gaussian negative log-likelihood of errors E (N, 6) under ``Calibration`` (``_calibration_of``)
    applied to estimator covariances C (N, 6, 6) at view distances ``dist`` (N,): the joint fit keeps the
    position-rotation coupling of each pose (fitting the blocks one by one left 6-DoF NEES far above the blocks' on
    7-Scenes)."""
    S = _calibration_of(params).covariance(C, dist)
    sign, logdet = np.linalg.slogdet(S)
    if np.any(sign <= 0):
        return 1e12
    q = np.einsum("ni,ni->n", E, np.linalg.solve(S, E[..., None])[..., 0])
    return float(0.5 * (logdet + q).sum())


def _fit_covariance(E: np.ndarray, C: np.ndarray, dist: np.ndarray | None = None) -> Calibration:
    """Scales and floors (and the growth with ``dist`` when given) by maximum likelihood, started from the median
    error² / trace ratio of each block and a growth of 1/(10 cm)."""
    from scipy.optimize import minimize
    x0 = []
    for sl in (slice(0, 3), slice(3, 6)):
        tr = np.maximum(np.trace(C[:, sl, sl], axis1=1, axis2=2), 1e-30)
        x0.append(math.log(max(float(np.median((E[:, sl] ** 2).sum(1) / tr)), 1e-12)))
    x0 += [math.log(0.3 * float(np.sqrt(np.median((E[:, sl] ** 2).sum(1)) / 3)) + 1e-12)
           for sl in (slice(0, 3), slice(3, 6))]
    if dist is not None:
        x0.append(math.log(10.0))
    res = minimize(_nll, x0=x0, args=(E, C, dist), method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 8000})
    cal = _calibration_of(res.x)
    if cal.growth_per_m < 1e-3:       # 1 mm per metre: none
        cal.growth_per_m = 0.0
    return cal


def _fit_confidence(cal: Calibration, samples: list, l2: float) -> None:
    """β, β₀ of the confidence model by L2-regularised logistic regression. The prior (every weight 0) is the
    Gaussian P_N alone; the intercept is regularised too, so that a stage whose held-out poses were all correct
    (no negative to learn from) gets a bounded lift, not certainty."""
    F = np.array([s.features for s in samples])
    y = np.array([s.correct for s in samples], dtype=float)
    mean, std = F.mean(0), F.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    Z = (F - mean) / std
    off = np.array([_logit(gaussian_within(cal.covariance(s.raw))) for s in samples])

    def loss(w):
        x = off + Z @ w[1:] + w[0]
        return float(np.sum(np.logaddexp(0, x) - y * x) + 0.5 * l2 * np.dot(w, w))

    from scipy.optimize import minimize
    w = minimize(loss, np.zeros(Z.shape[1] + 1), method="L-BFGS-B").x
    cal.beta, cal.beta0 = [float(v) for v in w[1:]], float(w[0])
    cal.mean, cal.std = [float(v) for v in mean], [float(v) for v in std]


def fit_calibration(samples: list, l2: float = 1.0) -> Calibration:
    """Fit one stage's ``Calibration`` on ``CalibrationSample``s. The covariance is fitted on the correct-ish
    samples (true pose known, within 25 cm / 10°: gross failures are the gate's business, not the covariance's);
    the confidence on all. The growth with the view distance is fitted when every such sample has one. A
    ValueError with fewer than 8 such samples."""
    from .gating import is_false_accept
    good = [s for s in samples if s.error is not None and not is_false_accept(*_error_m_deg(s.error))]
    if len(good) < 8:
        raise ValueError(f"only {len(good)} calibration frames localized within 25 cm / 10° (need >= 8): the "
                         "held-out frames are too few or the map is poor")
    E = np.array([s.error for s in good])
    C = np.array([s.raw for s in good])
    dist = None if any(s.view_distance_m is None for s in good) else np.array([s.view_distance_m for s in good])
    cal = _fit_covariance(E, C, dist)
    cal.n_samples = len(samples)
    S = cal.covariance(C, dist)
    nees6 = np.einsum("ni,ni->n", E, np.linalg.solve(S, E[..., None])[..., 0])
    cal.c = float(max(np.quantile(nees6, 0.95) / CHI2_95_6, 1e-6)) if len(good) >= 20 else 1.0
    _fit_confidence(cal, samples, l2)
    return cal


def expected_calibration_error(confidence, correct, bins: int = 10) -> float:
    """Σ_b (n_b / N) |accuracy_b − mean confidence_b| over ``bins`` equal-width bins of [0, 1]; NaN when empty."""
    p = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    if len(p) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(y[idx == b].mean() - p[idx == b].mean()) * np.mean(idx == b)
                     for b in range(bins) if np.any(idx == b)))

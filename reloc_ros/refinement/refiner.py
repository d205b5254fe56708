"""``FeaturemetricRefiner``: PixLoc-style refinement of a coarse camera pose against the reference model.

Given a query image, its camera and a coarse ``T_world_cam`` (from a front end or a user prior), it picks reference
images near the coarse pose, projects their points into the query, and minimises the robust featuremetric cost
(``featuremetric.py``) over the 6-DoF pose with Levenberg-Marquardt, coarse to fine over the feature levels.
It keeps the prior (``accepted=False`` with a ``reason``) when too few points are visible, the cost at the finest
level rose, the update is implausibly large, or the final alignment is poor (see ``DEFAULT_REFINER_CONF``).
With ``match_init`` the LM also (or instead) starts from a PnP pose on sparse feature matches of the same
reference points (``matching.py``), which widens the basin to priors tens of centimetres off.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..conf import merge_conf
from ..device import torch_threads
from ..estimators.pnp import pnp_ransac
from ..geometry.camera import Camera
from ..geometry.pose import (covariance_right_to_world, invert_T, rotation_angle_deg,
                             se3_exp_right, transform_points, view_distance)
from ..geometry.projection_torch import camera_params_torch
from ..precision import autocast_context, resolve_precision
from .featuremetric import LevelCost, evaluate_level
from .featuremetric_cpu import evaluate_level_cpu, warm_up
from .features import XFeatPyramid, rgb_to_gray
from .matching import mutual_nearest_cells
from ..uncertainty import sandwich_covariance
from .reference import ReferenceModel, load_reference

__all__ = ["FeaturemetricRefiner", "RefinementResult", "DEFAULT_REFINER_CONF", "MATCH_INIT_MODES",
           "refine_from_prior"]

DEFAULT_REFINER_CONF = {
    "num_views": 4,              # reference images whose points are used
    "num_candidates": 12,        # nearest reference images (distance + angle) scored by visible points
    "angle_weight_m": 0.5,       # metres per radian of optical-axis angle in the nearest-view distance
    "max_points": 1024,          # 7-Scenes (ACE, 400 queries): 77 % within 5 cm/5° at 28 ms; 512 points: 73 % at 25 ms
    "min_points": 40,            # fewer visible points -> reject ("too_few_points")
    "border_px": 4,
    "levels": None,              # subset of the reference's levels to use (coarse to fine); None = all
    "max_iterations": [20, 15, 10],  # per level, coarse to fine
    "loss": "cauchy",
    "loss_scale": 0.1,           # c² of the Cauchy loss on squared L2 distances of unit features
    "lambda_init": 1e-3,
    "lambda_max": 1e4,
    "tol_translation_m": 5e-4,   # stop a level when the step is below both tolerances (0.5 mm / 0.03°: far below
    "tol_rotation_rad": 5e-4,    # the maps' accuracy; 1e-4 cost 30 % more time for the same accuracy)
    "max_translation_m": 0.5,    # larger total updates are rejected ("update_too_large")
    "max_rotation_deg": 20.0,
    "max_final_cost": 0.25,      # mean robust cost at the finest level above this -> "poor_alignment"
    "min_inlier_ratio": 0.15,    # share of points with ‖r‖² < loss_scale at the finest level below this -> "poor_alignment"
    "cost_rise_tol": 1e-6,       # relative; a final finest-level cost above the initial one -> "cost_increased"
    # torch CPU threads during the LM (set and restored around it; None = leave torch's setting). With the torch
    # backend the LM is hundreds of small ops, for which a second thread costs more than it gives (7-Scenes through
    # the node on 2 cores: 25 ms with 1 thread vs 43 ms with 2); the numba kernel is single-threaded anyway. The
    # query's own XFeat pass (when not shared by the front end) runs with torch's threads.
    "cpu_threads": 1,
    # Where the LM cost and normal equations are evaluated: "numba" (a fused CPU kernel, featuremetric_cpu.py,
    # ~10x faster than torch on a CPU), "torch" (featuremetric.py; any device), "auto" = numba on CPU, else torch.
    "lm_backend": "auto",
    # Precision of the query's own XFeat pass (when the front end does not share its levels): "auto" (bf16 only
    # where measured faster, precision.py) | "fp32" | "bf16" | "fp16" (CUDA). The ACE front end shares levels
    # computed in its encoder_precision. 7-Scenes, implicit front end, 400 queries, AMX CPU: bf16 the same recalls
    # as fp32 (±1 query), 34 -> 25 ms; an AVX2-only CPU runs bf16 ~40x slower than fp32.
    "feature_precision": "auto",
    # Use the reference's estimated per-point weights (multi-view feature consistency, point_weights.py) when it
    # has them and the caller passes none.
    "use_point_weights": True,
    # Matching initialisation (matching.py): the reference points of the views near the prior are matched to the
    # query's cells of level match_level by mutual nearest neighbour, and PnP + RANSAC (poselib, match_threshold_px)
    # on the matches gives a second start for the LM. "off": the LM starts from the prior only. "pnp": it starts
    # from the PnP pose, and from the prior only when PnP finds fewer than match_min_inliers inliers or that run is
    # rejected (the result's `init` says which run was kept). "compete": from both; the accepted run with the
    # lower final cost is kept. It widens the basin
    # from ~10 cm to whatever still selects views of the query's scene. 7-Scenes, implicit front end (11.8 cm
    # median): 67.0 % -> 77.0 % within 5 cm/5° for +8 ms (75.8 % for +5 ms with match_max_points 512, the implicit
    # front end's choice); the ACE front end (3.4 cm) gains nothing, so the default is "off" and each front end may
    # set its own (``refiner_defaults``; refine_from_prior uses "compete").
    # Level "x2" (1/4) matches more precisely but costs 21 ms against 8.5 for "fused" (1/8), for the same recall
    # after the LM (benchmarks/RESULTS_refinement.md, fifth session).
    "match_init": "off",
    "match_level": "fused",
    "match_threshold_px": 16.0,  # RANSAC inlier threshold (px); 2 cells of the fused level (stride 8)
    "match_min_inliers": 30,
    "match_max_points": 1024,    # of the selected points, at most this many (evenly spread) are matched
}
MATCH_INIT_MODES = ("off", "pnp", "compete")


@dataclass
class RefinementResult:
    """Outcome of one refinement. ``T_world_cam`` is the refined pose when ``accepted``, else the prior.
    ``covariance`` (6×6, world convention: position (m), left rotation about world axes (rad)) from the
    sandwich of the robust cost at the finest level, uncalibrated (``uncertainty.py``; None when rejected)."""

    accepted: bool
    T_world_cam: np.ndarray
    covariance: np.ndarray | None
    iterations: int
    cost_initial: float
    cost_final: float
    reason: str
    num_points: int
    inlier_ratio: float = float("nan")    # share of visible points with ‖r‖² below the loss scale (finest level)
    timings_ms: dict = field(default_factory=dict)
    T_refined: np.ndarray | None = None   # the optimiser's pose even when rejected (diagnostics)
    init: str = "prior"                   # where the kept LM run started: "prior" (T_init) or "matches" (match_init)
    match_inliers: int = 0                # PnP inliers of the matching initialisation (0 when off or failed)

    @property
    def success(self) -> bool:
        return self.accepted


class FeaturemetricRefiner:
    """LM featuremetric refinement over a loaded ``ReferenceModel``."""

    def __init__(self, reference: ReferenceModel, device: str = "cpu", net: XFeatPyramid | None = None, **conf):
        self.conf = merge_conf(DEFAULT_REFINER_CONF, conf, "refiner")
        levels = list(self.conf["levels"] or reference.levels)
        missing = [lv for lv in levels if lv not in reference.levels]
        if missing:
            raise ValueError(f"levels {missing} are not in the reference model (it has {reference.levels})")
        self.levels = levels
        if self.conf["match_level"] not in reference.levels:
            raise ValueError(f"match_level {self.conf['match_level']!r} is not in the reference model (it has "
                             f"{reference.levels})")
        self._check_match_init(self.conf["match_init"])
        its = list(self.conf["max_iterations"])
        self.conf["max_iterations"] = (its + [its[-1]] * len(levels))[: len(levels)]
        self.ref = reference
        self.device = torch.device(device)
        backend = self.conf["lm_backend"]
        if backend not in ("auto", "numba", "torch"):
            raise ValueError(f"lm_backend must be 'auto', 'numba' or 'torch', got {backend!r}")
        if backend == "numba" and self.device.type != "cpu":
            raise ValueError(f"lm_backend 'numba' runs on the CPU; the refiner's device is {self.device}")
        self.lm_backend = ("numba" if self.device.type == "cpu" else "torch") if backend == "auto" else backend
        # the query-side maps: the LM's levels and the matching level
        self.map_levels = levels + ([self.conf["match_level"]] if self.conf["match_level"] not in levels else [])
        if net is not None and not set(self.map_levels) <= set(net.levels):
            raise ValueError(f"the given feature network computes {net.levels}, not all of {self.map_levels}")
        self.net = (net or XFeatPyramid(self.map_levels)).to(self.device)
        self.precision = {"refiner_features": self._resolve_feature_precision()}
        # CPU copies for the point selection and the numba kernel
        self._points_np = np.ascontiguousarray(reference.points_xyz.cpu().numpy(), dtype=np.float64)
        self._image_poses_np = reference.image_poses.cpu().numpy().astype(np.float64)
        self._hidden_views: np.ndarray | None = None   # see views_hidden
        self._offsets_np = reference.image_offsets.cpu().numpy().astype(np.int64)
        if self.lm_backend == "numba":
            warm_up()

    def _resolve_feature_precision(self):
        """The query XFeat pass's ``PrecisionChoice`` (probed at 480×640, the size of the maps' images)."""
        def run():
            with torch.inference_mode():
                self.net(torch.zeros(1, 1, 480, 640, device=self.device))
        return resolve_precision(self.conf["feature_precision"], self.device, "refiner_features", run,
                                 "x".join(self.map_levels) + "_480x640")

    @staticmethod
    def _check_match_init(mode) -> None:
        if mode not in MATCH_INIT_MODES:
            raise ValueError(f"match_init must be one of {MATCH_INIT_MODES}, got {mode!r}")

    @classmethod
    def from_reference(cls, source, device: str = "cpu", **conf) -> "FeaturemetricRefiner":
        """From a reference file path (``map_file.reference_path(map)``) or a ``(tensors, metadata)`` pair."""
        return cls(load_reference(source, device), device, **conf)

    # ---------------------------------------------------------------------------------------------------------
    def extract(self, image: np.ndarray, raw: dict | None = None) -> dict[str, torch.Tensor]:
        """Query feature maps: level -> (h, w, D) PCA-reduced, L2-normalised, channels-last. ``raw``: the XFeat
        levels of this image computed elsewhere (same grayscale conversion and resolution: see ``Localizer``), else they are computed here."""
        if raw is None:
            with torch.inference_mode(), autocast_context(self.device.type,
                                                               self.precision["refiner_features"].precision):
                raw = {lv: v.float() for lv, v in self.net(rgb_to_gray(image, self.ref.gray, self.device)).items()}
        return self.ref.query_maps(raw, self.map_levels)

    def select_points(self, T: np.ndarray, camera: Camera) -> np.ndarray:
        """Indices of reference points seen from pose ``T`` (4×4 ``T_world_cam``): from the ``num_views`` nearby
        reference images with the most points projecting inside the image (at most ``max_points``, best-gradient
        first per view). Runs in numpy on the CPU copies of the poses and points (a few hundred points per view)."""
        c = self.conf
        poses, offsets = self._image_poses_np, self._offsets_np
        score = view_distance(T[None], poses, c["angle_weight_m"])[0][0]
        if self._hidden_views is not None:
            score = np.where(self._hidden_views, np.inf, score)
        cand = np.argsort(score, kind="stable")[: c["num_candidates"]]
        cand = cand[np.isfinite(score[cand])]
        if len(cand) == 0:
            return np.zeros(0, dtype=np.int64)
        starts, ends = offsets[cand], offsets[cand + 1]
        idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        uv, ok = camera.project(transform_points(invert_T(T), self._points_np[idx]))
        b = c["border_px"]
        ok &= (uv[:, 0] >= b) & (uv[:, 0] <= camera.width - 1 - b) & (uv[:, 1] >= b) & \
              (uv[:, 1] <= camera.height - 1 - b)
        bounds = np.concatenate([[0], np.cumsum(ends - starts)])
        per_view = [(int(ok[s:e].sum()), idx[s:e][ok[s:e]]) for s, e in zip(bounds[:-1], bounds[1:])]
        per_view.sort(key=lambda x: -x[0])  # stable: ties keep the nearer view first
        chosen = [i for n, i in per_view[: c["num_views"]] if n > 0]
        if not chosen:
            return np.zeros(0, dtype=np.int64)
        k = max(1, c["max_points"] // len(chosen))
        return np.concatenate([i[:k] for i in chosen])

    @contextlib.contextmanager
    def views_hidden(self, hide: np.ndarray):
        """Within the ``with`` block, the reference images where ``hide`` ((num images,) bool, in the reference's
        image order) is True are never selected, e.g. to refine a mapping frame without its own image."""
        hide = np.asarray(hide, dtype=bool)
        if hide.shape != (len(self._image_poses_np),):
            raise ValueError(f"hide must be ({len(self._image_poses_np)},) bool, one per reference image; "
                             f"got shape {hide.shape}")
        before, self._hidden_views = self._hidden_views, hide
        try:
            yield self
        finally:
            self._hidden_views = before

    def _level_problems(self, idx_np: np.ndarray, maps: dict, camera: Camera, weights: torch.Tensor | None):
        """The cost of each level (coarse to fine) as a function ``(T_world_cam (4, 4) float64, with_jac=True) ->
        LevelCost`` of numpy arrays, for the LM (which runs in numpy: a 6×6 solve per step is faster there than in
        torch). The points, camera and weights are gathered once for all levels."""
        c = self.conf
        idx = torch.from_numpy(idx_np).to(self.device)
        feats = {lv: self.ref.features[lv][idx] for lv in self.levels}
        w = None if weights is None else weights.to(self.device)[idx]
        if self.lm_backend == "numba":
            X = self._points_np[idx_np]
            intr = np.array([camera.fx, camera.fy, camera.cx, camera.cy])
            dist = np.asarray(camera.dist, dtype=np.float64) if camera.is_distorted else None
            w = None if w is None else w.double().cpu().numpy()

            def numba_level(lv):
                f_ref, fmap = feats[lv].float().cpu().numpy(), maps[lv].float().contiguous().cpu().numpy()
                return lambda T, jac=True: evaluate_level_cpu(T, X, f_ref, fmap, float(self.ref.strides[lv]), intr,
                                                              dist, c["loss"], c["loss_scale"], w, jac)
            return [numba_level(lv) for lv in self.levels]
        # geometry in float32 (sub-micrometre at room scale); the LM state stays float64
        X = self.ref.points_xyz[idx].float()
        intr, dist = camera_params_torch(camera, dtype=torch.float32, device=self.device)
        dist = dist if camera.is_distorted else None

        def torch_level(lv):
            def evaluate(T, jac=True):
                lc = evaluate_level(torch.as_tensor(T, dtype=torch.float32, device=self.device), X, feats[lv],
                                    maps[lv], self.ref.strides[lv], intr, dist, c["loss"], c["loss_scale"], w, jac)
                def np_(x):
                    return None if x is None else x.cpu().numpy()
                return LevelCost(lc.cost, lc.num_valid, np_(lc.H), np_(lc.g), np_(lc.sq_norms), np_(lc.valid),
                                 lc.weighted_sq_sum, np_(lc.meat))
            return evaluate
        return [torch_level(lv) for lv in self.levels]

    @contextlib.contextmanager
    def _lm_threads(self):
        """torch threads for the LM (``cpu_threads``), restored afterwards."""
        with torch_threads(self.conf["cpu_threads"] if self.device.type == "cpu" else None):
            yield

    # ---------------------------------------------------------------------------------------------------------
    def refine(self, image: np.ndarray, camera: Camera, T_init: np.ndarray,
               point_weights: torch.Tensor | None = None, raw_features: dict | None = None,
               match_init: str | None = None) -> RefinementResult:
        """Refine ``T_init`` (4×4 camera-to-world) for ``image`` ((H, W, 3) uint8 RGB seen by ``camera``).
        ``raw_features``: XFeat levels of ``image`` already computed (``extract``), e.g. by the ACE front end.
        ``point_weights``: (P,) weights of every reference point; None = the reference's own (``use_point_weights``)
        or none. ``match_init``: this call's matching initialisation (``MATCH_INIT_MODES``; None = the conf's)."""
        t0 = time.perf_counter()
        c = self.conf
        T_init = np.asarray(T_init, dtype=np.float64)
        if T_init.shape != (4, 4) or not np.all(np.isfinite(T_init)):
            raise ValueError(f"T_init must be a finite 4x4 matrix, got shape {T_init.shape}")
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {desc}")
        if image.shape[:2] != (camera.height, camera.width):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the camera is "
                             f"{camera.width}x{camera.height}")
        timings = {}

        def reject(reason, n=0):
            timings["total"] = (time.perf_counter() - t0) * 1e3
            return RefinementResult(False, T_init.copy(), None, 0, float("nan"), float("nan"), reason, n,
                                    float("nan"), timings)

        idx = self.select_points(T_init, camera)
        timings["select"] = (time.perf_counter() - t0) * 1e3
        if len(idx) < c["min_points"]:
            return reject("too_few_points", n=len(idx))
        t1 = time.perf_counter()
        maps = self.extract(image, raw_features)
        timings["features"] = (time.perf_counter() - t1) * 1e3
        if point_weights is None and c["use_point_weights"]:
            point_weights = self.ref.point_weights
        mode = c["match_init"] if match_init is None else match_init
        self._check_match_init(mode)
        match_inliers = 0
        prior_start = ("prior", T_init, idx)
        starts = [prior_start]
        if mode != "off":
            t1 = time.perf_counter()
            T_match, match_inliers = self.match_pose(idx, maps, camera)
            timings["match"] = (time.perf_counter() - t1) * 1e3
            if T_match is not None:
                idx_m = self.select_points(T_match, camera)
                if len(idx_m) >= c["min_points"]:
                    starts = [("matches", T_match, idx_m)] + (starts if mode == "compete" else [])
        t1 = time.perf_counter()
        with self._lm_threads():  # the LM's small ops (torch backend) run faster on one thread
            results = [self._optimize(*start, maps, camera, point_weights) for start in starts]
            if mode == "pnp" and starts[0][0] == "matches" and not results[0].accepted:
                results.append(self._optimize(*prior_start, maps, camera, point_weights))  # the prior next
        timings["optimize"] = (time.perf_counter() - t1) * 1e3
        accepted = [r for r in results if r.accepted]
        out = min(accepted, key=lambda r: r.cost_final) if accepted else results[-1]
        out.match_inliers = match_inliers
        if not out.accepted:
            out.T_world_cam = T_init.copy()
        timings["total"] = (time.perf_counter() - t0) * 1e3
        out.timings_ms = timings
        return out

    def match_pose(self, idx: np.ndarray, maps: dict, camera: Camera) -> tuple[np.ndarray | None, int]:
        """PnP + RANSAC on mutual-nearest-neighbour matches (``matching.py``) of the reference points ``idx`` to the
        query map of level ``match_level`` → (``T_world_cam`` or None when fewer than ``match_min_inliers``
        inliers, number of inliers)."""
        c = self.conf
        lv = c["match_level"]
        idx = idx[:: -(-len(idx) // max(int(c["match_max_points"]), 1))]
        uv, keep, _ = mutual_nearest_cells(self.ref.features[lv][torch.from_numpy(idx).to(self.device)], maps[lv],
                                           self.ref.strides[lv])
        if len(keep) < c["match_min_inliers"]:
            return None, 0
        p = pnp_ransac(uv, self._points_np[idx[keep]], camera, threshold_px=c["match_threshold_px"],
                       max_iterations=1000, confidence=0.999, min_inliers=c["match_min_inliers"], backend="poselib")
        return (p.T_world_cam if p.success else None), int(p.num_inliers)

    def _optimize(self, init: str, T_start: np.ndarray, idx: np.ndarray, maps: dict, camera: Camera,
                  point_weights) -> RefinementResult:
        """LM coarse to fine from ``T_start`` over the points ``idx``, then the acceptance checks; the result's
        ``T_world_cam`` is the refined pose when accepted, else ``T_start``."""
        c = self.conf

        def reject(reason, cost0=float("nan"), cost1=float("nan"), its=0, n=0, T_ref=None, inl=float("nan")):
            return RefinementResult(False, T_start.copy(), None, its, cost0, cost1, reason, n, inl, {}, T_ref, init)

        problems = self._level_problems(idx, maps, camera, point_weights)
        cost_init_fine = problems[-1](T_start, False).cost
        T = T_start.copy()
        iterations = 0
        last = None
        for problem, max_it in zip(problems, c["max_iterations"]):
            cur = problem(T)
            if cur.num_valid < c["min_points"]:
                return reject("too_few_points", cost_init_fine, cur.cost, iterations, cur.num_valid)
            lam = c["lambda_init"]
            for _ in range(max_it):
                iterations += 1
                A = cur.H + lam * np.diag(np.maximum(np.diag(cur.H), 1e-9))
                try:
                    delta = -np.linalg.solve(A, cur.g)
                except np.linalg.LinAlgError:
                    return reject("diverged", cost_init_fine, cur.cost, iterations, cur.num_valid)
                T_new = se3_exp_right(T, delta)
                new = problem(T_new)
                if new.num_valid >= c["min_points"] and new.cost < cur.cost:
                    T, cur = T_new, new
                    lam = max(lam / 10, 1e-8)
                    if (np.linalg.norm(delta[:3]) < c["tol_translation_m"]
                            and np.linalg.norm(delta[3:]) < c["tol_rotation_rad"]):
                        break
                else:
                    lam *= 10
                    if lam > c["lambda_max"]:
                        break
            last = cur
        if not np.all(np.isfinite(T)):
            return reject("diverged", cost_init_fine, float("nan"), iterations, len(idx))
        cost_final = last.cost
        n = last.num_valid
        inl = float(np.count_nonzero((last.sq_norms < c["loss_scale"]) & last.valid)) / max(n, 1)
        dt = float(np.linalg.norm(T[:3, 3] - T_start[:3, 3]))
        dr = rotation_angle_deg(T_start[:3, :3], T[:3, :3])
        if dt > c["max_translation_m"] or dr > c["max_rotation_deg"]:
            return reject("update_too_large", cost_init_fine, cost_final, iterations, n, T, inl)
        if cost_final > cost_init_fine * (1 + c["cost_rise_tol"]):
            return reject("cost_increased", cost_init_fine, cost_final, iterations, n, T, inl)
        if cost_final > c["max_final_cost"] or inl < c["min_inlier_ratio"]:
            return reject("poor_alignment", cost_init_fine, cost_final, iterations, n, T, inl)
        # Sandwich covariance of the right perturbation (robust cost: H⁻¹ Σ sᵢsᵢᵀ H⁻¹, uncertainty.py); the map's
        # calibration (Localizer) scales it.
        cov_right = sandwich_covariance(last.H, last.meat, n)
        cov = None if cov_right is None else covariance_right_to_world(T, cov_right)
        return RefinementResult(True, T, cov, iterations, cost_init_fine, cost_final, "ok", n, inl, {}, T, init)


def refine_from_prior(refiner: FeaturemetricRefiner, image: np.ndarray, camera: Camera,
                      T_world_cam_prior: np.ndarray, raw_features: dict | None = None) -> RefinementResult:
    """Refine a user-given pose (e.g. from /initialpose): ``refiner.refine`` with the matching initialisation on
    ("compete" unless the refiner's conf already turns it on), since a clicked pose is often tens of cm off."""
    mode = refiner.conf["match_init"] if refiner.conf["match_init"] != "off" else "compete"
    return refiner.refine(image, camera, T_world_cam_prior, raw_features=raw_features, match_init=mode)

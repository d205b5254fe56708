"""Calibrate the covariance scale of a front end (and of the refinement) on posed query frames.

The estimators' covariances (PnP σ²(JᵀJ)⁻¹, featuremetric σ²H⁻¹) treat thousands of residuals as independent;
scene-coordinate and feature errors are spatially correlated, so the raw covariances are far too small. This
script localizes frames with ``covariance_scale = 1``, computes each pose error's NEES ``eᵀ Σ⁻¹ e`` (6 dof, world
convention of docs/architecture.md) and prints the scale that puts 95 % of the errors inside the 95 % ellipsoid
(χ²₆ = 12.59). Calibrate on one set of frames and check on another (``--check-frames``).

    python benchmarks/calibrate_covariance.py --map MAP --dataset DIR --frames CALIB.txt [--check-frames CHECK.txt]
        [--refine] [--limit N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.stats import chi2
from tqdm import tqdm

from reloc_ros.datasets import open_dataset
from reloc_ros.localizer import Localizer

CHI2_95 = {6: chi2.ppf(0.95, 6), 3: chi2.ppf(0.95, 3)}


def world_error(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """(δc, δθ): position error (m) and left rotation error about world axes (rad), the covariance convention."""
    return np.concatenate([T_est[:3, 3] - T_gt[:3, 3], Rotation.from_matrix(T_est[:3, :3] @ T_gt[:3, :3].T).as_rotvec()])


def nees_values(loc: Localizer, dataset, limit: int | None) -> np.ndarray:
    idx = np.arange(len(dataset)) if not limit else np.linspace(0, len(dataset) - 1, limit).astype(int)
    out = []
    for i in tqdm(idx, desc="localizing", unit="frame"):
        f = dataset[int(i)]
        r = loc.localize(f.image, f.camera)
        if r.success and r.covariance is not None:
            e = world_error(r.T_world_cam, f.T_world_cam)
            out.append(float(e @ np.linalg.solve(r.covariance, e)))
    return np.array(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--map", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--frames", required=True, help="calibration frames")
    p.add_argument("--check-frames", help="held-out frames on which the calibrated scale is checked")
    p.add_argument("--refine", action="store_true", help="calibrate the refined covariance (else the front end's)")
    p.add_argument("--limit", type=int, help="frames per set, spread evenly")
    p.add_argument("--scale", type=float, help="estimator covariance_scale (default: the front end's / refiner's own)")
    p.add_argument("--floor-m", type=float, default=0.0, help="position sigma floor (m) added by the Localizer")
    p.add_argument("--floor-deg", type=float, default=0.0, help="rotation sigma floor (deg) added by the Localizer")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    opts = None if args.scale is None else {"covariance_scale": args.scale}
    loc = Localizer.from_map(args.map, refine=args.refine, front_end_options=opts,
                             refiner_options=opts if args.refine else None,
                             position_sigma_floor_m=args.floor_m, rotation_sigma_floor_deg=args.floor_deg)
    calib = nees_values(loc, open_dataset(args.dataset, frames=args.frames), args.limit)
    scale = float(np.quantile(calib, 0.95) / CHI2_95[6])
    report = {"map": str(args.map), "refine": args.refine, "scale": args.scale, "floor_m": args.floor_m,
              "floor_deg": args.floor_deg, "calibration_frames": args.frames, "n_calibration":
              int(calib.size), "nees_median_unscaled": float(np.median(calib)), "covariance_scale_95": scale}
    report["calibration_inside_95"] = float(np.mean(calib <= CHI2_95[6]))
    print(f"calibration: {calib.size} poses, NEES median {np.median(calib):.1f} (scale {args.scale or 'default'}, floor "
          f"{args.floor_m:g} m / {args.floor_deg:g} deg): {100 * report['calibration_inside_95']:.1f} % inside the 95 % "
          f"ellipsoid; a further scale of {scale:.2f} would put 95 % inside")
    if args.check_frames:
        check = nees_values(loc, open_dataset(args.dataset, frames=args.check_frames), args.limit)
        inside = float(np.mean(check / scale <= CHI2_95[6]))
        inside_as_is = float(np.mean(check <= CHI2_95[6]))
        report.update(check_frames=args.check_frames, n_check=int(check.size), check_inside_95_with_scale=inside,
                      check_inside_95=inside_as_is)
        print(f"held-out check: {check.size} poses, {100 * inside_as_is:.1f} % inside as given, "
              f"{100 * inside:.1f} % with the further scale")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

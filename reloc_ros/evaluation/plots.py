"""Evaluation plots (PNG, matplotlib Agg backend): top-down trajectory, error over time, error CDF, latency histogram.

Inputs are plain arrays: stamps in nanoseconds, poses ``T_world_cam`` (N, 4, 4) in metres, errors in metres and
degrees (inf = no pose for that query), latencies in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_trajectory", "plot_errors_over_time", "plot_error_cdf", "plot_latency_hist", "plot_all",
           "plot_reliability", "plot_nees_cdf"]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plane_axes(P: np.ndarray) -> tuple[int, int]:
    """The two world axes with the largest spread: the top-down view of a mostly planar trajectory."""
    if len(P) < 2:
        return 0, 1
    a, b = sorted(np.argsort(P.std(0))[::-1][:2])
    return int(a), int(b)


def plot_trajectory(path, gt_poses, est_poses, title: str = "") -> Path:
    """Top-down view (the two world axes of largest ground-truth spread) of ground truth vs estimates."""
    G = np.asarray(gt_poses, dtype=np.float64).reshape(-1, 4, 4)[:, :3, 3]
    E = np.asarray(est_poses, dtype=np.float64).reshape(-1, 4, 4)[:, :3, 3]
    a, b = _plane_axes(G if len(G) else E)
    names = "xyz"
    fig, ax = plt.subplots(figsize=(6, 6))
    if len(G):
        ax.plot(G[:, a], G[:, b], "-", color="0.3", lw=1.2, label=f"ground truth ({len(G)})")
    if len(E):
        ax.plot(E[:, a], E[:, b], ".", color="tab:red", ms=3, label=f"estimates ({len(E)})")
    ax.set_xlabel(f"{names[a]} (m)")
    ax.set_ylabel(f"{names[b]} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best")
    ax.set_title(f"trajectory {title}".strip())
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_errors_over_time(path, stamps_ns, t_err_m, r_err_deg, title: str = "") -> Path:
    """Translation (cm) and rotation (deg) errors against time since the first stamp; failures as grey ticks."""
    s = np.asarray(stamps_ns, dtype=np.int64)
    t = np.asarray(t_err_m, dtype=np.float64)
    r = np.asarray(r_err_deg, dtype=np.float64)
    x = (s - (s.min() if s.size else 0)) / 1e9
    ok = np.isfinite(t) & np.isfinite(r)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(x[ok], 100 * t[ok], ".", color="tab:blue", ms=3, label="translation (cm)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("translation error (cm)", color="tab:blue")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(x[ok], r[ok], ".", color="tab:orange", ms=3, label="rotation (deg)")
    ax2.set_ylabel("rotation error (deg)", color="tab:orange")
    ax2.set_yscale("log")
    if np.any(~ok):
        for xf in x[~ok]:
            ax.axvline(xf, color="0.8", lw=0.5, zorder=0)
    ax.set_title(f"errors over time {title} ({int((~ok).sum())} without a pose)".strip())
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_error_cdf(path, t_err_m, r_err_deg, title: str = "") -> Path:
    """Cumulative share of all queries (failures count, never reach the curve's top) under each error."""
    t = np.asarray(t_err_m, dtype=np.float64)
    r = np.asarray(r_err_deg, dtype=np.float64)
    n = max(t.size, 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, v, scale, label, marks in ((a1, t, 100.0, "translation error (cm)", (2, 5, 10)),
                                       (a2, r, 1.0, "rotation error (deg)", (2, 5))):
        f = np.sort(v[np.isfinite(v)]) * scale
        if f.size:
            ax.step(f, np.arange(1, f.size + 1) / n, where="post")
        for m in marks:
            ax.axvline(m, color="0.6", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel(label)
        ax.set_ylabel("share of queries")
        ax.grid(alpha=0.3)
    fig.suptitle(f"error CDF {title}".strip())
    return _save(fig, path)


def plot_latency_hist(path, latency_ms, title: str = "") -> Path:
    """Histogram of latencies (ms) with the median and 95th percentile marked."""
    x = np.asarray(latency_ms, dtype=np.float64)
    x = x[np.isfinite(x)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if x.size:
        ax.hist(x, bins=min(50, max(5, x.size // 4)), color="tab:green", alpha=0.8)
        for q, ls in ((50, "-"), (95, "--")):
            v = np.percentile(x, q)
            ax.axvline(v, color="k", ls=ls, lw=1, label=f"p{q} = {v:.1f} ms")
        ax.legend()
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"latency {title}".strip())
    return _save(fig, path)


def plot_reliability(path, confidence, correct, bins: int = 10, title: str = "") -> Path:
    """Reliability diagram: per confidence bin, the share of poses within 10 cm / 5° against the mean confidence
    (the diagonal = calibrated), with the bins' counts and the ECE."""
    from ..uncertainty import expected_calibration_error
    p = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    used = [b for b in range(bins) if np.any(idx == b)]
    ax.plot([p[idx == b].mean() for b in used], [y[idx == b].mean() for b in used], "o-", color="tab:blue",
            label=f"measured (ECE {expected_calibration_error(p, y, bins):.3f})")
    ax.set_ylabel("share within 10 cm / 5°")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left")
    ax.set_title(f"confidence reliability {title}".strip())
    axn.bar([(b + 0.5) / bins for b in range(bins)], [np.sum(idx == b) for b in range(bins)], width=0.9 / bins,
            color="tab:gray")
    axn.set_yscale("log")
    axn.set_xlabel("confidence")
    axn.set_ylabel("poses")
    return _save(fig, path)


def plot_nees_cdf(path, nees_values, dof: int = 6, title: str = "") -> Path:
    """CDF of the measured NEES against the χ² distribution it follows when the covariance is calibrated."""
    from scipy.stats import chi2
    v = np.sort(np.asarray(nees_values, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if v.size:
        x = np.logspace(-1, 3, 400)
        ax.plot(x, chi2.cdf(x, dof), "k--", lw=1, label=f"χ²{dof} (calibrated)")
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", color="tab:red", label="measured")
        ax.axvline(chi2.ppf(0.95, dof), color="gray", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.legend(loc="lower right")
    ax.set_xlabel("NEES eᵀΣ⁻¹e")
    ax.set_ylabel("share of poses")
    ax.set_title(f"covariance consistency {title}".strip())
    return _save(fig, path)


def plot_nees_vs_view_distance(path, view_distance_m, nees_values, dof: int = 6, title: str = "") -> Path:
    """NEES of each pose against its distance to the nearest mapped view, with the χ² 95 % line: a covariance that
    does not grow with the distance shows as points rising above the line to the right."""
    from scipy.stats import chi2
    d = np.asarray(view_distance_m, dtype=np.float64) * 100
    v = np.asarray(nees_values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(d, v, s=6, alpha=0.6, color="tab:blue")
    ax.axhline(chi2.ppf(0.95, dof), color="k", ls="--", lw=1, label=f"χ²{dof} 95 %")
    ax.set_yscale("log")
    ax.set_xlabel("distance to the nearest mapped view (cm)")
    ax.set_ylabel("NEES eᵀΣ⁻¹e")
    ax.legend(loc="upper left")
    ax.set_title(f"covariance vs distance to the map {title}".strip())
    return _save(fig, path)


def plot_all(out_dir, gt_stamps_ns, gt_poses, est_stamps_ns, est_poses, err_stamps_ns, t_err_m, r_err_deg,
             latency_ms, title: str = "") -> dict:
    """Write the four plots into ``out_dir``; returns ``{name: path}``."""
    d = Path(out_dir)
    return {
        "trajectory": str(plot_trajectory(d / "trajectory.png", gt_poses, est_poses, title)),
        "errors_over_time": str(plot_errors_over_time(d / "errors_over_time.png", err_stamps_ns, t_err_m, r_err_deg,
                                                      title)),
        "error_cdf": str(plot_error_cdf(d / "error_cdf.png", t_err_m, r_err_deg, title)),
        "latency_hist": str(plot_latency_hist(d / "latency_hist.png", latency_ms, title)),
    }

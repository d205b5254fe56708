"""Match estimated poses to ground truth by timestamp (nanoseconds).

Used by the bag replay: the node stamps every output with the stamp of the image it came from, so matches are
normally exact; a small tolerance absorbs float round trips through ``builtin_interfaces/Time``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["match_by_stamp"]


def match_by_stamp(gt_stamps_ns, est_stamps_ns, tol_ns: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For every estimate, the ground-truth sample nearest in time, kept only if within ``tol_ns``.

    Returns ``(gt_idx, est_idx)`` int arrays of equal length (one pair per matched estimate, in estimate order).
    Each ground-truth sample is used at most once: when several estimates share the nearest ground truth, the
    closest one in time wins (ties: the first). Raises ``ValueError`` on non-1-D input or a negative tolerance.
    """
    gt = np.asarray(gt_stamps_ns, dtype=np.int64)
    est = np.asarray(est_stamps_ns, dtype=np.int64)
    if gt.ndim != 1 or est.ndim != 1:
        raise ValueError("stamps must be 1-D arrays of nanoseconds")
    if tol_ns < 0:
        raise ValueError(f"tolerance must be >= 0 ns, got {tol_ns}")
    if gt.size == 0 or est.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(gt, kind="stable")
    gs = gt[order]
    pos = np.searchsorted(gs, est)
    left = np.clip(pos - 1, 0, gs.size - 1)
    right = np.clip(pos, 0, gs.size - 1)
    d_left = np.abs(est - gs[left])
    d_right = np.abs(gs[right] - est)
    nearest = np.where(d_right < d_left, right, left)
    dist = np.minimum(d_left, d_right)
    best: dict[int, tuple[int, int]] = {}  # gt sorted index -> (distance, est index)
    for i in np.flatnonzero(dist <= tol_ns):
        g = int(nearest[i])
        if g not in best or dist[i] < best[g][0]:
            best[g] = (int(dist[i]), int(i))
    pairs = sorted((e, int(order[g])) for g, (_, e) in best.items())
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    est_idx, gt_idx = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    return gt_idx, est_idx

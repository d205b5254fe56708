"""Metrics of a replay through the live node, from what was sent and what came back (pure, no ROS).

Inputs (stamps in ns, all in the bag's original time base):
- ground truth: ``gt_stamps_ns`` (N,), ``gt_poses`` (N, 4, 4) ``T_world_cam``;
- ``sent_stamps_ns``: the image stamps the player published;
- ``poses``: accepted poses received on ``~/pose``: dicts with ``stamp_ns``, ``T`` (4, 4) and ``covariance``
  (6, 6 in the convention of docs/architecture.md, or None), optionally ``receive_latency_ms``;
- ``statuses``: ``~/status`` messages: dicts with ``stamp_ns``, ``accepted``, ``reason``,
  ``latency_since_stamp_ms`` and the node's ``frames_dropped`` counter.

Every sent frame with ground truth is one query: its error is that of the accepted pose with its stamp, or inf when
none came back (so recalls and medians are comparable with ``reloc-eval``).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..gating import FALSE_ACCEPT_DEG, FALSE_ACCEPT_M
from ..metrics import pose_error, summarize_errors
from .consistency import nees_inside_fraction, pose_error_vector
from .matching import match_by_stamp
from .report import latency_stats

__all__ = ["replay_metrics", "FALSE_ACCEPT_M", "FALSE_ACCEPT_DEG"]



def replay_metrics(gt_stamps_ns, gt_poses, sent_stamps_ns, poses: list[dict], statuses: list[dict],
                   tol_ns: int = 1_000_000) -> dict:
    """Accuracy, availability, false accepts, latency, dropped frames and NEES of one replay (see module doc).

    Returns the reloc-eval keys plus ``availability`` (share of sent frames with an accepted pose),
    ``false_accept_rate`` (share of accepted poses worse than 25 cm or 10°, ``gating.is_false_accept``), ``false_accepts``,
    ``dropped_frames`` (sent frames the node skipped: no status at all, or status ``stale_frame`` because a newer
    frame replaced it before the worker took it), ``node_frames_dropped`` (its counter),
    ``nees_inside_95`` (6 dof) and ``nees_position_inside_95`` (3 dof), ``reasons`` (status reason counts), and
    ``per_frame`` (stamp, errors, accepted) and the arrays needed by the plots under ``_arrays``.
    """
    gt_stamps = np.asarray(gt_stamps_ns, dtype=np.int64)
    gt_poses = np.asarray(gt_poses, dtype=np.float64).reshape(-1, 4, 4)
    sent = np.asarray(sorted(set(int(s) for s in sent_stamps_ns)), dtype=np.int64)
    g_idx, s_idx = match_by_stamp(gt_stamps, sent, tol_ns)
    query_stamps = sent[s_idx]
    query_gt = gt_poses[g_idx]
    n_unmatched_sent = int(sent.size - s_idx.size)

    # accepted poses -> the query they belong to
    p_stamps = np.array([int(p["stamp_ns"]) for p in poses], dtype=np.int64)
    q_idx, p_idx = match_by_stamp(query_stamps, p_stamps, tol_ns)
    est_for_query = {int(q): poses[int(p)] for q, p in zip(q_idx, p_idx)}

    t_errs = np.full(query_stamps.size, np.inf)
    r_errs = np.full(query_stamps.size, np.inf)
    err_vecs, covs = [], []
    for q, p in est_for_query.items():
        T = np.asarray(p["T"], dtype=np.float64)
        t_errs[q], r_errs[q] = pose_error(T, query_gt[q])
        cov = p.get("covariance")
        if cov is not None and np.any(np.asarray(cov) != 0):
            err_vecs.append(pose_error_vector(T, query_gt[q]))
            covs.append(np.asarray(cov, dtype=np.float64).reshape(6, 6))
    accepted = np.isfinite(t_errs)
    n_acc = int(accepted.sum())
    false_acc = int(np.sum(accepted & ((t_errs > FALSE_ACCEPT_M) | (r_errs > FALSE_ACCEPT_DEG))))

    st_stamps = np.array([int(s["stamp_ns"]) for s in statuses], dtype=np.int64)
    qs_idx, _ = match_by_stamp(query_stamps, st_stamps, tol_ns)
    sent_with_status = match_by_stamp(sent, st_stamps, tol_ns)[0]
    latencies = [s.get("latency_since_stamp_ms") for s in statuses if s.get("accepted", False)]
    if not any(v is not None and np.isfinite(v) and v > 0 for v in latencies):
        latencies = [p.get("receive_latency_ms") for p in poses]

    out = summarize_errors(t_errs, r_errs)
    out.update(latency_stats(latencies))
    out.update(latency_stats([s.get("latency_since_stamp_ms") for s in statuses], "latency_all_frames_ms"))
    out.update(latency_stats([s.get("latency_total_ms") for s in statuses if s.get("accepted", False)],
                             "latency_processing_ms"))
    out["n_sent"] = int(sent.size)
    out["n_sent_without_gt"] = n_unmatched_sent
    out["n_status"] = int(len(statuses))
    out["n_accepted"] = n_acc
    out["availability"] = float(n_acc / query_stamps.size) if query_stamps.size else float("nan")
    out["false_accepts"] = false_acc
    out["false_accept_rate"] = float(false_acc / n_acc) if n_acc else float("nan")
    stale = {int(s["stamp_ns"]) for s in statuses if s.get("reason") == "stale_frame"}
    out["dropped_frames"] = int(sent.size - np.unique(sent_with_status).size) + sum(int(x) in stale for x in sent)
    counters = [int(s.get("frames_dropped", 0) or 0) for s in statuses]
    out["node_frames_dropped"] = max(counters) if counters else 0
    out["queries_with_status"] = int(np.unique(qs_idx).size)
    out["nees_inside_95"] = nees_inside_fraction(err_vecs, covs) if covs else float("nan")
    out["nees_position_inside_95"] = nees_inside_fraction(err_vecs, covs, position_only=True) if covs else float("nan")
    out["reasons"] = dict(Counter(str(s.get("reason", "")) for s in statuses))
    out["per_frame"] = [{"stamp_ns": int(s), "t_err_m": float(t), "r_err_deg": float(r), "accepted": bool(a)}
                        for s, t, r, a in zip(query_stamps, t_errs, r_errs, accepted)]
    est_q = sorted(est_for_query)
    out["_arrays"] = {
        "gt_stamps_ns": query_stamps, "gt_poses": query_gt,
        "est_stamps_ns": query_stamps[est_q] if est_q else np.zeros(0, dtype=np.int64),
        "est_poses": np.array([est_for_query[q]["T"] for q in est_q], dtype=np.float64).reshape(-1, 4, 4),
        "t_err_m": t_errs, "r_err_deg": r_errs,
        "latency_ms": np.array([v for v in latencies if v is not None], dtype=np.float64),
    }
    return out

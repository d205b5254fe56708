"""A small time-indexed transform buffer over /tf and /tf_static (tf2_ros is not available from the wheels).

``TfBuffer`` is pure Python (numpy + the rotation helpers of ``reloc_ros.geometry.pose``): a tree of frames where
each child has one parent, every edge holding ``T_parent_child`` samples sorted by stamp (int nanoseconds).
``lookup(target, source, stamp_ns)`` returns ``T_target_source`` (4×4, maps points from ``source`` into ``target``)
composed along the tree path through the closest common ancestor, each dynamic edge interpolated at ``stamp_ns``
between the two samples bracketing it: linear translation, slerp of the rotation ``R0·Exp(a·Log(R0ᵀR1))`` (the
shortest geodesic). Static edges hold one sample valid at every time.

Errors are ``TfError`` subclasses that name the frames and times: ``UnknownFrameError``, ``ConnectivityError``,
``ExtrapolationError`` (``.future`` tells whether the buffer may still catch up). ``lookup(..., timeout_s)``
waits for data newer than the stamp (thread-safe). Offline readers (the rosbag2 dataset) pass ``max_gap_ns`` /
``tolerance_ns``: samples further apart than the gap are not interpolated, and the nearest sample within the
tolerance answers instead. ``ros/tf_buffer.py``'s ``TfListener`` fills it from a node's /tf, /tf_static (the only
rclpy-dependent part).
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .geometry.pose import R_from_quat_xyzw, make_T, project_to_so3, so3_exp, so3_log

__all__ = ["TfBuffer", "TfError", "UnknownFrameError", "ConnectivityError", "ExtrapolationError", "LATEST"]

LATEST = None  # lookup stamp meaning "the latest time at which the whole chain is available"


class TfError(LookupError):
    """A transform lookup that cannot be answered."""


class UnknownFrameError(TfError):
    """A frame that no transform mentions."""


class ConnectivityError(TfError):
    """Both frames are known but not connected in the tree."""


class ExtrapolationError(TfError):
    """The stamp is outside the buffered time range of an edge; ``future`` is True when it is newer than the
    newest sample (so waiting may help)."""

    def __init__(self, msg: str, future: bool):
        super().__init__(msg)
        self.future = future


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list = field(default_factory=list)   # int ns, sorted
    trans: list = field(default_factory=list)    # (3,) arrays
    rots: list = field(default_factory=list)     # (3, 3) rotation matrices


class TfBuffer:
    """Time-indexed transform tree. ``cache_time_s``: dynamic samples older than the newest one on the same edge by
    more than this are dropped. Thread-safe."""

    def __init__(self, cache_time_s: float = 10.0):
        self.cache_ns = int(cache_time_s * 1e9)
        self._edges: dict[str, _Edge] = {}  # child -> edge
        self._cond = threading.Condition()

    # ---- insertion ----------------------------------------------------------------------------------------------
    def set_transform(self, parent: str, child: str, stamp_ns: int, T_parent_child: np.ndarray | None = None, *,
                      translation=None, quat_xyzw=None, static: bool = False) -> None:
        """Add one sample of ``T_parent_child`` (a 4×4, or ``translation`` (m) + ``quat_xyzw``) at ``stamp_ns``.

        Raises ValueError on empty/equal frame names or a non-finite / zero-norm transform. A child that gets a new
        parent is re-parented (its old samples are dropped), as tf2 does.
        """
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child:
            raise ValueError(f"transform with an empty frame name (parent={parent!r}, child={child!r})")
        if parent == child:
            raise ValueError(f"transform from frame {child!r} to itself")
        if T_parent_child is not None:
            T = np.asarray(T_parent_child, dtype=np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise ValueError(f"transform {parent}->{child}: not a finite 4x4 matrix")
            t, R = T[:3, 3].copy(), project_to_so3(T[:3, :3])
        else:
            t = np.asarray(translation, dtype=np.float64).reshape(3)
            q = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
            n = np.linalg.norm(q)
            if not (np.all(np.isfinite(t)) and np.isfinite(n)) or n < 1e-9:
                raise ValueError(f"transform {parent}->{child}: NaN/inf translation or zero-norm quaternion")
            R = R_from_quat_xyzw(q)
        stamp_ns = int(stamp_ns)
        with self._cond:
            e = self._edges.get(child)
            if e is None or e.parent != parent or e.static != static:
                e = self._edges[child] = _Edge(parent, static)
            if static:
                e.stamps, e.trans, e.rots = [stamp_ns], [t], [R]
            else:
                i = bisect.bisect_left(e.stamps, stamp_ns)
                if i < len(e.stamps) and e.stamps[i] == stamp_ns:
                    e.trans[i], e.rots[i] = t, R
                else:
                    e.stamps.insert(i, stamp_ns)
                    e.trans.insert(i, t)
                    e.rots.insert(i, R)
                cut = bisect.bisect_left(e.stamps, e.stamps[-1] - self.cache_ns)
                if cut > 0:
                    del e.stamps[:cut], e.trans[:cut], e.rots[:cut]
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._edges.clear()

    # ---- queries ------------------------------------------------------------------------------------------------
    def frames(self) -> set[str]:
        with self._cond:
            return set(self._edges) | {e.parent for e in self._edges.values()}

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        seen = {frame}
        while path[-1] in self._edges:
            p = self._edges[path[-1]].parent
            if p in seen:
                raise ConnectivityError(f"TF loop through frame {p!r}")
            path.append(p)
            seen.add(p)
        return path

    def _chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Frames from ``source`` up to the common ancestor, and from ``target`` up to it."""
        known = set(self._edges) | {e.parent for e in self._edges.values()}
        for f in (target, source):
            if f not in known:
                raise UnknownFrameError(f"frame {f!r} does not exist in the TF tree "
                                        f"(known: {sorted(known) if len(known) < 20 else len(known)})")
        up_s, up_t = self._path_to_root(source), self._path_to_root(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            raise ConnectivityError(f"frames {target!r} and {source!r} are not connected "
                                    f"(roots {up_t[-1]!r} and {up_s[-1]!r})")
        return up_s[:up_s.index(common)], up_t[:up_t.index(common)]

    def _edge_at(self, child: str, stamp_ns: int, gap: tuple | None = None) -> np.ndarray:
        """The edge's ``T_parent_child`` at ``stamp_ns``; ``gap`` = (max_gap_ns, tolerance_ns): no interpolation
        across samples further apart than max_gap_ns, then the nearest sample within tolerance_ns."""
        e = self._edges[child]
        if e.static:
            return make_T(e.rots[0], e.trans[0])
        s = e.stamps
        i = bisect.bisect_left(s, stamp_ns)
        if i < len(s) and s[i] == stamp_ns:
            return make_T(e.rots[i], e.trans[i])
        inside = 0 < i < len(s)
        if gap is not None and not (inside and s[i] - s[i - 1] <= gap[0]):
            j = min((k for k in (i - 1, i) if 0 <= k < len(s)), key=lambda k: abs(s[k] - stamp_ns))
            if abs(s[j] - stamp_ns) <= gap[1]:
                return make_T(e.rots[j], e.trans[j])
            raise ExtrapolationError(f"lookup of {e.parent}->{child} at {stamp_ns * 1e-9:.6f} s: no sample within "
                                     f"{gap[1] * 1e-9:g} s and none bracketing it within {gap[0] * 1e-9:g} s",
                                     stamp_ns > s[-1])
        if not inside:
            fut = stamp_ns > s[-1]
            raise ExtrapolationError(
                f"lookup of {e.parent}->{child} at {stamp_ns * 1e-9:.6f} s would require extrapolation into the "
                f"{'future' if fut else 'past'}: buffered range [{s[0] * 1e-9:.6f}, {s[-1] * 1e-9:.6f}] s", fut)
        t0, t1 = s[i - 1], s[i]
        a = (stamp_ns - t0) / (t1 - t0)
        R0, R1 = e.rots[i - 1], e.rots[i]
        return make_T(R0 @ so3_exp(a * so3_log(R0.T @ R1)), (1 - a) * e.trans[i - 1] + a * e.trans[i])

    def _latest_common(self, edges: list[str]) -> int | None:
        dyn = [self._edges[c].stamps[-1] for c in edges if not self._edges[c].static]
        return min(dyn) if dyn else None

    def _lookup_locked(self, target: str, source: str, stamp_ns: int | None, gap=None) -> np.ndarray:
        up_s, up_t = self._chain(target, source)
        if stamp_ns is None:
            stamp_ns = self._latest_common(up_s + up_t) or 0
        T_anc_source = np.eye(4)
        for c in reversed(up_s):  # ancestor ... -> source
            T_anc_source = T_anc_source @ self._edge_at(c, stamp_ns, gap)
        T_anc_target = np.eye(4)
        for c in reversed(up_t):
            T_anc_target = T_anc_target @ self._edge_at(c, stamp_ns, gap)
        return np.linalg.solve(T_anc_target, T_anc_source)

    def lookup(self, target: str, source: str, stamp_ns: int | None = LATEST, timeout_s: float = 0.0,
               max_gap_ns: int | None = None, tolerance_ns: int = 0) -> np.ndarray:
        """``T_target_source`` (4×4) at ``stamp_ns`` (None = latest common time). Waits up to ``timeout_s`` for
        unknown frames or for data newer than the stamp; raises a ``TfError`` subclass otherwise. ``max_gap_ns``
        (offline use): interpolate only between samples at most this far apart, else take the nearest sample
        within ``tolerance_ns``."""
        gap = None if max_gap_ns is None else (int(max_gap_ns), int(tolerance_ns))
        target, source = target.lstrip("/"), source.lstrip("/")
        if not target or not source:
            raise UnknownFrameError(f"empty frame name in lookup (target={target!r}, source={source!r})")
        if target == source:
            return np.eye(4)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                try:
                    return self._lookup_locked(target, source, stamp_ns, gap)
                except (UnknownFrameError, ConnectivityError, ExtrapolationError) as err:
                    retry = not isinstance(err, ExtrapolationError) or err.future
                    left = deadline - time.monotonic()
                    if not retry or left <= 0:
                        raise
                    self._cond.wait(left)

    def connected(self, target: str, source: str) -> bool:
        """Whether both frames are in the tree and share an ancestor (at some time)."""
        try:
            with self._cond:
                self._chain(target.lstrip("/"), source.lstrip("/"))
            return True
        except TfError:
            return False

    def can_transform(self, target: str, source: str, stamp_ns: int | None = LATEST) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
            return True
        except TfError:
            return False

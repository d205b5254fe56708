"""The one way options are merged over their defaults (pixlib-style strict confs: every key must be known)."""
from __future__ import annotations

import difflib
from collections.abc import Mapping

__all__ = ["merge_conf"]


def merge_conf(defaults: Mapping, overrides: Mapping | None, what: str) -> dict:
    """``defaults`` with ``overrides`` on top, as a new dict (values are not merged recursively). ValueError naming
    ``what`` (e.g. "refiner"), the unknown keys, the closest known key of each and every known key."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        close = {k: difflib.get_close_matches(k, list(defaults), n=1, cutoff=0.6) for k in unknown}
        hints = [f"{k!r} -> {c[0]!r}" for k, c in close.items() if c]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(f"unknown {what} option(s) {unknown}{hint}; known: {sorted(defaults)}")
    return {**defaults, **overrides}

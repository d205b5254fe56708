"""Training budgeted by work: a front end's schedule is a number of iterations; ``minutes`` is only a cap.

Before the schedule starts, a trainer times a few iterations (``plan_training``). When the cap buys fewer iterations
than the schedule, the schedule is shortened to what it buys, so that the run still warms up and anneals, and one
warning line says so with the expected accuracy cost (``expected_recall``, from measured iteration / accuracy points
of the front end). The map's metadata records ``iterations_scheduled`` / ``iterations_planned`` / ``iterations``
(done); ``undertrained_warning`` is what ``reloc-eval``, the demo and the node print for a map trained on less than
half its schedule.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

__all__ = ["TrainingPlan", "PlanTimer", "check_minutes", "plan_training", "plan_message", "schedule_progress",
           "expected_recall", "undertrained_warning", "WARMUP_ITERATIONS"]

UNDERTRAINED_FRACTION = 0.5   # a map trained on less than this share of its schedule gets a warning
WARMUP_ITERATIONS = 50        # iterations before a run that fell behind its cap lets the clock drive the schedule


def check_minutes(minutes, name: str = "minutes") -> float | None:
    """``minutes`` as a float (None: no cap); a ValueError naming ``name`` unless finite and > 0."""
    if minutes is None:
        return None
    try:
        m = float(minutes)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of minutes > 0, got {minutes!r}") from None
    if not math.isfinite(m) or m <= 0:
        raise ValueError(f"{name} must be finite and > 0 (minutes), got {minutes!r}")
    return m


@dataclass(frozen=True)
class TrainingPlan:
    """``scheduled``: the schedule's iterations; ``planned``: what this run trains (``< scheduled`` only when the
    time cap buys less); ``s_per_iteration`` measured before planning; ``cap_s``: training seconds the cap leaves
    (None: no cap); ``eta_s``: ``planned × s_per_iteration``."""

    scheduled: int
    planned: int
    s_per_iteration: float
    cap_s: float | None
    eta_s: float

    @property
    def shortened(self) -> bool:
        return self.planned < self.scheduled

    def as_dict(self) -> dict:
        return {**asdict(self), "shortened": self.shortened}


def plan_training(scheduled: int, s_per_iteration: float, cap_s: float | None, done: int = 0,
                  min_iterations: int = 100, safety: float = 0.97) -> TrainingPlan:
    """The iterations to train: the schedule, or what ``cap_s`` seconds buy (``safety`` share of them, at least
    ``min_iterations``) when that is fewer. ``done``: iterations already trained (counted in, their time is not in
    ``cap_s``)."""
    scheduled = int(scheduled)
    planned = scheduled
    if cap_s is not None and s_per_iteration > 0:
        affordable = done + int(max(cap_s, 0.0) * safety / s_per_iteration)
        planned = max(min(scheduled, affordable), min(scheduled, int(min_iterations)))
    return TrainingPlan(scheduled, planned, float(s_per_iteration), cap_s,
                        max(planned - done, 0) * float(s_per_iteration))


class PlanTimer:
    """Times ``n_timed`` steps of a run (after 2 warm-up steps from ``start``), then plans it within its cap:
    ``tick(step, cap_left_s)`` once per step returns the ``TrainingPlan`` at the step the timing completes, else
    None (``plan`` keeps it)."""

    WARMUP_STEPS = 2

    def __init__(self, scheduled: int, start: int, n_timed: int):
        self.scheduled, self.n_timed = int(scheduled), int(n_timed)
        self.first = int(start) + self.WARMUP_STEPS
        self.t_first: float | None = None
        self.plan: TrainingPlan | None = None

    def tick(self, step: int, cap_left_s: float | None) -> TrainingPlan | None:
        if self.plan is not None:
            return None
        if step == self.first:
            self.t_first = time.perf_counter()
        elif step == self.first + self.n_timed and self.t_first is not None:
            s_per_step = (time.perf_counter() - self.t_first) / self.n_timed
            self.plan = plan_training(self.scheduled, s_per_step, cap_left_s, done=step)
            return self.plan
        return None


def plan_message(plan: TrainingPlan, who: str, unit: str, precision: str, minutes: float | None,
                 cost: str = "expect lower accuracy", cap_option: str = "--minutes ") -> str:
    """The ETA line of a plan, or, when the cap shortened it, the one warning line with ``cost`` and the cap that
    would train the whole schedule. ``unit``: "iteration" / "step"."""
    rate = f"{plan.s_per_iteration * 1e3:.0f} ms/{unit[:2] if unit == 'iteration' else unit} ({precision})"
    if not plan.shortened:
        return f"{who} training {plan.planned} {unit}s at {rate}: ETA {plan.eta_s / 60:.1f} min"
    need = math.ceil(minutes * plan.scheduled / max(plan.planned, 1))
    return (f"{who} WARNING: the {minutes:g}-min cap buys {plan.planned} of the {plan.scheduled} scheduled {unit}s "
            f"at {rate}; the schedule is shortened to {plan.planned}: {cost} (about {cap_option}{need} trains the "
            "full schedule)")


def schedule_progress(iteration: int, planned: int, elapsed_s: float, budget_s: float | None) -> float:
    """Schedule progress in [0, 1] : ``iteration / planned``, unless the run falls behind
    its time cap ``budget_s`` (None: no cap). A pause of the process early in a run (a loaded machine) does not
    change the schedule, which is what keeps it reproducible."""
    p_it = iteration / int(planned)
    if budget_s is None:
        return p_it
    p_time = elapsed_s / budget_s
    if p_time >= 1.0 or (iteration >= WARMUP_ITERATIONS and p_time > p_it):
        return max(p_time, p_it)
    return p_it


def expected_recall(iterations: int, measured: list[tuple[int, float]]) -> float | None:
    """Accuracy expected after ``iterations``, linear in log(iterations) between ``measured`` (iterations, value)
    points; the last point's value beyond it (more training is not worse); None below the first point."""
    pts = sorted(measured)
    if not pts or iterations < pts[0][0]:
        return None
    if iterations >= pts[-1][0]:
        return pts[-1][1]
    for (i0, v0), (i1, v1) in zip(pts, pts[1:]):
        if i0 <= iterations <= i1:
            f = (math.log(iterations) - math.log(i0)) / max(math.log(i1) - math.log(i0), 1e-12)
            return v0 + f * (v1 - v0)
    return pts[-1][1]


def undertrained_warning(metadata: dict) -> str | None:
    """A one-line warning when the map's training did less than ``UNDERTRAINED_FRACTION`` of its schedule, else
    None (also for maps that predate these fields)."""
    tr = metadata.get("training") or {}
    done, scheduled = tr.get("iterations"), tr.get("iterations_scheduled")
    if not isinstance(done, (int, float)) or not isinstance(scheduled, (int, float)) or scheduled <= 0:
        return None
    if done >= UNDERTRAINED_FRACTION * scheduled:
        return None
    return (f"this {metadata.get('front_end', '')} map was trained for {int(done)} of its {int(scheduled)} "
            f"scheduled iterations ({100 * done / scheduled:.0f} %; precision {tr.get('precision', '?')}): expect "
            "lower accuracy; map again with a larger --minutes cap (or on a faster machine)")

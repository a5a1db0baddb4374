"""Fixed schedules that every search is compared with (FORA: Selvaraju et al. 2024, arXiv 2407.01425).

FORA computes the transformer in full every ``interval`` steps and reuses cached features in between. The
best FORA schedule within a budget is the one with the most full steps whose counted FLOPs still fit.
"""

from __future__ import annotations

from collections.abc import Callable

from procache_opt.costs import StepCosts
from procache_opt.schedule import Action, Schedule

__all__ = ["fora", "best_fora_within", "shortest_interval_within"]


def fora(num_steps: int, interval: int, selective: bool = False, forecast_order: int = 0,
         injected: Action = Action.SELECTIVE, depth_split: float = 0.5) -> Schedule:
    """FORA's uniform schedule: FULL at steps 0, interval, 2*interval, ... (optionally with Eq. 7 injection).

    FORA itself reuses outputs as cached (``forecast_order=0``); order 1 is the same steps with TaylorSeer's
    first-order forecast. ``selective`` injects ``injected`` (SELECTIVE, or DEEP for per-depth spaces) at
    the Eq. 7 positions.
    """
    if interval < 1:
        raise ValueError(f"FORA interval must be >= 1, got {interval}")
    schedule = Schedule.from_pattern([1 if t % interval == 0 else 0 for t in range(num_steps)],
                                     forecast_order=forecast_order, depth_split=depth_split)
    return schedule.inject_selective(injected) if selective else schedule


def shortest_interval_within(make: Callable[[int], Schedule], costs: StepCosts, budget: float) -> Schedule:
    """``make(interval)`` for the shortest interval whose counted FLOPs ratio is at most ``budget``.

    The one search over uniform intervals that FORA, FORA with selective computation and the ToCa-style
    baseline all use; ``ValueError`` (naming the cheapest ratio) if even one FULL step is over the budget.
    """
    for interval in range(1, costs.num_steps + 1):
        schedule = make(interval)
        if costs.ratio(schedule) <= budget:
            return schedule
    raise ValueError(f"no uniform schedule fits a FLOPs budget of {budget:.3f}; the cheapest (one full step) costs "
                     f"{costs.ratio(make(costs.num_steps)):.3f}")


def best_fora_within(costs: StepCosts, budget: float, selective: bool = False, forecast_order: int = 0,
                     injected: Action = Action.SELECTIVE, depth_split: float = 0.5) -> Schedule:
    """The FORA schedule with the shortest interval whose counted FLOPs ratio is at most ``budget``."""
    return shortest_interval_within(
        lambda interval: fora(costs.num_steps, interval, selective, forecast_order, injected, depth_split), costs,
        budget)

"""Fixed schedules that every search is compared with (FORA: Selvaraju et al. 2024, arXiv 2407.01425).

FORA computes the transformer in full every ``interval`` steps and reuses cached features in between. The
best FORA schedule within a budget is the one with the most full steps whose counted FLOPs still fit.
"""

from __future__ import annotations

from procache_opt.costs import StepCosts
from procache_opt.schedule import Action, Schedule

__all__ = ["fora", "best_fora_within"]


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


def best_fora_within(costs: StepCosts, budget: float, selective: bool = False, forecast_order: int = 0,
                     injected: Action = Action.SELECTIVE, depth_split: float = 0.5) -> Schedule:
    """The FORA schedule with the shortest interval whose counted FLOPs ratio is at most ``budget``."""
    for interval in range(1, costs.num_steps + 1):
        schedule = fora(costs.num_steps, interval, selective, forecast_order, injected, depth_split)
        if costs.ratio(schedule) <= budget:
            return schedule
    smallest = costs.ratio(fora(costs.num_steps, costs.num_steps, selective, 0, injected, depth_split))
    raise ValueError(
        f"no FORA schedule fits a FLOPs budget of {budget:.3f}; the cheapest (one full step) costs {smallest:.3f}"
    )

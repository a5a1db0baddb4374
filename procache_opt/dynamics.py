"""Measure where a model tolerates reuse, and choose the direction of the interval constraint from it.

ProCache's Eq. 3 (reuse intervals never grow as denoising proceeds) is a prior: features change slowly
early and fast late, so reuse early. But an error made early also propagates through every later step. On
the small DiT trained for this project the prior was wrong: the same intervals reversed were better. So
instead of assuming, probe: for a few steps ``t``, run the pipeline with the full schedule except a single
REUSE at ``t`` and measure how far the final latents move from the full computation. That one number folds
together how fast features change at ``t`` and how much an error at ``t`` grows by the end.

* Reuse hurts more early than late -> reuse late: intervals should *increase* (``monotone="increasing"``).
* Reuse hurts more late than early -> ProCache's prior holds (``monotone="decreasing"``).
* Neither clearly -> no order constraint (``monotone=None``, which also admits U-shapes).

How reused outputs are formed is measured the same way: :func:`choose_forecast_order` runs the FORA start point
with outputs reused as cached and forecast to first order (TaylorSeer), and keeps the better. On ``dit-digits``
(16 held-out samples, 50 steps) forecasting cut FORA's final-latent error 4.6-6x: interval 2 0.0292 -> 0.0046,
interval 3 0.0584 -> 0.0126, interval 4 0.0838 -> 0.0181 (``benchmarks/results/search_quality.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from procache_opt.schedule import FORECAST_ORDERS, Schedule

__all__ = ["DynamicsReport", "ForecastChoice", "choose_direction", "choose_forecast_order", "probe_reuse_sensitivity"]

Direction = Literal["decreasing", "increasing"] | None

#: How much larger one half's mean error must be before a direction is chosen.
DIRECTION_MARGIN = 1.25


@dataclass(frozen=True)
class DynamicsReport:
    """What the probe measured and what it chose.

    Attributes:
        probe_steps: Steps (denoising order, 0 = noisiest) that were reused one at a time.
        reuse_error: Final-latent error of each single-REUSE run against the full computation.
        direction: The chosen ``monotone`` setting for the schedule space.
        early_late_ratio: Mean error of the earlier half of the probes over that of the later half.
    """

    probe_steps: tuple[int, ...]
    reuse_error: tuple[float, ...]
    direction: Direction
    early_late_ratio: float

    def summary(self) -> str:
        pairs = ", ".join(f"{t}:{e:.3g}" for t, e in zip(self.probe_steps, self.reuse_error, strict=True))
        return (
            f"single-step reuse error by step [{pairs}]; early/late ratio {self.early_late_ratio:.2f} -> "
            f"monotone={self.direction!r}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe_steps": list(self.probe_steps),
            "reuse_error": list(self.reuse_error),
            "direction": self.direction,
            "early_late_ratio": self.early_late_ratio if math.isfinite(self.early_late_ratio) else None,
        }


def choose_direction(errors: tuple[float, ...]) -> tuple[Direction, float]:
    """Compare the mean error of the earlier and later half of the probes (see the module docstring)."""
    half = len(errors) // 2
    early, late = float(np.mean(errors[:half])), float(np.mean(errors[len(errors) - half:]))
    ratio = early / late if late > 0 else float("inf")
    if ratio >= DIRECTION_MARGIN:
        return "increasing", ratio
    if ratio <= 1 / DIRECTION_MARGIN:
        return "decreasing", ratio
    return None, ratio


def probe_reuse_sensitivity(
    error_of: Callable[[Schedule], float], num_steps: int, num_probes: int = 8
) -> DynamicsReport:
    """Run ``num_probes`` single-REUSE schedules, evenly spread over steps 1..num_steps-1, and choose.

    Args:
        error_of: Final-latent error of a schedule against full computation (one pipeline run).
        num_steps: Denoising steps.
        num_probes: Pipeline runs to spend (at least 2).
    """
    if num_steps < 3:
        raise ValueError(f"probing needs at least 3 denoising steps, got {num_steps}")
    num_probes = max(2, min(num_probes, num_steps - 1))
    steps = tuple(sorted({int(round(x)) for x in np.linspace(1, num_steps - 1, num_probes)}))
    errors = []
    for t in steps:
        pattern = [1] * num_steps
        pattern[t] = 0
        errors.append(float(error_of(Schedule.from_pattern(pattern))))
    direction, ratio = choose_direction(tuple(errors))
    return DynamicsReport(steps, tuple(errors), direction, ratio)


_ORDER_NAMES = {0: "reused as cached", 1: "first-order forecast"}


@dataclass(frozen=True)
class ForecastChoice:
    """The loss of one schedule under each forecast order, and the order chosen (the lowest loss).

    Attributes:
        pattern: The schedule that was run (the search's FORA start point).
        losses: Loss by ``forecast_order``; a failed or non-finite run counts as ``inf``.
        order: The chosen ``forecast_order``; ties go to the lower order (less work per step).
    """

    pattern: str
    losses: dict[int, float]
    order: int

    def summary(self) -> str:
        parts = ", ".join(f"{_ORDER_NAMES.get(k, k)} {v:.4g}" for k, v in self.losses.items())
        return f"loss of {self.pattern}: {parts} -> forecast_order={self.order}"

    def to_dict(self) -> dict[str, Any]:
        """JSON: a diverged run's infinite loss is ``None`` (infinity is not JSON)."""
        losses = {str(k): v if math.isfinite(v) else None for k, v in self.losses.items()}
        return {"pattern": self.pattern, "losses": losses, "order": self.order}


def choose_forecast_order(loss_of: Callable[[Schedule], float], schedule: Schedule,
                          orders: tuple[int, ...] = FORECAST_ORDERS) -> ForecastChoice:
    """Run ``schedule`` once per forecast order and keep the order with the lowest loss (one run each)."""
    losses = {}
    for order in orders:
        loss = float(loss_of(replace(schedule, forecast_order=order)))
        losses[order] = loss if math.isfinite(loss) else math.inf
    best = min(losses, key=lambda k: (losses[k], k))
    return ForecastChoice(str(schedule), losses, best)

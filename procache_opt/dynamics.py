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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from procache_opt.schedule import Schedule

__all__ = ["DynamicsReport", "probe_reuse_sensitivity", "choose_direction"]

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
            "early_late_ratio": self.early_late_ratio,
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

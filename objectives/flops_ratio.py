"""``flops_ratio``: counted FLOPs relative to full computation, for multi-objective searches.

The count is analytic (``procache_opt.flops``) and identical for every sample, so the score holds one
value. Pair it with a quality objective to trace a quality/cost Pareto front.
"""

from __future__ import annotations

import math

from procache_opt.objective import Objective, RunOutputs, Score

__all__ = ["FlopsRatio"]


class FlopsRatio(Objective):
    """``RunOutputs.flops_ratio``: the schedule's counted FLOPs over full computation's (1 = no saving)."""

    name = "flops_ratio"
    direction = "minimize"
    needs: frozenset[str] = frozenset()

    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        if not math.isfinite(run.flops_ratio) or run.flops_ratio <= 0:
            raise ValueError(f"flops_ratio needs a positive counted FLOPs ratio, got {run.flops_ratio}")
        return Score.of([run.flops_ratio])

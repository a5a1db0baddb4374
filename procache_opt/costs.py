"""Per-step costs of each action: the bridge between FLOPs counting (torch side) and search (pure Python).

``procache_opt.flops.step_costs`` fills a :class:`StepCosts` from a model's config; the schedule space and
the strategies only ever see these numbers, never the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from procache_opt.schedule import Action, Schedule

__all__ = ["StepCosts"]


@dataclass(frozen=True)
class StepCosts:
    """Multiply-accumulates (MACs) of one whole denoising step for each action, indexed by step.

    Attributes:
        full: MACs of a FULL step at each step index.
        reuse: MACs of a REUSE step (modulation, embeddings, final layer: no attention, no feed-forward).
        selective: MACs of a SELECTIVE step (REUSE plus the deep blocks' token subset and scoring).
    """

    full: tuple[float, ...]
    reuse: tuple[float, ...]
    selective: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.full) == len(self.reuse) == len(self.selective)) or not self.full:
            raise ValueError("StepCosts needs one non-empty cost per step for every action")

    @property
    def num_steps(self) -> int:
        return len(self.full)

    def of(self, action: Action | int, step: int) -> float:
        action = Action(int(action))
        table = {Action.FULL: self.full, Action.REUSE: self.reuse, Action.SELECTIVE: self.selective}[action]
        return table[step]

    def total(self, pattern: Schedule | Sequence[int]) -> float:
        """MACs of a whole generation that follows ``pattern``."""
        pattern = pattern.pattern if isinstance(pattern, Schedule) else tuple(pattern)
        if len(pattern) != self.num_steps:
            raise ValueError(f"pattern has {len(pattern)} steps, costs are for {self.num_steps}")
        return sum(self.of(a, t) for t, a in enumerate(pattern))

    @property
    def full_total(self) -> float:
        return sum(self.full)

    def ratio(self, pattern: Schedule | Sequence[int]) -> float:
        """Counted cost of ``pattern`` as a fraction of computing every step in full."""
        return self.total(pattern) / self.full_total

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
        deep: MACs of a DEEP step (REUSE plus the deep group's blocks in full), for per-depth schedules.
        shallow: MACs of a SHALLOW step (REUSE plus the shallow group's blocks in full).
        depth_split: The ``Schedule.depth_split`` that ``deep`` and ``shallow`` were counted for.
    """

    full: tuple[float, ...]
    reuse: tuple[float, ...]
    selective: tuple[float, ...]
    deep: tuple[float, ...] | None = None
    shallow: tuple[float, ...] | None = None
    depth_split: float | None = None

    def __post_init__(self) -> None:
        tables = [self.full, self.reuse, self.selective] + [t for t in (self.deep, self.shallow) if t is not None]
        if len({len(t) for t in tables}) != 1 or not self.full:
            raise ValueError("StepCosts needs one non-empty cost per step for every action")

    @property
    def num_steps(self) -> int:
        return len(self.full)

    def of(self, action: Action | int, step: int) -> float:
        action = Action(int(action))
        table = {Action.FULL: self.full, Action.REUSE: self.reuse, Action.SELECTIVE: self.selective,
                 Action.DEEP: self.deep, Action.SHALLOW: self.shallow}[action]
        if table is None:
            raise ValueError(f"these costs have no {action.name} entries; count them for per-depth schedules with "
                             "procache_opt.flops.step_costs(model, steps, depth_split=...)")
        return table[step]

    def total(self, pattern: Schedule | Sequence[int]) -> float:
        """MACs of a whole generation that follows ``pattern``."""
        if isinstance(pattern, Schedule) and pattern.per_depth and pattern.depth_split != self.depth_split:
            raise ValueError(f"the schedule splits its blocks at depth_split={pattern.depth_split}, these costs were "
                             f"counted for {self.depth_split}; count them with step_costs(..., "
                             f"depth_split={pattern.depth_split})")
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

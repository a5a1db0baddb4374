"""``random``: uniform random search over the feasible schedules, without repeats.

The unbiased baseline for the learning strategies: every member of the space is equally likely, which
ProCache's own stick-breaking sampler (arXiv 2512.17298, Sec. 3.2; ``CASS.py``) is not.
"""

from __future__ import annotations

from typing import Any

from procache_opt.strategies._common import ProposalHistory

from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.strategy import Strategy

__all__ = ["RandomStrategy"]


class RandomStrategy(Strategy):
    """Proposes members drawn uniformly (exact DP counts), never one twice, until the space is exhausted.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> strategy = RandomStrategy(ScheduleSpace(50, num_full=17, v_min=1, v_max=3), seed=0)
        >>> len(strategy.ask(20)), strategy.is_finished  # the space has 9 members
        (9, True)

    Args:
        space: The feasible schedules.
        seed: Seeds the strategy's generator.
    """

    name = "random"

    def __init__(self, space: ScheduleSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        self._history = ProposalHistory(self.rng)

    def ask(self, n: int = 1) -> list[Schedule]:
        proposals = []
        while len(proposals) < n and not self.is_finished:
            schedule = self._history.draw_unseen(self.space)
            self._history.add(schedule)
            proposals.append(schedule)
        return proposals

    @property
    def is_finished(self) -> bool:
        return len(self._history) >= self.space.count()

    def state_dict(self) -> dict[str, Any]:
        return self._history.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history.load_state_dict(state)

"""``exhaustive``: every member of a small space, in a fixed order.

ProCache's spaces are often tiny (arXiv 2512.17298, Sec. 3.2: the authors' shipped DiT settings admit 9
patterns, their PixArt-alpha settings 1); there, evaluating every member beats sampling K = 5 of them.
"""

from __future__ import annotations

from procache_opt.strategies._common import SequentialProposals, SequentialStrategy

from procache_opt.space import ScheduleSpace

__all__ = ["ExhaustiveStrategy"]


class ExhaustiveStrategy(SequentialStrategy):
    """Proposes every member once, in :meth:`ScheduleSpace.enumerate` order; the seed is not used.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> strategy = ExhaustiveStrategy(ScheduleSpace(50, num_full=17, v_min=1, v_max=3))
        >>> len(strategy.ask(100)), strategy.is_finished
        (9, True)

    Args:
        space: The feasible schedules.
        seed: Accepted for a uniform interface; the order is deterministic.
        max_size: Refuse spaces with more members than this (each member costs one evaluation).

    Raises:
        ValueError: if the space has more than ``max_size`` members.
    """

    name = "exhaustive"

    def __init__(self, space: ScheduleSpace, seed: int = 0, max_size: int = 100_000) -> None:
        super().__init__(space, seed)
        size = space.count()
        if size > max_size:
            raise ValueError(f"the space has {size:,} members, more than max_size={max_size:,} evaluations; "
                             "search it with 'random', 'tpe' or 'evolutionary', tighten it, or raise max_size")
        self._sequence = SequentialProposals(space.enumerate, size)

"""``uniform``: FORA-style fixed reuse intervals, the baseline every search must beat.

FORA (Selvaraju et al., 2024) recomputes every N steps. Here each feasible number of FULL steps gets its
evenly spaced schedule: segment lengths differ by at most one. ProCache (arXiv 2512.17298, Sec. 3.2)
argues that non-uniform schedules do better at the same budget; this strategy is how to check.
"""

from __future__ import annotations

from dataclasses import replace

from procache_opt.strategies._common import SequentialProposals, SequentialStrategy

from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace

__all__ = ["UniformStrategy", "even_intervals"]


def even_intervals(num_steps: int, num_full: int, monotone: str | None) -> tuple[int, ...]:
    """``num_full`` segment lengths that differ by at most one and sum to ``num_steps``.

    The longer segments come first for ``monotone="decreasing"``, last for ``"increasing"``, and spread
    out (FULL steps at ``floor(i * T / num_full)``) for ``None``.
    """
    short, extra = divmod(num_steps, num_full)
    if monotone == "decreasing":
        return (short + 1,) * extra + (short,) * (num_full - extra)
    if monotone == "increasing":
        return (short,) * (num_full - extra) + (short + 1,) * extra
    starts = [i * num_steps // num_full for i in range(num_full)] + [num_steps]
    return tuple(b - a for a, b in zip(starts, starts[1:], strict=False))


class UniformStrategy(SequentialStrategy):
    """Proposes one evenly spaced schedule per feasible ``num_full``, most FULL steps first, then finishes.

    Most FULL steps first is best use of the budget first. Even spacing always satisfies the interval bounds
    and the order (Eqs. 3-4) when that ``num_full`` is feasible; when a FLOPs budget rules it out (selective
    steps cost more late), the member with that ``num_full`` that follows it most closely is proposed
    instead (:meth:`ScheduleSpace.repair`). The seed is not used.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> strategy = UniformStrategy(ScheduleSpace(20, v_min=1, v_max=3))
        >>> [s.intervals for s in strategy.ask(2)]
        [(2, 2, 2, 2, 2, 2, 2, 2, 2, 2), (3, 3, 2, 2, 2, 2, 2, 2, 2)]

    Args:
        space: The feasible schedules.
        seed: Accepted for a uniform interface; the proposals are deterministic.
    """

    name = "uniform"

    def __init__(self, space: ScheduleSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        schedules: dict[Schedule, None] = {}
        for num_full in reversed(space.num_full_values()):
            even = even_intervals(space.num_steps, num_full, space.monotone)
            if space.interval_violations(even):  # only a FLOPs budget can rule it out
                schedules[replace(space, num_full=num_full).repair(even)] = None
            else:
                schedules[space.from_intervals(even)] = None
        self.schedules = list(schedules)
        self._sequence = SequentialProposals(lambda: iter(self.schedules), len(self.schedules))

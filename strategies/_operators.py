"""Selection, crossover and mutation for the evolutionary strategy: each a one-method protocol.

As in Optuna's ``NSGAIISampler`` (which takes ``crossover`` and ``mutation`` objects), the strategy is
composed from these parts instead of being subclassed (style guide item 4). Crossover and mutation keep
children inside the space: crossover repairs its child through the space's feasibility table
(``space.repair``) and mutation moves to one of ``space.neighbors``. Ranking is NSGA-II's
(Deb, Pratap, Agarwal, Meyarivan, "A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II",
IEEE TEVC 2002): non-dominated fronts, then crowding distance; with one objective it is plain ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from procache_opt.schedule import Schedule

if TYPE_CHECKING:
    from collections.abc import Sequence

    from procache_opt.space import ScheduleSpace

__all__ = ["Crossover", "Mutation", "NeighborMutation", "OnePointCrossover", "Selection", "TournamentSelection",
           "crowded_ranking"]

#: Smaller is better, compared lexicographically: ``(front, -crowding distance)``.
Fitness = tuple[float, ...]


class Selection(Protocol):
    def select(self, fitness: Sequence[Fitness], rng: np.random.Generator) -> int:
        """Index of one parent among the population whose fitness is given."""


class Crossover(Protocol):
    def cross(self, a: Schedule, b: Schedule, space: ScheduleSpace, rng: np.random.Generator) -> Schedule:
        """One child of members ``a`` and ``b``, a member of ``space`` (the strategy discards any other)."""


class Mutation(Protocol):
    def mutate(self, schedule: Schedule, space: ScheduleSpace, rng: np.random.Generator) -> Schedule:
        """A member of ``space`` near ``schedule``, or ``schedule`` itself (the strategy discards non-members)."""


@dataclass(frozen=True)
class TournamentSelection:
    """The best of ``size`` distinct members drawn at random (binary tournament by default, as in NSGA-II)."""

    size: int = 2

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"TournamentSelection.size={self.size!r} is out of range; allowed: size >= 1")

    def select(self, fitness: Sequence[Fitness], rng: np.random.Generator) -> int:
        entrants = rng.choice(len(fitness), size=min(self.size, len(fitness)), replace=False)
        return int(min(entrants, key=lambda i: fitness[i]))


@dataclass(frozen=True)
class OnePointCrossover:
    """Steps before a random cut from ``a``, the rest from ``b``, repaired into the space.

    Cutting in time keeps what matters in ProCache: how a parent spaces its FULL steps early in denoising
    and how the other spaces them late. The segment that straddles the cut ends at ``b``'s next FULL step;
    ``space.repair`` then moves each FULL step, greedily in time, to the nearest step from which a member
    continues (a member comes back unchanged).
    """

    def cross(self, a: Schedule, b: Schedule, space: ScheduleSpace, rng: np.random.Generator) -> Schedule:
        cut = int(rng.integers(1, max(space.num_steps, 2)))
        return space.repair(space.intervals(a.pattern[:cut] + b.pattern[cut:]))


@dataclass(frozen=True)
class NeighborMutation:
    """With ``probability``, a uniformly chosen neighbour (``space.neighbors``: shift, split or merge)."""

    probability: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"NeighborMutation.probability={self.probability!r} is out of range; allowed: "
                             "0 <= probability <= 1")

    def mutate(self, schedule: Schedule, space: ScheduleSpace, rng: np.random.Generator) -> Schedule:
        if rng.random() >= self.probability:
            return schedule
        options = space.neighbors(schedule)
        return options[int(rng.integers(len(options)))] if options else schedule


def _fronts(losses: np.ndarray, needed: int) -> np.ndarray:
    """Non-dominated front of each row (0 is the Pareto front) until ``needed`` rows are placed; others inf."""
    if losses.shape[1] == 1:  # one objective: fronts are the distinct values in order
        return np.unique(losses[:, 0], return_inverse=True)[1].astype(float)
    front = np.full(len(losses), np.inf)
    dominates = (losses[:, None] <= losses[None]).all(-1) & (losses[:, None] < losses[None]).any(-1)
    remaining, level = np.ones(len(losses), dtype=bool), 0
    while remaining.any() and (~remaining).sum() < needed:
        current = remaining & ~dominates[remaining].any(0)
        front[current], remaining, level = level, remaining & ~current, level + 1
    return front


def _crowding(losses: np.ndarray) -> np.ndarray:
    """Crowding distance within one front: the normalised side lengths of each point's enclosing cuboid."""
    distance = np.zeros(len(losses))
    for column in losses.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        distance[order[[0, -1]]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance


def crowded_ranking(losses: np.ndarray, size: int) -> tuple[np.ndarray, list[Fitness]]:
    """NSGA-II survival: the ``size`` best rows of ``losses`` (to minimise) and their fitness.

    Rows are ordered by front, then by decreasing crowding distance (Deb et al.'s crowded comparison), which
    is NSGA-II's elitist (mu + lambda) survival applied to every evaluated schedule.
    """
    front = _fronts(losses, size)
    crowding = np.zeros(len(losses))
    for level in np.unique(front[np.isfinite(front)])[:size]:  # the survivors lie in the first ``size`` fronts
        members = np.flatnonzero(front == level)
        crowding[members] = _crowding(losses[members])
    order = np.lexsort((-crowding, front))[:size]
    return order, [(float(front[i]), float(-crowding[i])) for i in order]

"""A steady-state genetic algorithm over ProCache schedules, with NSGA-II ranking for several objectives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from procache_opt.strategies._common import ProposalHistory
from procache_opt.strategies._operators import (
    Crossover,
    Mutation,
    NeighborMutation,
    OnePointCrossover,
    Selection,
    TournamentSelection,
    crowded_ranking,
)
from procache_opt.strategies._parametrization import ObjectiveSpec, UniformFallback

from procache_opt.schedule import Schedule
from procache_opt.strategy import Strategy, TrialResult

if TYPE_CHECKING:
    from procache_opt.space import ScheduleSpace

__all__ = ["EvolutionaryStrategy"]


class EvolutionaryStrategy(Strategy):
    """Breeds schedules from the best evaluated ones: selection, crossover, mutation, all inside the space.

    Steady state, because the engine tells results one batch at a time: every ``ask`` breeds from the
    current population, the ``population_size`` best schedules evaluated so far (elitist (mu + lambda)
    survival over the whole history). The first ``population_size`` proposals are uniform draws from the
    space (ProCache, arXiv 2512.17298, samples its candidates at random; this is where the search starts).
    A child is two parents picked by ``selection``, crossed by ``crossover`` and changed by ``mutation``;
    the default operators return members (crossover repairs its child), so their children are never
    discarded for infeasibility; a child that is not a member (a custom operator's) or was already proposed
    is bred again, up to ``max_attempts`` times, then a uniform draw takes its place.

    Several objectives (``objectives=["feature_error", "flops_ratio"]``): the population is ranked by
    NSGA-II's non-dominated sorting and crowding distance (Deb et al. 2002), and the binary tournament
    compares (front, crowding) as NSGA-II's crowded-comparison operator does. This is implemented here rather
    than by delegating to Optuna's ``NSGAIISampler`` because that sampler's crossovers act on independent
    parameters (uniform, SBX, ...) and would break the sum, order and budget constraints that tie the
    segment lengths together; ranking is the only part of NSGA-II that does not need to know the space.
    With one objective the same ranking is plain ordering by loss.

    Resuming: the population is a function of the told history, so a fresh strategy told the same results
    breeds from the same parents; :meth:`state_dict` adds the generator and the proposals (pending ones
    included), so restoring it continues exactly where the original left off.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> space = ScheduleSpace(20, num_full=6, v_min=1, v_max=4, monotone=None)
        >>> strategy = EvolutionaryStrategy(space, seed=0, population_size=4)
        >>> all(space.contains(s) for s in strategy.ask(6))
        True

    Args:
        space: The feasible schedules.
        seed: Seeds the strategy's one generator (sampling and every operator).
        population_size: Parents kept, and uniform proposals before breeding starts.
        selection: Picks a parent (default: binary tournament).
        crossover: Combines two parents into a member (default: one-point in time, repaired).
        mutation: Moves a child to a nearby member (default: a random neighbour).
        objectives: Names in ``TrialResult.values`` to optimise jointly; ``None``: ``TrialResult.value``.
        directions: ``"minimize"``/``"maximize"`` per objective (default: minimise all).
        max_attempts: Breeding tries per proposal before a uniform draw.
    """

    name = "evolutionary"

    def __init__(self, space: ScheduleSpace, seed: int = 0, population_size: int = 16,
                 selection: Selection | None = None, crossover: Crossover | None = None,
                 mutation: Mutation | None = None, objectives: Sequence[str] | None = None,
                 directions: Sequence[str] | None = None, max_attempts: int = 32) -> None:
        super().__init__(space, seed)
        if population_size < 2 or max_attempts < 1:
            raise ValueError(f"population_size={population_size!r} must be >= 2 and max_attempts="
                             f"{max_attempts!r} >= 1")
        self.population_size = population_size
        self.selection = selection or TournamentSelection()
        self.crossover = crossover or OnePointCrossover()
        self.mutation = mutation or NeighborMutation()
        self.objectives = ObjectiveSpec.of(objectives, directions)
        self.max_attempts = max_attempts
        self._history = ProposalHistory(self.rng)  # proposed or told: never proposed (again)
        self._fallback = UniformFallback(space, self._history, self.name)
        self._told: set[tuple[int, ...]] = set()  # members told, failed ones included
        self._evaluated: list[tuple[Schedule, tuple[float, ...]]] = []  # completed members and their losses
        self._parents: list[Schedule] = []
        self._fitness: list[tuple[float, ...]] = []

    @classmethod
    def options_for_budget(cls, n_trials: int) -> dict[str, Any]:
        """The default population of 16 is sized for 30+ evaluations; with fewer the strategy would never
        breed, so the population is a quarter of the budget."""
        return {"population_size": max(4, n_trials // 4)}

    def ask(self, n: int = 1) -> list[Schedule]:
        out: list[Schedule] = []
        for _ in range(n):
            child = self._propose()
            if child is None:
                break
            self._history.add(child)
            out.append(child)
        return out

    def _propose(self) -> Schedule | None:
        if len(self._history) >= self.space.count():  # every member is told or pending
            return None
        if len(self._history) < self.population_size or len(self._parents) < 2:
            return self._fallback.sample("building the initial population")
        for _ in range(self.max_attempts):
            child = self._breed()
            if child not in self._history and self.space.contains(child):
                return child
        return self._fallback.sample(f"no new child in {self.max_attempts} tries")

    def _breed(self) -> Schedule:
        a, b = (self._parents[self.selection.select(self._fitness, self.rng)] for _ in range(2))
        return self.mutation.mutate(self.crossover.cross(a, b, self.space, self.rng), self.space, self.rng)

    def tell(self, results: Sequence[TrialResult]) -> None:
        """Add completed members to the history and re-rank the population (non-members are ignored)."""
        for result in results:
            key = result.schedule.pattern
            if key in self._told or (result.schedule not in self._history
                                     and not self.space.contains(result.schedule)):
                continue
            self._told.add(key)
            self._history.add(result.schedule)
            losses = self.objectives.losses(result)
            if losses is not None:
                self._evaluated.append((result.schedule, losses))
        if self._evaluated:
            table = np.array([losses for _, losses in self._evaluated])
            order, self._fitness = crowded_ranking(table, self.population_size)
            self._parents = [self._evaluated[i][0] for i in order]

    @property
    def is_finished(self) -> bool:
        """True once every member of the space has been told."""
        return len(self._told) >= self.space.count()

    def state_dict(self) -> dict[str, Any]:
        """The generator and every proposal (pending ones included); replaying the told results restores the
        population."""
        return self._history.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history.load_state_dict(state)

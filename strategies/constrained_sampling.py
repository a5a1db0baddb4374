"""``constrained_sampling``: ProCache's own search (arXiv 2512.17298, Sec. 3.2; the authors' ``CASS.py``).

The authors draw K = 5 distinct feasible patterns, score each with a proxy by hand and keep the best. Here
the engine scores them; this strategy only proposes the K candidates and remembers the best it was told.
There is no feedback from scores into sampling: that is the point of comparison for ``tpe`` and
``evolutionary``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Literal

from procache_opt.strategies._common import ProposalHistory

from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.strategy import Strategy, TrialResult

__all__ = ["ConstrainedSampling"]

logger = logging.getLogger("procache_opt.strategies")


class ConstrainedSampling(Strategy):
    """Proposes ``num_candidates`` distinct members, then finishes; the best told one is :attr:`best`.

    ``mode="stick_breaking"`` is the authors' sampler (:meth:`ScheduleSpace.sample_stick_breaking`, with the
    count of FULL steps fixed as ``num_full`` below says); it is not uniform and, with
    a FLOPs budget or wide ``[v_min, v_max]``, may reject almost every draw, so after ``max_attempts``
    fruitless draws for one candidate the strategy samples the rest uniformly and logs that once.
    ``mode="uniform"`` samples uniformly from the start. When no more than ``num_candidates`` members have the
    sampled count of FULL steps, all of them are proposed, drawn uniformly without stick-breaking: on
    `dit-digits` at budget 0.5 with the search's default ``v_min = 1`` two members have the budget's 24 FULL
    steps, and stick-breaking never draws one of them (20,000 draws, all the other).

    ``num_full="budget"`` (the default) draws every candidate with the largest number of FULL steps that a
    FLOPs budget allows, as the authors do: their B is set by the target speed-up, so all five patterns cost
    the same and only where the FULL steps go differs. ``num_full="any"`` picks a feasible count uniformly
    for each draw (this project's first version): at budget 0.35 its candidates stayed well under the
    budget (the returned schedule had FLOPs 0.29 on `dit-digits`), and the search returned the FORA start
    point on three of four generality rows (benchmarks/results/generality.md). A space with a fixed
    ``num_full`` or no FLOPs budget is sampled as is.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> strategy = ConstrainedSampling(ScheduleSpace(50, num_full=13, v_min=1, v_max=4), seed=0)
        >>> len(strategy.ask(10)), strategy.is_finished
        (5, True)

    Args:
        space: The feasible schedules.
        seed: Seeds the strategy's generator.
        num_candidates: K, the number of distinct candidates (5 in the paper).
        mode: ``"stick_breaking"`` (the authors') or ``"uniform"``.
        max_attempts: Stick-breaking draws per candidate before falling back to uniform sampling.
        num_full: ``"budget"`` (the largest count of FULL steps the budget allows) or ``"any"``.
    """

    name = "constrained_sampling"

    def __init__(self, space: ScheduleSpace, seed: int = 0, num_candidates: int = 5,
                 mode: Literal["stick_breaking", "uniform"] = "stick_breaking", max_attempts: int = 10_000,
                 num_full: Literal["budget", "any"] = "budget") -> None:
        if num_candidates < 1:
            raise ValueError(f"num_candidates={num_candidates!r} is out of range; allowed: num_candidates >= 1")
        if mode not in ("stick_breaking", "uniform"):
            raise ValueError(f"mode={mode!r}; allowed: 'stick_breaking' or 'uniform'")
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r} is out of range; allowed: max_attempts >= 1")
        if num_full not in ("budget", "any"):
            raise ValueError(f"num_full={num_full!r}; allowed: 'budget' or 'any'")
        super().__init__(space, seed)
        self.num_full = num_full
        self._sampled = _budget_count_space(space) if num_full == "budget" else space
        size = self._sampled.count()
        self.num_candidates = min(num_candidates, size)
        #: Every member is a candidate: draw them without replacement (``draw_unseen``) instead of stick-breaking,
        #: which may almost never hit one.
        self._takes_all = size <= num_candidates
        if self._takes_all:
            logger.info("constrained_sampling: %d schedules have the sampled count of FULL steps; evaluating all",
                        size)
        self.mode = mode
        self.max_attempts = max_attempts
        self.best: TrialResult | None = None
        self._history = ProposalHistory(self.rng)
        self._fell_back = False

    @classmethod
    def options_for_budget(cls, n_trials: int) -> dict[str, Any]:
        """As many candidates as the other strategies evaluate (the paper's K is 5)."""
        return {"num_candidates": n_trials}

    def ask(self, n: int = 1) -> list[Schedule]:
        proposals = []
        while len(proposals) < n and not self.is_finished:
            authors = self.mode == "stick_breaking" and not self._fell_back and not self._takes_all
            schedule = self._stick_breaking() if authors else None
            if schedule is None:
                schedule = self._history.draw_unseen(self._sampled)
            self._history.add(schedule)
            proposals.append(schedule)
        return proposals

    def _stick_breaking(self) -> Schedule | None:
        for _ in range(self.max_attempts):
            schedule = self._sampled.sample_stick_breaking(self.rng)
            if schedule is not None and schedule not in self._history:
                return schedule
        logger.warning("constrained_sampling: %d stick-breaking draws gave no new member; sampling the rest "
                       "uniformly", self.max_attempts)
        self._fell_back = True
        return None

    def tell(self, results: Sequence[TrialResult]) -> None:
        for result in results:
            if result.ok and (self.best is None or result.value < self.best.value):
                self.best = result

    @property
    def is_finished(self) -> bool:
        return len(self._history) >= self.num_candidates

    def state_dict(self) -> dict[str, Any]:
        return {**self._history.state_dict(), "fell_back": self._fell_back}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history.load_state_dict(state)
        self._fell_back = bool(state.get("fell_back", False))


def _budget_count_space(space: ScheduleSpace) -> ScheduleSpace:
    """The members of ``space`` with the most FULL steps its FLOPs budget allows (``space`` itself without one)."""
    if space.max_flops_ratio is None or space.num_full is not None:
        return space
    return dataclasses.replace(space, num_full=max(space.num_full_values()))

"""The search loop: ask the strategy, evaluate on a backend, store, then tell (in that order).

Resuming is replay: the strategy is rebuilt with its seed and asked again; every proposal that the store
already holds is answered from the store instead of being evaluated, so a resumed deterministic search ends
exactly where an uninterrupted one would, and no finished evaluation is redone or lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from procache_opt.backends.base import Backend, EvalOutcome
from procache_opt.costs import StepCosts
from procache_opt.schedule import Schedule
from procache_opt.scoring import ObjectiveSet
from procache_opt.storage import TrialStore
from procache_opt.strategy import Strategy, TrialResult, TrialStatus

__all__ = ["SearchLoop"]

logger = logging.getLogger("procache_opt.search")

#: Consecutive asks that bring nothing new before the loop concludes the strategy is stuck.
_MAX_IDLE_ASKS = 50


@dataclass
class SearchLoop:
    """Drives one search. ``run()`` returns every trial of the search, replayed ones included.

    Args:
        strategy: Proposes schedules.
        backend: Evaluates them.
        objectives: Turns scores into the strategy's loss.
        costs: Counts each schedule's FLOPs ratio.
        n_trials: Distinct schedules to evaluate (replayed ones count; duplicates do not).
        store: Persists trials; ``None`` keeps them in memory only.
        history: Trials already in ``store`` (from ``TrialStore.bind``) to replay.
        on_result: Called with each new or replayed trial (progress bars).
    """

    strategy: Strategy
    backend: Backend
    objectives: ObjectiveSet
    costs: StepCosts
    n_trials: int
    store: TrialStore | None = None
    history: tuple[TrialResult, ...] = ()
    on_result: Callable[[TrialResult], None] | None = None

    def run(self) -> list[TrialResult]:
        stored = {r.schedule.pattern: r for r in self.history}
        self._done: dict[tuple[int, ...], TrialResult] = {}
        self._in_flight: set[tuple[int, ...]] = set()
        next_id = max((r.trial_id for r in self.history), default=-1) + 1
        idle = 0
        while len(self._done) < self.n_trials and not self.strategy.is_finished:
            room = min(self.backend.capacity, self.n_trials - len(self._done)) - len(self._in_flight)
            told: list[TrialResult] = []
            for schedule in self.strategy.ask(room) if room > 0 else []:
                key = schedule.pattern
                if key in self._done:  # a repeat within this search: answer it, do not count it
                    told.append(self._done[key])
                elif key in stored:  # evaluated before an interruption: replay it
                    self._done[key] = stored[key]
                    told.append(stored[key])
                    self._announce(stored[key])
                elif key not in self._in_flight:
                    self._in_flight.add(key)
                    self.backend.submit(next_id, schedule)
                    next_id += 1
            if self._in_flight and not told:
                told = [self._record(o) for o in self.backend.wait()]
            if told:
                self.strategy.tell(told)
            idle = 0 if (told or self._in_flight) else idle + 1
            if idle >= _MAX_IDLE_ASKS:
                logger.warning("strategy %s proposed nothing new %d times in a row; stopping after %d trials",
                               type(self.strategy).__name__, idle, len(self._done))
                break
        while self._in_flight:  # the budget was reached or the strategy finished with evaluations running
            self.strategy.tell([self._record(o) for o in self.backend.wait()])
        return sorted(self._done.values(), key=lambda r: r.trial_id)

    def _record(self, outcome: EvalOutcome) -> TrialResult:
        """Store a finished evaluation (before any strategy hears of it) and mark it done."""
        result = self._to_result(outcome)
        self._in_flight.discard(result.schedule.pattern)
        if self.store is not None:
            self.store.append(result)
        self._done[result.schedule.pattern] = result
        self._announce(result)
        return result

    def _announce(self, result: TrialResult) -> None:
        if self.on_result is not None:
            self.on_result(result)

    def _to_result(self, outcome: EvalOutcome) -> TrialResult:
        schedule: Schedule = outcome.schedule
        flops = self.costs.ratio(schedule)
        if not outcome.ok:
            logger.warning("trial %d failed (%s); the search goes on", outcome.trial_id, outcome.error)
            return TrialResult(outcome.trial_id, schedule, TrialStatus.FAILED, flops_ratio=flops,
                               error=outcome.error, duration_s=outcome.duration_s, extra=dict(outcome.extra))
        scores = outcome.scores or {}
        values = {name: s.mean for name, s in scores.items()}
        values.setdefault("flops_ratio", flops)
        extra = dict(outcome.extra, scores={name: s.to_dict() for name, s in scores.items()})
        return replace(
            TrialResult(outcome.trial_id, schedule, TrialStatus.COMPLETE),
            value=self.objectives.scalarize(scores), values=values, flops_ratio=flops,
            duration_s=outcome.duration_s, extra=extra,
        )

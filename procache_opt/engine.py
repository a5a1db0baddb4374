"""The search loop: ask the strategy, evaluate on a backend, store, then tell (in that order).

Resuming is restoring, not replaying: the store's :class:`~procache_opt.state.SearchState` holds every finished
trial, the strategy's state after the trials it had heard and the evaluations that were running. The loop tells
a fresh strategy those trials, loads its state, tells it the rest, submits the running evaluations again under
their ids, and goes on: a resumed search makes exactly the proposals an uninterrupted one would have, even when
results arrived out of order, and no finished evaluation is redone or lost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from procache_opt._io import CorruptFileError
from procache_opt.backends.base import Backend, EvalOutcome
from procache_opt.costs import StepCosts
from procache_opt.schedule import Schedule
from procache_opt.scoring import ObjectiveSet
from procache_opt.state import SearchState
from procache_opt.storage import TrialStore
from procache_opt.strategy import Strategy, TrialResult, TrialStatus

__all__ = ["SearchLoop"]

logger = logging.getLogger("procache_opt.search")

#: Consecutive rounds that bring nothing new (no submission, no result) before the loop concludes the strategy
#: is stuck. A proposal the search already knows is answered but is not progress.
_MAX_IDLE_ASKS = 50


@dataclass
class SearchLoop:
    """Drives one search. ``run()`` returns every trial of the search, stored ones included, by trial id.

    Args:
        strategy: Proposes schedules (fresh: a stored search's state is restored into it).
        backend: Evaluates them.
        objectives: Turns scores into the strategy's loss.
        costs: Counts each schedule's FLOPs ratio.
        n_trials: Distinct schedules to evaluate (stored ones count; repeats do not).
        store: Persists the search state after every result and every ``tell`` and is resumed from;
            ``None`` keeps everything in memory.
        on_result: Called with each new or stored trial (progress bars).
    """

    strategy: Strategy
    backend: Backend
    objectives: ObjectiveSet
    costs: StepCosts
    n_trials: int
    store: TrialStore | None = None
    on_result: Callable[[TrialResult], None] | None = None

    def run(self) -> list[TrialResult]:
        self._restore(self.store.load_state() if self.store is not None else None)
        idle = 0
        while len(self._done) < self.n_trials and not self.strategy.is_finished:
            room = min(self.backend.capacity, self.n_trials - len(self._done)) - len(self._in_flight)
            progress = self._submit(self.strategy.ask(room) if room > 0 else [])
            if self._in_flight and not progress:
                progress = self._collect()
            idle = 0 if progress else idle + 1
            if idle >= _MAX_IDLE_ASKS:
                logger.warning("strategy %s proposed nothing new %d times in a row; stopping after %d trials",
                               type(self.strategy).__name__, idle, len(self._done))
                break
        while self._in_flight:  # the budget was reached or the strategy finished with evaluations running
            self._collect()
        return sorted(self._trials, key=lambda r: r.trial_id)

    # -- state ----------------------------------------------------------------------------------------------
    def _restore(self, state: SearchState | None) -> None:
        state = state or SearchState()
        self._trials = list(state.trials)
        self._done = {t.schedule.pattern: t for t in self._trials}
        # A strategy without state re-proposes what it proposed before the interruption; the first repeat of
        # each stored trial is the replay that brings it back to where it was, so it counts as progress.
        self._replayable = set(self._done)
        self._in_flight = {schedule.pattern: (trial_id, schedule) for trial_id, schedule in state.in_flight}
        self._next_id = state.next_trial_id
        self._told = 0
        for trial in self._trials:
            self._announce(trial)
        if state.told:
            self.strategy.tell(self._trials[:state.told])
        if state.strategy:
            try:
                self.strategy.load_state_dict(dict(state.strategy))
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                where = self.store.location if self.store is not None else "the stored state"
                raise CorruptFileError(
                    f"{where}: the stored state of strategy {type(self.strategy).__name__} cannot be restored "
                    f"({type(exc).__name__}: {exc}); use a new storage location") from None
        self._told = state.told
        for trial_id, schedule in state.in_flight:
            self.backend.submit(trial_id, schedule)
        if self._told < len(self._trials):  # recorded, then interrupted before the strategy heard them
            self._tell(self._trials[self._told:])

    def _save(self, told: int) -> None:
        self._told = told
        if self.store is not None:
            in_flight = tuple(sorted(self._in_flight.values(), key=lambda entry: entry[0]))
            self.store.save_state(SearchState(tuple(self._trials), told, self.strategy.state_dict(), in_flight,
                                              self._next_id))

    # -- steps ----------------------------------------------------------------------------------------------
    def _submit(self, proposals: Sequence[Schedule]) -> bool:
        """Submit new proposals, answer known ones; True if anything new happened."""
        progress, known = False, []
        for schedule in proposals:
            key = schedule.pattern
            if key in self._done:  # a repeat: answered from the search, never evaluated twice
                known.append(self._done[key])
                if key in self._replayable:
                    self._replayable.discard(key)
                    progress = True
            elif key not in self._in_flight:
                self._in_flight[key] = (self._next_id, schedule)
                self.backend.submit(self._next_id, schedule)
                self._next_id += 1
                progress = True
        if known:
            self._tell(known)
        return progress

    def _collect(self) -> bool:
        """Wait for finished evaluations; record them (durably), then tell the strategy."""
        results = [self._to_result(o) for o in self.backend.wait()]
        for result in results:
            self._in_flight.pop(result.schedule.pattern, None)
            self._trials.append(result)
            self._done[result.schedule.pattern] = result
            self._replayable.discard(result.schedule.pattern)
        if results:
            self._save(self._told)  # recorded before anyone hears of them (style guide, item 3)
            for result in results:
                self._announce(result)
            self._tell(results)
        return bool(results)

    def _tell(self, results: Sequence[TrialResult]) -> None:
        self.strategy.tell(list(results))
        self._save(len(self._trials))

    def _announce(self, result: TrialResult) -> None:
        if self.on_result is not None:
            self.on_result(result)

    def _to_result(self, outcome: EvalOutcome) -> TrialResult:
        schedule: Schedule = outcome.schedule
        flops = self.costs.ratio(schedule)
        failed = TrialResult(outcome.trial_id, schedule, TrialStatus.FAILED, flops_ratio=flops,
                             duration_s=outcome.duration_s, extra=dict(outcome.extra))
        if not outcome.ok:
            logger.warning("trial %d failed (%s); the search goes on", outcome.trial_id, outcome.error)
            return replace(failed, error=outcome.error)
        scores = outcome.scores or {}
        values = {name: s.mean for name, s in scores.items()}
        values.setdefault("flops_ratio", flops)
        value = self.objectives.scalarize(scores)
        bad = {name: v for name, v in {**values, "loss": value}.items() if not math.isfinite(v)}
        if bad or not all(math.isfinite(v) for s in scores.values() for v in s.per_sample):
            error = "objectives returned non-finite values (" + (", ".join(
                f"{k}={v}" for k, v in bad.items()) or "in per-sample scores") + "); the trial counts as failed"
            logger.warning("trial %d failed (%s); the search goes on", outcome.trial_id, error)
            return replace(failed, error=error)
        extra = dict(outcome.extra, scores={name: s.to_dict() for name, s in scores.items()})
        return replace(failed, status=TrialStatus.COMPLETE, value=value, values=values, extra=extra)

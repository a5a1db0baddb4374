"""Evaluate in the calling process, one schedule at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from procache_opt.backends.base import Backend, EvalOutcome, run_evaluation
from procache_opt.objective import Score
from procache_opt.schedule import Schedule

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Runs each submitted schedule when the engine waits for it, in submission order.

    Args:
        evaluate: Maps a schedule to its scores (usually ``Evaluator.evaluate``).
    """

    def __init__(self, evaluate: Callable[[Schedule], Mapping[str, Score]]) -> None:
        self._evaluate = evaluate
        self._pending: deque[tuple[int, Schedule]] = deque()

    @property
    def capacity(self) -> int:
        return 1

    def submit(self, trial_id: int, schedule: Schedule) -> None:
        self._pending.append((trial_id, schedule))

    def wait(self) -> list[EvalOutcome]:
        if not self._pending:
            return []
        trial_id, schedule = self._pending.popleft()
        return [run_evaluation(self._evaluate, trial_id, schedule)]

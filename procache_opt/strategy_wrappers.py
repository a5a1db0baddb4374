"""Wrappers that add behaviour to any strategy without touching it (written once, used by all)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from procache_opt.schedule import Schedule
from procache_opt.strategy import Strategy, TrialResult

__all__ = ["Enqueued"]


class Enqueued(Strategy):
    """Proposes fixed schedules first (like Optuna's ``enqueue_trial``), then whatever ``inner`` proposes.

    The search engine enqueues the best FORA schedule within the budget, so a search's best is never worse
    than that baseline on the calibration set, whatever prior its space encodes. Results of enqueued
    schedules reach ``inner`` only when they lie in its space (a strategy may assume it only hears of
    members).
    """

    def __init__(self, inner: Strategy, schedules: Sequence[Schedule]) -> None:
        super().__init__(inner.space, inner.seed)
        self.inner = inner
        self._queue = list(schedules)
        self._enqueued = {s.pattern for s in schedules}

    def ask(self, n: int = 1) -> list[Schedule]:
        first, self._queue = self._queue[:n], self._queue[n:]
        rest = self.inner.ask(n - len(first)) if n > len(first) else []
        return first + rest

    def tell(self, results: Sequence[TrialResult]) -> None:
        space = self.inner.space
        self.inner.tell([
            r for r in results
            if r.schedule.pattern not in self._enqueued or space is None or space.contains(r.schedule)
        ])

    @property
    def is_finished(self) -> bool:
        return not self._queue and self.inner.is_finished

    def state_dict(self) -> dict[str, Any]:
        """The inner strategy's state and how many enqueued schedules are still to be proposed."""
        return {"inner": self.inner.state_dict(), "queued": len(self._queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self._queue = self._queue[len(self._queue) - int(state["queued"]):] if state["queued"] else []

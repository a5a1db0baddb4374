"""Where evaluations run: the engine submits schedules to a backend and collects their outcomes.

The engine owns the strategy, the trial ids and the storage; a backend only evaluates. Outcomes carry plain
data (no tensors), so they cross process and machine boundaries (Ray) unchanged.
"""

from __future__ import annotations

import abc
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from procache_opt.objective import Score
from procache_opt.schedule import Schedule

__all__ = ["Backend", "EvalOutcome", "run_evaluation"]


@dataclass(frozen=True)
class EvalOutcome:
    """The result of evaluating one schedule: scores by objective name, or the error that stopped it."""

    trial_id: int
    schedule: Schedule
    scores: dict[str, Score] | None
    error: str | None = None
    duration_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.scores is not None


def run_evaluation(
    evaluate: Callable[[Schedule], Mapping[str, Score]], trial_id: int, schedule: Schedule, **extra: Any
) -> EvalOutcome:
    """Evaluate one schedule and turn any exception (NaN output, out of memory) into a failed outcome.

    A failed trial is recorded, never fatal: the message keeps the exception type, text and the innermost
    frame so a user can reproduce it with the schedule that is stored next to it. Facts an evaluator reports
    beside its scores (``evaluate.Scores.facts``, e.g. block evaluations) go into the outcome's ``extra``.
    """
    start = time.perf_counter()
    try:
        result = evaluate(schedule)
        scores = dict(result)
        extra = {**getattr(result, "facts", {}), **extra}
    except Exception as exc:  # noqa: BLE001 - every evaluation failure is recorded, not raised
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" (at {frame[0].filename}:{frame[0].lineno})" if frame else ""
        return EvalOutcome(trial_id, schedule, None, f"{type(exc).__name__}: {exc}{where}",
                           time.perf_counter() - start, dict(extra))
    return EvalOutcome(trial_id, schedule, scores, None, time.perf_counter() - start, dict(extra))


class Backend(abc.ABC):
    """Runs evaluations; ``capacity`` of them may be in flight at once."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many evaluations the engine should keep in flight."""

    @abc.abstractmethod
    def submit(self, trial_id: int, schedule: Schedule) -> None:
        """Start evaluating ``schedule`` under ``trial_id`` (may return before it finishes)."""

    @abc.abstractmethod
    def wait(self) -> list[EvalOutcome]:
        """Block until at least one submitted evaluation has finished; return every finished one."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release workers and memory."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

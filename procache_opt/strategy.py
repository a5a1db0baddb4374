"""The strategy interface: ask for schedules, tell their scores (Optuna's ask/tell, Ray Tune's searcher).

A strategy never imports torch, diffusers or ray and never calls an objective: the engine
(``procache_opt.search``) owns the loop, the trial ids and the storage, and tells each strategy what its
proposals scored. Data flows one way: space -> strategy.ask -> runtime -> objective -> strategy.tell.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from procache_opt.plugins import PluginRegistry
from procache_opt.schedule import Schedule

if TYPE_CHECKING:
    from procache_opt.space import ScheduleSpace

__all__ = ["PROBE", "Strategy", "TrialResult", "TrialStatus", "STRATEGIES", "as_probe", "is_probe"]

#: ``Schedule.metadata`` key that marks a measurement probe (see :func:`as_probe`).
PROBE = "probe"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_probe(schedule: Schedule, **facts: Any) -> Schedule:
    """``schedule`` marked as a measurement probe: evaluated for what it teaches the strategy, never a result.

    A strategy may propose probes outside its space (the ``graph`` strategy runs schedules that are FULL except
    one reused segment, to weigh that segment). The engine evaluates, stores and tells them like any proposal;
    a search's best, its Pareto front and its best-so-far curves leave them out. ``facts`` (JSON) are kept in
    the mark, e.g. which segment the probe weighs.
    """
    return replace(schedule, metadata={**schedule.metadata, PROBE: dict(facts)})


def is_probe(schedule: Schedule) -> bool:
    """Whether ``schedule`` was marked by :func:`as_probe`."""
    return PROBE in schedule.metadata


class TrialStatus(str, enum.Enum):
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class TrialResult:
    """What one evaluated schedule scored; what the engine stores and tells strategies.

    Attributes:
        trial_id: Engine-assigned id, unique within a search, in order of proposal.
        schedule: The schedule evaluated.
        status: ``COMPLETE`` or ``FAILED`` (then ``value`` is ``None`` and ``error`` says why).
        value: The scalar loss a single-objective strategy minimises (weighted sum of the objectives).
        values: Mean of each objective by name (e.g. ``{"feature_error": 0.12, "flops_ratio": 0.48}``).
        flops_ratio: Counted FLOPs of the schedule as a fraction of full computation.
        error: The failure message for ``FAILED`` trials.
        duration_s: Wall-clock seconds the evaluation took.
        extra: Further JSON-serialisable facts (per-sample values, confidence intervals, block evaluations).
    """

    trial_id: int
    schedule: Schedule
    status: TrialStatus
    value: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    flops_ratio: float | None = None
    error: str | None = None
    duration_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Completed with a finite loss: the only trials that can be best (a NaN loss must never win a ``min``)."""
        return self.status == TrialStatus.COMPLETE and self.value is not None and math.isfinite(self.value)

    @property
    def probe(self) -> bool:
        """A measurement probe (:func:`as_probe`): evaluated for the strategy, never a candidate result."""
        return is_probe(self.schedule)

    @property
    def candidate(self) -> bool:
        """Completed with a finite loss and not a probe: the trials a best, a front or a best-so-far counts."""
        return self.ok and not self.probe

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "schedule": self.schedule.to_dict(),
            "status": self.status.value,
            "value": self.value,
            "values": self.values,
            "flops_ratio": self.flops_ratio,
            "error": self.error,
            "duration_s": self.duration_s,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """Read :meth:`to_dict`'s output; a missing or mistyped entry raises ``ValueError`` naming it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a trial is a JSON object, got {type(data).__name__}")
        values = data.get("values", {})
        if not isinstance(values, Mapping) or not all(_is_number(v) for v in values.values()):
            raise ValueError(f"trial {data.get('trial_id')!r}: 'values' must map names to numbers, got {values!r}")
        for key in ("value", "flops_ratio"):
            if data.get(key) is not None and not _is_number(data[key]):
                raise ValueError(f"trial {data.get('trial_id')!r}: {key!r} must be a number, got {data[key]!r}")
        trial_id = data.get("trial_id")
        if isinstance(trial_id, bool) or not isinstance(trial_id, int) or "schedule" not in data:
            raise ValueError(f"a trial needs an integer 'trial_id' and a 'schedule', got trial_id={trial_id!r}")
        return cls(
            trial_id=trial_id,
            schedule=Schedule.from_dict(data["schedule"]),
            status=TrialStatus(data.get("status")),
            value=data.get("value"),
            values=dict(values),
            flops_ratio=data.get("flops_ratio"),
            error=None if data.get("error") is None else str(data["error"]),
            duration_s=float(data.get("duration_s", 0.0)) if _is_number(data.get("duration_s", 0.0)) else 0.0,
            extra=dict(data.get("extra", {})) if isinstance(data.get("extra", {}), Mapping) else {},
        )


class Strategy(abc.ABC):
    """Proposes schedules from a :class:`~procache_opt.space.ScheduleSpace` and learns from their scores.

    Subclasses implement :meth:`ask` and usually :meth:`tell`. Every proposal must lie in the space, except
    measurement probes marked with :func:`as_probe` (which never count as results). The engine may call
    ``ask`` again before telling earlier results (parallel evaluation): a strategy should not propose a
    schedule it already has pending.

    Args:
        space: The feasible schedules.
        seed: Seeds the strategy's one ``numpy.random.Generator``; the same seed gives the same proposals.
    """

    #: Registry name, set by subclasses (e.g. ``"tpe"``).
    name: str = ""

    def __init__(self, space: ScheduleSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    @abc.abstractmethod
    def ask(self, n: int = 1) -> list[Schedule]:
        """Up to ``n`` new schedules to evaluate; fewer, or none, when there is nothing to propose now."""

    def tell(self, results: Sequence[TrialResult]) -> None:  # noqa: B027 - optional hook, not abstract
        """Receive finished results (including failed ones, whose ``value`` is ``None``)."""

    @property
    def is_finished(self) -> bool:
        """True once the strategy will never propose again (e.g. an exhausted enumeration)."""
        return False

    @classmethod
    def options_for_budget(cls, n_trials: int) -> dict[str, Any]:
        """Options that let this strategy do what it does within ``n_trials`` evaluations (default: none).

        The comparison harness gives every strategy the same evaluation budget; a strategy whose defaults are
        sized for more evaluations (TPE's start-up trials, a population) scales them here, in its own module.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state beyond what replaying the told results restores (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` returned."""


#: Strategies by name (entry-point group ``procache_opt.strategies``).
STRATEGIES: PluginRegistry[Strategy] = PluginRegistry("procache_opt.strategies", "strategy")

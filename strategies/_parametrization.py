"""How the learning strategies see the space: Optuna parameters, objectives and the uniform fallback.

A member of a :class:`~procache_opt.space.ScheduleSpace` is its tuple of segment lengths (ProCache,
arXiv 2512.17298, Sec. 3.2: one FULL step then ``v`` reused steps per segment). The space's
:meth:`~procache_opt.space.ScheduleSpace.decode` walks its exact DP table while a chooser picks each length
among those from which a member continues, so every walk ends on a member (Eqs. 2-4 and the FLOPs budget
hold by construction). :class:`OptunaCoding` is the chooser for TPE (Bergstra et al. 2011): a number of
FULL steps and one weight per segment, decoded into shares of the remaining steps. It never yields an
over-budget schedule, so no evaluation is wasted on an infeasible one, and a member's own lengths encode it
exactly.

This module also holds what both learning strategies share: reading the numbers to optimise from a
:class:`~procache_opt.strategy.TrialResult` (:class:`ObjectiveSpec`) and the uniform fallback sampler
(:class:`UniformFallback`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from optuna.distributions import IntDistribution
from procache_opt.strategies._common import ProposalHistory

from procache_opt.schedule import Schedule
from procache_opt.strategy import TrialResult, TrialStatus

if TYPE_CHECKING:
    import optuna

    from procache_opt.space import ScheduleSpace

__all__ = ["ObjectiveSpec", "OptunaCoding", "UniformFallback"]

logger = logging.getLogger("procache_opt.strategies")

Direction = Literal["minimize", "maximize"]


def _closest(target: float, lengths: Sequence[int]) -> int:
    return min(lengths, key=lambda n: (abs(n - target), n))


class OptunaCoding:
    """Optuna parameters of a member: ``num_full`` (if the space allows several counts), ``segment_i`` weights.

    Decoding a trial: ``K`` is the allowed number of FULL steps nearest to ``num_full``; walking the members
    with exactly ``K`` FULL steps, segment ``i`` aims at its share of the steps left,
    ``w_i * R / (w_i + ... + w_{K-1})``, snapped to the nearest feasible length. Every weight has the same
    fixed range ``[v_min + 1, v_max + 1]``, so multivariate TPE sees one search space in every trial (its
    intersection search space drops parameters whose range changes). A member's own lengths sum to the
    steps, so as weights they decode to the member itself: :meth:`params` encodes exactly, which lets
    schedules proposed elsewhere (start-up draws, told history) join the study.

    Why shares rather than raw lengths snapped one by one: random lengths overshoot the step count, so the
    last segments were squeezed to whatever remained; shares keep every draw balanced. On a 30-step,
    8-FULL space (60 evaluations, 16 seeds) shares found schedules 14% (hidden FULL positions) and 5%
    (accumulated drift) better than raw lengths; FULL-step positions as parameters were worse than both.
    """

    def __init__(self, space: ScheduleSpace) -> None:
        self.space = space
        self.num_full_values = space.num_full_values()
        self._by_num_full: dict[int, ScheduleSpace] = {}

    def distribution(self, name: str) -> IntDistribution:
        if name == "num_full":
            return IntDistribution(self.num_full_values[0], self.num_full_values[-1])
        return IntDistribution(self.space.v_min + 1, self.space.v_max + 1)

    def _suggest(self, trial: optuna.Trial, name: str) -> int:
        dist = self.distribution(name)
        return trial.suggest_int(name, dist.low, dist.high)

    def suggest(self, trial: optuna.Trial) -> Schedule:
        """The member a trial's parameters decode to (suggesting them: define-by-run)."""
        many = len(self.num_full_values) > 1
        k = _closest(self._suggest(trial, "num_full"), self.num_full_values) if many else self.num_full_values[0]
        weights = [self._suggest(trial, f"segment_{i}") for i in range(k)]

        def choose(i: int, start: int, options: Sequence[int]) -> int:
            return _closest(weights[i] * (self.space.num_steps - start) / sum(weights[i:]), options)

        return self._with_num_full(k).decode(choose)

    def _with_num_full(self, k: int) -> ScheduleSpace:
        """The members with exactly ``k`` FULL steps (a sub-space, so the walk cannot end with another count)."""
        if self.space.num_full == k:
            return self.space
        if k not in self._by_num_full:
            self._by_num_full[k] = dataclasses.replace(self.space, num_full=k)
        return self._by_num_full[k]

    def params(self, lengths: Sequence[int]) -> dict[str, int]:
        """Parameters that decode to the member with segment ``lengths``."""
        params = {"num_full": len(lengths)} if len(self.num_full_values) > 1 else {}
        return params | {f"segment_{i}": int(n) for i, n in enumerate(lengths)}

    def distributions(self, params: dict[str, int]) -> dict[str, IntDistribution]:
        return {name: self.distribution(name) for name in params}


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a strategy optimises: ``TrialResult.value`` (one loss), or named ``TrialResult.values``.

    Attributes:
        names: Objective names looked up in ``TrialResult.values``; empty for single-objective mode.
        directions: ``"minimize"`` or ``"maximize"`` for each name (the engine stores raw means).
    """

    names: tuple[str, ...] = ()
    directions: tuple[Direction, ...] = ()

    @classmethod
    def of(cls, objectives: Sequence[str] | None, directions: Sequence[str] | None = None) -> ObjectiveSpec:
        """Validate user arguments: ``directions`` defaults to minimising every objective."""
        if isinstance(objectives, str):
            raise TypeError(f"objectives must be a list of names, e.g. [{objectives!r}], not a string")
        names = tuple(objectives or ())
        dirs = tuple(directions) if directions is not None else ("minimize",) * len(names)
        if len(dirs) != len(names) or any(d not in ("minimize", "maximize") for d in dirs):
            raise ValueError(f"directions={list(dirs)} must give 'minimize' or 'maximize' for each of the "
                             f"objectives {list(names)}")
        return cls(names, dirs)  # type: ignore[arg-type]

    @property
    def multi(self) -> bool:
        return bool(self.names)

    @property
    def optuna_directions(self) -> list[str]:
        return list(self.directions) if self.multi else ["minimize"]

    def values(self, result: TrialResult) -> tuple[float, ...] | None:
        """The raw objective values of ``result``; ``None`` for a failed trial."""
        if result.status != TrialStatus.COMPLETE:
            return None
        if not self.multi:
            return None if result.value is None else (float(result.value),)
        missing = [name for name in self.names if name not in result.values]
        if missing:
            raise KeyError(f"trial {result.trial_id} has no values for objectives {missing}; it has "
                           f"{sorted(result.values)}. Name objectives the search evaluates.")
        return tuple(float(result.values[name]) for name in self.names)

    def losses(self, result: TrialResult) -> tuple[float, ...] | None:
        """Like :meth:`values`, with maximised objectives negated so that smaller is better throughout."""
        values = self.values(result)
        if values is None:
            return None
        return tuple(-v if d == "maximize" else v for v, d in zip(values, self.optuna_directions, strict=True))


class UniformFallback:
    """Uniform draws of members not yet proposed, for start-up and dead ends, announced once per reason.

    Style guide item 5: a strategy that cannot propose delegates to the space's uniform sampler (through
    ``ProposalHistory.draw_unseen``, sampling without replacement) and says so once in the
    ``procache_opt.strategies`` log.
    """

    def __init__(self, space: ScheduleSpace, history: ProposalHistory, owner: str) -> None:
        self.space, self.history, self.owner = space, history, owner
        self._said: set[str] = set()

    def sample(self, reason: str) -> Schedule | None:
        """A uniform member not in the history; ``None`` once every member is in it."""
        if reason not in self._said:
            self._said.add(reason)
            logger.info("%s: %s; sampling uniformly from the space", self.owner, reason)
        return self.history.draw_unseen(self.space)

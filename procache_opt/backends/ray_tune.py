"""Run any procache_opt strategy inside Ray Tune: a ``Searcher`` adapter and a trainable that evaluates a pattern.

For users who already schedule their experiments with Tune (its schedulers, loggers, dashboards). The main path,
``search(..., backend="ray")``, does not go through Tune; ``docs/ray.md`` says why (constraints, memoization,
exact resume).

Example:
    >>> from ray import tune
    >>> from procache_opt.backends.ray_tune import StrategySearcher, evaluation_trainable
    >>> searcher = StrategySearcher(STRATEGIES.create("tpe", space, seed=0))  # doctest: +SKIP
    >>> tuner = tune.Tuner(evaluation_trainable(spec),  # doctest: +SKIP
    ...                    tune_config=tune.TuneConfig(search_alg=searcher, num_samples=30))
    >>> best = tuner.fit().get_best_result(metric="value", mode="min").config["pattern"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Protocol

from procache_opt._optional import require
from procache_opt.backends.base import run_evaluation
from procache_opt.backends.ray_backend import EvaluatorFactory
from procache_opt.schedule import Schedule
from procache_opt.scoring import ObjectiveSet
from procache_opt.strategy import Strategy, TrialResult, TrialStatus, is_probe

__all__ = ["StrategySearcher", "evaluation_trainable"]

tune = require("ray.tune", "ray", "the Ray Tune adapter")
Searcher = require("ray.tune.search", "ray", "the Ray Tune adapter").Searcher


class StrategySearcher(Searcher):
    """A Tune ``Searcher`` that asks a procache_opt :class:`~procache_opt.strategy.Strategy` for configs.

    Each config is ``{"pattern": [1, 0, ...], "schedule": {...}, "probe": False}`` (the digits for Tune's
    tables, the full schedule for the trainable, and whether it is a measurement probe, which is never a result:
    leave those out when you pick Tune's best trial); each finished Tune trial is told to the strategy as a
    :class:`~procache_opt.strategy.TrialResult` whose ``value`` is ``result[metric]`` (negated for
    ``mode="max"``, since strategies minimise). Errored trials are told as failed.

    Args:
        strategy: Any strategy; it keeps its own seeded state.
        metric: The reported key to optimise (``"value"`` is what :func:`evaluation_trainable` reports).
        mode: ``"min"`` or ``"max"``.
    """

    def __init__(self, strategy: Strategy, metric: str = "value", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        super().__init__(metric=metric, mode=mode)
        self.strategy = strategy
        self._numbers = itertools.count()
        self._live: dict[str, tuple[int, Schedule]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        proposals = self.strategy.ask(1)
        if not proposals:  # Tune's convention, kept at this boundary only: FINISHED ends, None means "not now"
            return Searcher.FINISHED if self.strategy.is_finished else None
        schedule = proposals[0]
        self._live[trial_id] = (next(self._numbers), schedule)
        return {"pattern": list(schedule.pattern), "schedule": schedule.to_dict(), "probe": is_probe(schedule)}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        number, schedule = self._live.pop(trial_id)
        value = None if error or not result else result.get(self.metric)
        if value is None:
            told = TrialResult(number, schedule, TrialStatus.FAILED, error=f"Tune trial {trial_id} errored")
        else:
            sign = 1.0 if self.mode == "min" else -1.0
            told = TrialResult(number, schedule, TrialStatus.COMPLETE, value=sign * float(value),
                               values=dict(result.get("values", {})))
        self.strategy.tell([told])


class _TuneSpec(EvaluatorFactory, Protocol):
    def objective_set(self) -> ObjectiveSet: ...


def evaluation_trainable(spec: _TuneSpec) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A Tune function trainable: evaluates ``config["schedule"]`` and reports ``value`` and ``values``.

    ``spec`` (an :class:`~procache_opt.spec.EvaluationSpec`) travels through Tune's object store once; each
    trial process builds its evaluator once and keeps it for later trials it runs (``reuse_actors``).
    A failed evaluation raises, so Tune marks the trial as errored and the searcher tells a failure.
    """
    return tune.with_parameters(_evaluate_config, spec=spec)


_cached: tuple[Any, Any, ObjectiveSet] | None = None  # (spec, evaluator, objectives) of this process's last trial


def _evaluate_config(config: dict[str, Any], spec: _TuneSpec) -> dict[str, Any]:
    global _cached
    if _cached is None or _cached[0] != spec:
        # Built once per process, not per trial (LPIPS loads a network): the spec is any picklable factory, so its
        # evaluator builds its own objectives and this set only turns scores into the loss.
        _cached = (spec, spec.build_evaluator(), spec.objective_set())
    schedule = Schedule.from_dict(config["schedule"])
    outcome = run_evaluation(_cached[1].evaluate, 0, schedule)
    if not outcome.ok:
        raise RuntimeError(f"evaluating {schedule} failed: {outcome.error}")
    scores = outcome.scores or {}
    return {"value": _cached[2].scalarize(scores), "values": {n: s.mean for n, s in scores.items()}}

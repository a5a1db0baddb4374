"""``procache_opt.search``: find the best caching schedule that a FLOPs budget allows.

:func:`search` is the front door: it turns its arguments into one
:class:`~procache_opt.search_config.SearchConfig` and hands it to :func:`run_search`, which the CLI, sweeps and
the comparison harness call with configs of their own. :func:`run_search` validates the whole config and the
storage before it loads the model, then runs the phases of :mod:`procache_opt.search_phases` around the loop of
:mod:`procache_opt.engine`; it owns no algorithm of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from procache_opt._lock import hold
from procache_opt.backends.base import Backend
from procache_opt.backends.local import LocalBackend
from procache_opt.engine import SearchLoop
from procache_opt.models import load_pipeline, model_label, worker_model_spec
from procache_opt.result import SearchResult
from procache_opt.search_config import SearchConfig
from procache_opt.search_phases import (
    Prepared,
    Setup,
    build_space,
    build_strategy,
    check_reference,
    heldout_check,
    heldout_line,
    measure,
    prepare,
    start_point_guard,
    start_point_line,
)
from procache_opt.storage import DirectoryStore, OptunaStore, TrialStore, open_store
from procache_opt.strategy import Strategy

__all__ = ["search", "run_search"]

logger = logging.getLogger("procache_opt.search")

_FIELDS = {f.name for f in dataclasses.fields(SearchConfig)}


def search(
    model: Any,
    budget_flops: float = 0.5,
    strategy: str | Strategy = "constrained_sampling",
    objective: str | Sequence[str] | Mapping[str, float] = "feature_error",
    n_trials: int = 30,
    *,
    storage: str | os.PathLike[str] | TrialStore | None = None,
    progress: bool = True,
    backend: str | Backend = "local",
    **options: Any,
) -> SearchResult:
    """Search a caching schedule whose counted FLOPs stay within ``budget_flops`` of full computation.

    Example:
        >>> import procache_opt
        >>> result = procache_opt.search("dit-digits", budget_flops=0.5, n_trials=10)  # doctest: +SKIP
        >>> with result.apply(pipe):  # doctest: +SKIP
        ...     images = pipe(class_labels=[3], num_inference_steps=50).images

    Args:
        model: A diffusers pipeline, a zoo name (``"dit-digits"``), a pipeline folder or a factory.
        budget_flops: Largest allowed FLOPs ratio (counted, guidance included) against full computation.
        strategy: A registered strategy name (``procache_opt.strategies.available()``) or an instance.
        objective: Objective name(s) or ``{name: weight}``; strategies minimise the weighted sum.
        n_trials: Distinct schedules to evaluate at most (strategies such as ``constrained_sampling`` stop
            earlier by design).
        storage: A results folder or a database URL (Optuna storage); makes the search resumable.
        progress: Show a progress bar.
        backend: ``"local"``, ``"ray"`` (one worker per GPU, see ``backend_options``) or a Backend.
        **options: Any other :class:`~procache_opt.search_config.SearchConfig` field (``num_inference_steps``,
            ``guidance_scale``, ``calibration``, ``heldout``, ``selective``, ``monotone``, ``forecast``,
            ``per_depth``, ``depth_split``, ``v_min``, ``v_max``, ``include_baseline``, ``multi_objective``,
            ``backend_options``, ``seed``, ``objective_options``, ``device``, ``dtype``); any other keyword goes
            to the strategy (unknown ones raise ``TypeError`` before the model is loaded).

    Returns:
        A :class:`~procache_opt.result.SearchResult`; ``.best`` is within the budget and carries the model's
        fingerprint.
    """
    settings = {k: v for k, v in options.items() if k in _FIELDS}
    strategy_options = {**settings.pop("strategy_options", {}), **{k: v for k, v in options.items()
                                                                    if k not in _FIELDS}}
    instance = strategy if isinstance(strategy, Strategy) else None
    config = SearchConfig(
        model=model_label(model), budget_flops=budget_flops,
        strategy=(type(strategy).name or type(strategy).__name__) if instance else strategy,
        objectives=objective, n_trials=n_trials, strategy_options=strategy_options,
        backend=backend if isinstance(backend, str) else "local", **settings,
    )
    return run_search(config, model, storage=storage, progress=progress, strategy=instance,
                      backend=backend if isinstance(backend, Backend) else None)


def run_search(config: SearchConfig, model: Any = None, *, storage: str | os.PathLike[str] | TrialStore | None = None,
               progress: bool = True, strategy: Strategy | None = None, backend: Backend | None = None) -> SearchResult:
    """Run the search ``config`` describes; ``model`` (default: ``config.model``) may be an object.

    Everything is validated before the model is loaded (names, options, numbers, the model reference, the
    storage location), and the storage folder is locked for the duration of the search.

    Example:
        >>> config = procache_opt.SearchConfig(model="dit-digits", budget_flops=0.35, strategy="tpe")  # doctest: +SKIP
        >>> result = procache_opt.run_search(config, storage="runs/tpe-0.35")  # doctest: +SKIP
    """
    config.validate(model, strategy=strategy is None)
    store = open_store(storage)
    with _lock(store):
        return _run(config, model if model is not None else config.model, store, progress, strategy, backend)


def _run(config: SearchConfig, model: Any, store: TrialStore | None, progress: bool, strategy: Strategy | None,
         backend: Backend | None) -> SearchResult:
    watch = _Stopwatch()
    pipe = load_pipeline(model, device=config.device, dtype=_torch_dtype(config.dtype))
    prepared = prepare(config, pipe, worker_model_spec(model))
    stored = store.bind(prepared.identity()) if store is not None else {}
    check_reference(prepared.evaluator, prepared.config)
    watch.lap("setup")
    setup = Setup.from_dict(stored) if stored else measure(prepared, watch.lap)
    prepared.measured = setup.measured_costs
    if store is not None and not stored:
        store.save_setup(setup.to_dict())
    space = build_space(prepared, setup)
    summary = [*setup.summary, f"space: {space.describe()}"]
    if store is not None and (done := store.load_trials()):
        summary.append(f"resumed: {len(done)} stored trials, none evaluated again")
    runner = backend or _make_backend(prepared)
    bar = _Bar(config.n_trials) if progress else None
    try:
        loop = SearchLoop(build_strategy(prepared, space, setup, strategy), runner, prepared.objectives,
                          prepared.costs, config.n_trials, store=store, on_result=bar.update_with if bar else None)
        trials = loop.run()
        if bar:
            bar.complete()
    finally:
        runner.close()
        if bar:
            bar.close()
    watch.lap("trials")
    record = {**prepared.config.to_dict(), "model": {"reference": config.model, **prepared.model},
              "space": space.to_dict()}
    result = SearchResult(trials, config=record, summary_lines=summary, seconds=watch.seconds)
    best = result.best_trial  # raises a clear error when nothing completed within the budget
    start = dataclasses.replace(prepared.fora_start(), forecast_order=setup.forecast)
    if config.include_baseline and (line := start_point_line(trials, best, start)):
        summary.append(line)
    if prepared.measured is not None:
        summary.append(f"best: time ratio {prepared.measured.ratio(result.best):.3f} (measured step costs), FLOPs "
                       f"ratio {prepared.costs.ratio(result.best):.3f} (counted)")
    if config.heldout is not None:
        result.heldout, result.heldout_images = heldout_check(prepared, result.best, setup.forecast)
        summary.append(heldout_line(result.heldout))
        primary = prepared.objectives.names[0]
        result.chosen_trial, line = start_point_guard(result.heldout, trials, start, primary,
                                                      prepared.objectives.directions()[primary])
        if line:
            summary.append(line)
        watch.lap("heldout")
    result.heldout.update({k: v for k, v in (("probe", setup.probe), ("forecast", setup.forecast_choice)) if v})
    logger.info("%s", result.summary())
    return result


def _lock(store: TrialStore | None) -> contextlib.AbstractContextManager[None]:
    """One search at a time per storage folder or SQLite file (other databases arbitrate themselves)."""
    if isinstance(store, DirectoryStore):
        return hold(store.path, "storage")
    if isinstance(store, OptunaStore) and store.sqlite_path is not None:
        path = Path(store.sqlite_path)
        return hold(path.parent, "storage", name=f".{path.name}.lock")
    return contextlib.nullcontext()


def _torch_dtype(name: str | None) -> Any:
    if name is None:
        return None
    import torch

    return getattr(torch, name)


def _make_backend(prepared: Prepared) -> Backend:
    """Local evaluation with the search's memoised evaluator, or Ray workers that each build their own from the
    spec (``SearchConfig.validate`` has refused a pipeline object, which cannot be shipped)."""
    config = prepared.config
    if config.backend == "local":
        return LocalBackend(prepared.evaluate)
    from procache_opt.backends.ray_backend import RayBackend

    return RayBackend(prepared.spec, **dict(config.backend_options))


class _Stopwatch:
    """Seconds per phase: each :meth:`lap` charges the time since the previous one to ``phase``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


class _Bar:
    """A tqdm bar that shows the best loss so far."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc="search", unit="trial")
        self._best = float("inf")

    def update_with(self, result: Any) -> None:
        if result.candidate:
            self._best = min(self._best, result.value)
        self._bar.set_postfix(best=f"{self._best:.4g}", refresh=False)
        self._bar.update(1)

    def complete(self) -> None:
        """The loop ended normally: a strategy that stopped before ``n_trials`` (constrained_sampling evaluates
        its K candidates) leaves a full bar, not one stuck at 6/30."""
        self._bar.total = self._bar.n
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


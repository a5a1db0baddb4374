"""``procache_opt.search``: find the best caching schedule that a FLOPs budget allows.

The function wires the pieces together and owns no algorithm of its own:

1. count the model's per-step costs (``procache_opt.flops``) and build the constrained space,
2. probe where the model tolerates reuse to choose the direction of the interval constraint, and run the FORA
   start point with and without a first-order forecast of reused outputs to choose how to reuse (optional),
3. let a strategy propose, evaluate on a backend against the full computation, store, tell,
4. check the best schedule against the FORA baseline on held-out samples.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from procache_opt.backends.base import Backend
from procache_opt.backends.local import LocalBackend
from procache_opt.baselines import best_fora_within
from procache_opt.calibration import Calibration
from procache_opt.dynamics import ForecastChoice, choose_forecast_order, probe_reuse_sensitivity
from procache_opt.engine import SearchLoop
from procache_opt.evaluate import Scores
from procache_opt.fingerprint import model_signature
from procache_opt.models import IN_PROCESS, load_pipeline, worker_model_spec
from procache_opt.objective import OBJECTIVES
from procache_opt.result import SearchResult
from procache_opt.schedule import FORECAST_ORDERS, Action, Schedule, SelectiveConfig
from procache_opt.space import ScheduleSpace
from procache_opt.spec import EvaluationSpec
from procache_opt.storage import TrialStore, open_store
from procache_opt.strategy import STRATEGIES, Strategy
from procache_opt.strategy_wrappers import Enqueued

__all__ = ["search", "default_v_max"]

logger = logging.getLogger("procache_opt.search")

Monotone = Literal["auto", "decreasing", "increasing"] | None

#: Objectives measured on the held-out set for the final report, beside the searched ones.
HELDOUT_OBJECTIVES = ("feature_error", "psnr", "latency")
#: Samples per timed call and timed calls per schedule of the held-out latency (the compare harness times 2
#: samples): timing every held-out sample three times cost more than the whole search on dit-digits.
HELDOUT_TIMING_SAMPLES, HELDOUT_TIMING_REPEATS = 2, 2


def default_v_max(budget: float, num_steps: int) -> int:
    """Longest reuse run allowed by default: three times the mean interval a budget implies.

    A budget of 0.5 means segments of about 2 steps on average; allowing up to ``ceil(3 / budget)`` steps per
    segment leaves room for long reuse where the model tolerates it and short where it does not.
    """
    return max(1, min(num_steps - 1, math.ceil(3 / max(budget, 1e-6)) - 1))


def _default_guidance(pipe: Any) -> float:
    param = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return float(param.default) if param is not None and param.default is not inspect.Parameter.empty else 4.0


def search(
    model: Any,
    budget_flops: float = 0.5,
    strategy: str | Strategy = "constrained_sampling",
    objective: str | Sequence[str] | Mapping[str, float] = "feature_error",
    n_trials: int = 30,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    calibration: Calibration | int = 8,
    heldout: Calibration | int | None = 16,
    selective: bool | SelectiveConfig = True,
    monotone: Monotone = "auto",
    forecast: int | Literal["auto"] = "auto",
    per_depth: bool = False,
    depth_split: float = 0.5,
    v_min: int = 0,
    v_max: int | None = None,
    include_baseline: bool = True,
    multi_objective: bool = False,
    backend: Literal["local", "ray"] | Backend = "local",
    backend_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    storage: str | TrialStore | None = None,
    progress: bool = True,
    objective_options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | None = None,
    dtype: Any = None,
    **strategy_kwargs: Any,
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
        num_inference_steps: Denoising steps of the schedule.
        guidance_scale: Classifier-free guidance scale (default: the pipeline's own default).
        calibration: The search's calibration set, or its size (default samples for the model).
        heldout: A disjoint set to judge the best schedule against the FORA baseline, its size, or
            ``None`` to skip the check.
        selective: Inject ProCache's selective computation (Eq. 7) with these settings (``True``: defaults).
        monotone: Direction of the interval constraint (Eq. 3): ``"decreasing"`` (the paper's prior),
            ``"increasing"``, ``None`` (any order), or ``"auto"`` (probe the model and choose).
        forecast: ``Schedule.forecast_order`` of every proposal: 0 reuses outputs as cached (FORA, ProCache),
            1 forecasts them to first order (TaylorSeer); ``"auto"`` runs the FORA start point both ways on
            the calibration set (two runs) and keeps the lower loss.
        per_depth: Search the per-depth space (``ScheduleSpace(refresh="deep")``): at the Eq. 7 positions the
            deep blocks recompute in full instead of selectively (needs ``selective`` on).
        depth_split: Share of the blocks, from the input end, in the shallow group of per-depth schedules.
        v_min: Shortest reuse run (Eq. 4); 0 lets late steps compute in full back to back.
        v_max: Longest reuse run (default: :func:`default_v_max`).
        include_baseline: Evaluate the best FORA schedule within the budget first, so the result is never
            worse than it on the calibration set.
        multi_objective: Let the strategy optimise each objective and the FLOPs ratio as separate goals
            (``tpe`` and ``evolutionary`` support it); ``result.pareto`` then serves every budget up to
            ``budget_flops``.
        backend: ``"local"``, ``"ray"`` (one worker per GPU, see ``backend_options``) or a Backend.
        backend_options: Keyword arguments for the Ray backend (``num_workers``, ``address``, ...).
        seed: Seeds the strategy (the same seed gives the same proposals).
        storage: A results folder or an Optuna storage URL; makes the search resumable.
        progress: Show a progress bar.
        objective_options: Keyword arguments per objective name.
        device: Move the pipeline to this device.
        dtype: Cast the pipeline to this torch dtype.
        **strategy_kwargs: Passed to the strategy (unknown ones raise ``TypeError``).

    Returns:
        A :class:`~procache_opt.result.SearchResult`; ``.best`` is within the budget.
    """
    if not 0 < budget_flops <= 1:
        raise ValueError(f"budget_flops must be in (0, 1] (a fraction of full computation), got {budget_flops}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if forecast != "auto" and forecast not in FORECAST_ORDERS:
        raise ValueError(f"forecast={forecast!r}; use 'auto' or a forecast order in {FORECAST_ORDERS}")
    watch = _Stopwatch()
    pipe = load_pipeline(model, device=device, dtype=dtype)
    selective_cfg = SelectiveConfig() if selective is True else (selective or None)
    if per_depth and selective_cfg is None:
        raise ValueError("per_depth=True puts DEEP refreshes where selective computation would go (Eq. 7); it "
                         "needs selective=True (or a SelectiveConfig), not selective=False")
    spec = EvaluationSpec(
        model=worker_model_spec(model),
        calibration=calibration if isinstance(calibration, Calibration)
        else Calibration.default(pipe, num_samples=calibration, split="search"),
        objectives=_objective_weights(objective),
        objective_options=dict(objective_options or {}),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale if guidance_scale is not None else _default_guidance(pipe),
        selective=selective_cfg or SelectiveConfig(),
        depth_split=depth_split,
        device=device,
        dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
    )
    evaluator = spec.build_evaluator(pipe)
    # Runs made before the loop (the forecast choice) are trials too: memoised, none is evaluated twice.
    evaluate = functools.cache(evaluator.evaluate)
    costs = evaluator.costs
    summary: list[str] = []
    watch.lap("setup")

    measured: dict[str, Any] = {}
    if monotone == "auto":
        error = OBJECTIVES.create("feature_error")
        reference = evaluator.reference()
        probe = probe_reuse_sensitivity(lambda s: error.score(evaluator.run(s), reference).mean, num_inference_steps)
        monotone = probe.direction
        measured["probe"] = probe.to_dict()
        summary.append(f"probe: {probe.summary()}")
        watch.lap("probe")
    injected = Action.DEEP if per_depth else Action.SELECTIVE
    # FORA's steps with the search's selective settings: the ones the FLOPs were counted for.
    fora_plain = replace(best_fora_within(costs, budget_flops, selective=selective_cfg is not None, injected=injected,
                                          depth_split=depth_split), selective=spec.selective)
    if forecast == "auto":
        choice = _choose_forecast(evaluate, spec, fora_plain)
        forecast = choice.order
        measured["forecast"] = choice.to_dict()
        summary.append(f"forecast: {choice.summary()}")
        watch.lap("forecast")
    space = ScheduleSpace(
        num_inference_steps,
        max_flops_ratio=budget_flops,
        costs=costs,
        v_min=v_min,
        v_max=v_max if v_max is not None else default_v_max(budget_flops, num_inference_steps),
        monotone=monotone,
        selective=selective_cfg is not None,
        selective_config=selective_cfg or SelectiveConfig(),
        forecast_order=forecast,
        refresh="deep" if per_depth else "selective",
        depth_split=depth_split,
    )
    summary.append(f"space: {space.describe()}")
    strategy_name = strategy if isinstance(strategy, str) else type(strategy).name or type(strategy).__name__
    if multi_objective:
        if isinstance(strategy, str) and "objectives" not in inspect.signature(STRATEGIES.get(strategy)).parameters:
            raise ValueError(
                f"strategy {strategy!r} optimises one loss; multi_objective=True needs a strategy with an "
                "`objectives` argument, e.g. 'tpe' or 'evolutionary'"
            )
        goals = spec.objective_set().directions() | {"flops_ratio": "minimize"}
        strategy_kwargs = {**strategy_kwargs, "objectives": list(goals), "directions": list(goals.values())}
    inner = STRATEGIES.create(strategy, space, seed=seed, **strategy_kwargs) if isinstance(strategy, str) else strategy
    baseline = replace(fora_plain, forecast_order=forecast)
    proposer = Enqueued(inner, [baseline]) if include_baseline else inner

    model_class, fingerprint = model_signature(pipe.transformer)
    config = {
        "model": {"class": model_class, "fingerprint": fingerprint},
        "budget_flops": budget_flops,
        "strategy": strategy_name,
        "strategy_kwargs": {k: repr(v) for k, v in sorted(strategy_kwargs.items())},
        "objectives": spec.objective_set().to_dict(),
        "num_inference_steps": num_inference_steps,
        "guidance_scale": spec.guidance_scale,
        "calibration": spec.calibration.to_dict(),
        "space": space.to_dict(),
        "include_baseline": include_baseline,
        "multi_objective": multi_objective,
        "seed": seed,
    }
    store = open_store(storage)
    if store is not None:
        store.bind(config)
        stored = store.load_trials()
        if stored:
            summary.append(f"resumed: {len(stored)} stored trials, none evaluated again")

    runner = _make_backend(backend, spec, evaluate, backend_options)
    bar = _progress_bar(n_trials, progress)
    try:
        loop = SearchLoop(proposer, runner, spec.objective_set(), costs, n_trials, store=store,
                          on_result=bar.update_with if bar else None)
        trials = loop.run()
        if bar:
            bar.complete()
    finally:
        runner.close()
        if bar:
            bar.close()

    watch.lap("trials")
    result = SearchResult(trials, config=config, summary_lines=summary, seconds=watch.seconds)
    result.best_trial  # noqa: B018 - raises a clear error when nothing completed within the budget
    if heldout is not None:
        baselines = {"fora_baseline": fora_plain} | ({"uniform_baseline": baseline} if baseline != fora_plain else {})
        result.heldout, result.heldout_images = _heldout_check(pipe, spec, heldout, result.best, baselines)
        summary.append(_heldout_line(result.heldout))
        watch.lap("heldout")
    result.heldout.update(measured)
    logger.info("%s", result.summary())
    return result


def _objective_weights(objective: str | Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    if isinstance(objective, str):
        return {objective: 1.0}
    if isinstance(objective, Mapping):
        return {str(k): float(v) for k, v in objective.items()}
    return dict.fromkeys(objective, 1.0)


def _make_backend(backend: str | Backend, spec: EvaluationSpec, evaluate: Callable[[Schedule], Scores],
                  options: Mapping[str, Any] | None) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if backend == "local":
        if options:
            raise TypeError(f"backend='local' takes no backend_options, got {sorted(options)}")
        return LocalBackend(evaluate)
    if backend == "ray":
        if spec.model == IN_PROCESS:
            raise ValueError(
                "backend='ray' ships the model to workers by name: pass a zoo name, a pipeline folder or a "
                "picklable factory as `model`, not a pipeline object"
            )
        from procache_opt.backends.ray_backend import RayBackend

        return RayBackend(spec, **dict(options or {}))
    raise ValueError(f"unknown backend {backend!r}; use 'local', 'ray' or a procache_opt.backends.Backend")


def _choose_forecast(evaluate: Callable[[Schedule], Scores], spec: EvaluationSpec,
                     schedule: Schedule) -> ForecastChoice:
    """Run ``schedule`` reusing as cached and forecasting, on the calibration set; keep the lower search loss."""
    objectives = spec.objective_set()

    def loss_of(candidate: Schedule) -> float:
        try:
            return objectives.scalarize(evaluate(candidate))
        except FloatingPointError:  # NonFiniteOutputError: this way of reusing diverges on this model
            return math.inf

    return choose_forecast_order(loss_of, schedule)


def _heldout_check(pipe: Any, spec: EvaluationSpec, heldout: Calibration | int, best: Schedule,
                   baselines: Mapping[str, Schedule]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the best schedule and the baselines on samples the search never saw.

    Returns the scores (``SearchResult.heldout``) and the decoded images of the full computation and the best
    schedule (``SearchResult.heldout_images``, which the before/after picture shows).

    ``fora_baseline`` is FORA as published (outputs reused as cached); ``uniform_baseline``, when the search
    forecasts, is the same steps with the search's forecast: the gap between them is the forecast's, the gap
    between it and ``best`` the search's.
    """
    calibration = heldout if isinstance(heldout, Calibration) else Calibration.default(
        pipe, num_samples=heldout, split="heldout")
    names = dict.fromkeys([*spec.objectives, *HELDOUT_OBJECTIVES], 1.0)
    # Latency on a few samples: timing all of them would cost more than the search itself on a small model.
    evaluator = replace(spec, calibration=calibration, objectives=names).build_evaluator(
        pipe, timing_samples=HELDOUT_TIMING_SAMPLES, timing_repeats=HELDOUT_TIMING_REPEATS)
    out: dict[str, Any] = {"num_samples": len(calibration)}
    images = {"full": evaluator.reference().images}
    for label, schedule in {"best": best, **baselines}.items():
        run = evaluator.run(schedule)
        images.setdefault(label, run.images)
        out[label] = {
            "pattern": str(schedule),
            "flops_ratio": evaluator.costs.ratio(schedule),
            "scores": {name: s.to_dict() for name, s in evaluator.score(run).items()},
        }
    return out, {name: images[name] for name in ("full", "best")}


def _heldout_line(heldout: Mapping[str, Any]) -> str:
    best = heldout["best"]["scores"]
    names = {"fora_baseline": "FORA", "uniform_baseline": "FORA+forecast"}
    parts = []
    for name in best:
        others = [f"{label} {heldout[key]['scores'][name]['mean']:.4g}" for key, label in names.items()
                  if key in heldout and name in heldout[key]["scores"]]
        parts.append(f"{name}: best {best[name]['mean']:.4g} vs " + ", ".join(others))
    return f"held-out ({heldout['num_samples']} samples): " + "; ".join(parts)


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
        if result.ok:
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


def _progress_bar(total: int, enabled: bool) -> _Bar | None:
    return _Bar(total) if enabled else None

"""The phases of a search, each a short function that can be run and tested alone.

1. :func:`prepare`: resolve the pipeline's defaults into the :class:`~procache_opt.search_config.SearchConfig`,
   count the model's costs, build the one :class:`~procache_opt.scoring.ObjectiveSet` and the evaluator, and
   fingerprint the model; :func:`check_reference` then checks that the full computation itself is finite (a NaN
   model is the model's or the settings' fault, not every schedule's);
2. :func:`measure`: probe where the model tolerates reuse (ProCache's interval order, Eq. 3) and run the FORA
   start point with and without a first-order forecast (TaylorSeer), or reuse what a stored search measured;
3. :func:`build_space` and :func:`build_strategy` (the FORA start point is proposed first);
4. the loop (:class:`procache_opt.engine.SearchLoop`);
5. :func:`heldout_check`: the best schedule against FORA on samples the search never saw, and
   :func:`start_point_guard`: the FORA start point instead when the searched best is worse there.

The comparison harness runs phases 1 and 2 once for all its searches, so every search shares one space.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from procache_opt.baselines import best_fora_within
from procache_opt.calibration import Calibration
from procache_opt.costs import StepCosts
from procache_opt.dynamics import choose_forecast_order, probe_reuse_sensitivity
from procache_opt.evaluate import Evaluator, NonFiniteOutputError, Scores
from procache_opt.fingerprint import model_signature, weights_fingerprint
from procache_opt.models import ModelSpec
from procache_opt.objective import OBJECTIVES
from procache_opt.runtimes import create_runtime
from procache_opt.schedule import Action, Schedule, SelectiveConfig
from procache_opt.scoring import ObjectiveSet
from procache_opt.search_config import SearchConfig
from procache_opt.space import ScheduleSpace
from procache_opt.spec import EvaluationSpec
from procache_opt.strategy import STRATEGIES, Strategy, TrialResult
from procache_opt.strategy_wrappers import Enqueued

__all__ = ["FullComputationError", "Prepared", "Setup", "build_space", "build_strategy", "check_reference",
           "default_v_max", "heldout_check", "heldout_line", "measure", "prepare", "start_point_guard"]

#: Objectives measured on the held-out set for the final report, beside the searched ones.
HELDOUT_OBJECTIVES = ("feature_error", "psnr", "latency")
#: Samples per timed call and timed calls per schedule of the held-out latency (the compare harness times 2
#: samples): timing every held-out sample three times cost more than the whole search on dit-digits.
HELDOUT_TIMING_SAMPLES, HELDOUT_TIMING_REPEATS = 2, 2


class FullComputationError(ValueError):
    """The model without any caching already produces NaN or infinite outputs."""


def default_v_min(budget: float, num_steps: int, monotone: str | None) -> int:
    """Shortest reuse run allowed by default: 1 (a FULL step is never followed by another) at budgets up to 0.5,
    unless the intervals grow along denoising (``monotone="increasing"``); 0 otherwise.

    The authors' spaces have ``v_min >= 1`` (2 in their sampling example). With ``v_min = 0`` the default
    sample-and-pick spends its FULL steps in adjacent pairs and leaves long reuse runs elsewhere. Held-out error
    of the default search (benchmarks/results/generality.md, 2026-12-06, one seed, 16 samples), ``v_min`` 0 -> 1:
    `dit-digits` at 50 steps 0.0099 -> 0.0075 (budget 0.5) and 0.0183 -> 0.0148 (0.35); at 25 steps
    0.0148 -> 0.0115 and 0.0636 -> 0.0409; `pixart-digits` at 20 steps 0.0584 -> 0.0320 and 0.1338 -> 0.1158.
    The exception is measured too: on the cosine-schedule variant, where the probe chooses increasing intervals
    (the early steps are the sensitive ones), ``v_min = 1`` made it 3.1x worse at 0.5 (0.0074 -> 0.0228) and
    1.6x at 0.35: an error made early is carried through every later step, so there the search must be free
    to compute consecutive early steps. Above 0.5 alternating FULL and REUSE could not spend the budget.
    """
    keep_apart = budget <= 0.5 and monotone != "increasing"
    return min(1 if keep_apart else 0, num_steps - 1)


def default_v_max(budget: float, num_steps: int) -> int:
    """Longest reuse run allowed by default: three times the mean interval a budget implies.

    A budget of 0.5 means segments of about 2 steps on average; allowing up to ``ceil(3 / budget)`` steps per
    segment leaves room for long reuse where the model tolerates it and short where it does not.
    """
    return max(1, min(num_steps - 1, math.ceil(3 / max(budget, 1e-6)) - 1))


def _default_guidance(pipe: Any) -> float:
    import inspect

    param = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return float(param.default) if param is not None and param.default is not inspect.Parameter.empty else 4.0


@dataclass
class Prepared:
    """A search's config with the pipeline's defaults filled in, and what every later phase uses.

    Attributes:
        config: ``guidance_scale``, ``calibration`` and ``v_max`` resolved (what the identity records);
            ``v_min`` stays unset when unset: its default follows the probe's interval order (:func:`build_space`).
        pipe: The loaded pipeline.
        spec: What a Ray worker needs to build its own evaluator.
        evaluator: Scores schedules on the calibration set with :attr:`objectives`.
        objectives: The one objective set of the search (LPIPS loads its network once).
        model: ``class``, ``fingerprint`` (config), ``weights``, ``dtype`` and ``device`` of the model.
        measured: With ``cost="measured"``, the step costs in seconds the budget counts (set by :func:`measure`
            or from a stored :class:`Setup`); ``None``: the budget counts FLOPs.
        evaluate: ``evaluator.evaluate``, memoised: the forecast choice's runs are trials too.
    """

    config: SearchConfig
    pipe: Any
    spec: EvaluationSpec
    evaluator: Evaluator
    objectives: ObjectiveSet
    model: dict[str, str]
    measured: StepCosts | None = None
    evaluate: Callable[[Schedule], Scores] = field(init=False)

    def __post_init__(self) -> None:
        self.evaluate = functools.cache(self.evaluator.evaluate)

    @property
    def costs(self) -> StepCosts:
        """Counted FLOPs of each action at each step (what every trial's ``flops_ratio`` reports)."""
        return self.evaluator.costs

    @property
    def budget_costs(self) -> StepCosts:
        """What the budget counts: measured seconds with ``cost="measured"``, else the counted FLOPs."""
        return self.measured if self.measured is not None else self.costs

    @property
    def selective(self) -> SelectiveConfig:
        return self.config.selective or SelectiveConfig()

    def fora_start(self) -> Schedule:
        """FORA's best uniform schedule within the budget with the search's selective settings (the ones its
        FLOPs were counted for), reusing as cached."""
        c = self.config
        schedule = best_fora_within(self.budget_costs, c.budget_flops, selective=c.selective is not None,
                                    injected=Action.DEEP if c.per_depth else Action.SELECTIVE,
                                    depth_split=c.depth_split)
        return replace(schedule, selective=self.selective)

    def identity(self) -> dict[str, Any]:
        """Everything that changes a score (see :mod:`procache_opt.identity`)."""
        return {**self.config.identity(), "model": dict(self.model)}


def prepare(config: SearchConfig, pipe: Any, worker_model: ModelSpec) -> Prepared:
    """Phase 1: fill in the pipeline's defaults, build the evaluator and objectives, fingerprint the model.

    Nothing is generated yet: a stored search's identity is checked against :meth:`Prepared.identity` before
    :func:`check_reference` runs the full computation. A runtime that runs no SELECTIVE steps searches without
    selective computation, and one with a single forecast order resolves ``forecast="auto"`` to it.
    """
    runtime = create_runtime(config.runtime, **config.runtime_options)
    config = replace(
        config,
        selective=config.selective if Action.SELECTIVE in runtime.actions else None,
        forecast=runtime.forecast_orders[0] if config.forecast == "auto" and len(runtime.forecast_orders) == 1
        else config.forecast,
        guidance_scale=config.guidance_scale if config.guidance_scale is not None else _default_guidance(pipe),
        calibration=config.calibration if isinstance(config.calibration, Calibration)
        else Calibration.default(pipe, num_samples=config.calibration, split="search"),
        v_max=config.v_max if config.v_max is not None else default_v_max(config.budget_flops,
                                                                            config.num_inference_steps),
    )
    objectives = ObjectiveSet.from_spec(config.objectives, config.objective_options)
    spec = EvaluationSpec(model=worker_model, calibration=config.calibration, objectives=config.objectives,
                          objective_options=config.objective_options, num_inference_steps=config.num_inference_steps,
                          guidance_scale=config.guidance_scale, selective=config.selective or SelectiveConfig(),
                          depth_split=config.depth_split, device=config.device, dtype=config.dtype,
                          runtime=config.runtime, runtime_options=config.runtime_options)
    evaluator = spec.build_evaluator(pipe, objectives=objectives)
    model_class, fingerprint = model_signature(pipe.transformer)
    modules = {name: m for name, m in pipe.components.items() if hasattr(m, "state_dict")}
    model = {"class": model_class, "fingerprint": fingerprint, "weights": weights_fingerprint(modules),
             "dtype": str(pipe.transformer.dtype).removeprefix("torch."), "device": pipe.device.type}
    return Prepared(config, pipe, spec, evaluator, objectives, model)


def check_reference(evaluator: Evaluator, config: SearchConfig) -> None:
    """The full computation must be finite, or every trial would fail for a fault that is not its schedule's."""
    try:
        evaluator.reference()
    except NonFiniteOutputError as exc:
        what = str(exc).split(" produced ", 1)[-1].split(";")[0]
        raise FullComputationError(
            f"the full computation (no caching) already produces {what}: the "
            f"model or the settings are at fault, not a schedule (guidance_scale={config.guidance_scale}, "
            f"dtype={config.dtype or 'as loaded'}); check the model, use float32 or a smaller guidance scale"
        ) from None


@dataclass(frozen=True)
class Setup:
    """What a search measured to set itself up: the interval order and the forecast order, with the evidence.

    Attributes:
        monotone: The interval-order constraint the space uses.
        forecast: The ``forecast_order`` of every proposal.
        probe: The reuse-sensitivity probe (``DynamicsReport.to_dict()``), if it ran.
        forecast_choice: The forecast-order runs (``ForecastChoice.to_dict()``), if they ran.
        probe_summary: The probe in one line, if it ran.
        forecast_summary: The forecast choice in one line, if it ran.
        step_costs: With ``cost="measured"``, the measured :class:`StepCosts` (seconds) as a dict: stored, so a
            resumed search keeps the budget it started with.
    """

    monotone: str | None
    forecast: int
    probe: dict[str, Any] | None = None
    forecast_choice: dict[str, Any] | None = None
    probe_summary: str | None = None
    forecast_summary: str | None = None
    step_costs: dict[str, Any] | None = None

    @property
    def measured_costs(self) -> StepCosts | None:
        if self.step_costs is None:
            return None
        return StepCosts(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in self.step_costs.items()})

    @property
    def summary(self) -> list[str]:
        lines = [f"{what}: {line}" for what, line in (("probe", self.probe_summary),
                                                      ("forecast", self.forecast_summary)) if line]
        costs = self.measured_costs
        if costs is not None:
            lines.append(f"cost: the budget counts time measured on this device: FULL {costs.full[0] * 1e3:.2f} ms, "
                         f"REUSE {costs.reuse[0] * 1e3:.2f} ms ({costs.reuse[0] / costs.full[0]:.1%} of FULL) per "
                         "step")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Setup:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def measure(prepared: Prepared, lap: Callable[[str], None] = lambda phase: None) -> Setup:
    """Phase 2: choose the interval order (``monotone="auto"``) and the forecast order (``forecast="auto"``).

    The probe scores FULL schedules with one REUSE step by feature error; the forecast choice runs the FORA
    start point both ways and keeps the lower search loss (a run that diverges loses). ``lap`` is told when
    each measurement ends (the search's stopwatch).
    """
    config, evaluator = prepared.config, prepared.evaluator
    setup = Setup(config.monotone, 0 if config.forecast == "auto" else config.forecast)
    if config.cost == "measured":  # first: the FORA start point of the forecast choice is chosen within the budget
        prepared.measured = evaluator.measured_costs()
        setup = replace(setup, step_costs=asdict(prepared.measured))
        lap("costs")
    if config.monotone == "auto":
        error = OBJECTIVES.create("feature_error")
        report = probe_reuse_sensitivity(lambda s: error.score(evaluator.run(s), evaluator.reference()).mean,
                                         config.num_inference_steps)
        setup = replace(setup, monotone=report.direction, probe=report.to_dict(), probe_summary=report.summary())
        lap("probe")
    if config.forecast == "auto":
        def loss_of(candidate: Schedule) -> float:
            try:
                return prepared.objectives.scalarize(prepared.evaluate(candidate))
            except FloatingPointError:  # NonFiniteOutputError: this way of reusing diverges on this model
                return math.inf

        made = choose_forecast_order(loss_of, prepared.fora_start())
        setup = replace(setup, forecast=made.order, forecast_choice=made.to_dict(), forecast_summary=made.summary())
        lap("forecast")
    return setup


def build_space(prepared: Prepared, setup: Setup) -> ScheduleSpace:
    """Phase 3a: the constrained space (ProCache Eqs. 2-4 and the FLOPs budget) the strategy searches."""
    c = prepared.config
    v_min = c.v_min if c.v_min is not None else default_v_min(c.budget_flops, c.num_inference_steps, setup.monotone)
    return ScheduleSpace(c.num_inference_steps, max_flops_ratio=c.budget_flops, costs=prepared.budget_costs,
                         v_min=v_min, v_max=c.v_max, monotone=setup.monotone, selective=c.selective is not None,
                         selective_config=prepared.selective, forecast_order=setup.forecast,
                         refresh="deep" if c.per_depth else "selective", depth_split=c.depth_split)


def build_strategy(prepared: Prepared, space: ScheduleSpace, setup: Setup,
                   instance: Strategy | None = None) -> Strategy:
    """Phase 3b: the configured strategy (or ``instance``), proposing the FORA start point first."""
    c = prepared.config
    if instance is None:
        options = dict(c.strategy_options)
        if c.multi_objective:
            goals = prepared.objectives.directions() | {"flops_ratio": "minimize"}
            options.update(objectives=list(goals), directions=list(goals.values()))
        instance = STRATEGIES.create(c.strategy, space, seed=c.seed, **options)
    baseline = replace(prepared.fora_start(), forecast_order=setup.forecast)
    return Enqueued(instance, [baseline]) if c.include_baseline else instance


def heldout_check(prepared: Prepared, best: Schedule, forecast: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phase 5: score the best schedule and the FORA baselines on samples the search never saw.

    Returns the scores (``SearchResult.heldout``) and the decoded images of the full computation, the best
    schedule and FORA (``SearchResult.heldout_images``, which the before/after picture shows). ``fora_baseline`` is FORA
    as published (outputs reused as cached); ``uniform_baseline``, when the search forecasts, is the same steps
    with the search's forecast: the gap between them is the forecast's, the gap to ``best`` the search's.
    """
    c, pipe = prepared.config, prepared.pipe
    calibration = c.heldout if isinstance(c.heldout, Calibration) else Calibration.default(
        pipe, num_samples=c.heldout, split="heldout")
    searched = dict(zip(prepared.objectives.names, prepared.objectives.objectives, strict=True))
    extra = tuple(OBJECTIVES.create(n) for n in HELDOUT_OBJECTIVES if n not in searched)
    objectives = ObjectiveSet((*searched.values(), *extra), (1.0,) * (len(searched) + len(extra)))
    # Latency on a few samples: timing all of them would cost more than the search itself on a small model.
    evaluator = replace(prepared.spec, calibration=calibration).build_evaluator(
        pipe, objectives=objectives, timing_samples=HELDOUT_TIMING_SAMPLES, timing_repeats=HELDOUT_TIMING_REPEATS)
    check_reference(evaluator, c)
    fora = prepared.fora_start()
    schedules = {"best": best, "fora_baseline": fora}
    if forecast != fora.forecast_order:
        schedules["uniform_baseline"] = replace(fora, forecast_order=forecast)
    out: dict[str, Any] = {"num_samples": len(calibration)}
    images = {"full": evaluator.reference().images}
    for label, schedule in schedules.items():
        run = evaluator.run(schedule)
        images.setdefault(label, run.images)
        out[label] = {
            "pattern": str(schedule),
            "flops_ratio": evaluator.costs.ratio(schedule),
            "scores": {name: s.to_dict() for name, s in evaluator.score(run).items()},
        }
    return out, {name: images[name] for name in ("full", "best", "fora_baseline")}


def heldout_line(heldout: Mapping[str, Any]) -> str:
    """The held-out check in one line: each objective of the best schedule against the baselines."""
    best = heldout["best"]["scores"]
    names = {"fora_baseline": "FORA", "uniform_baseline": "FORA+forecast"}
    parts = []
    for name in best:
        others = [f"{label} {heldout[key]['scores'][name]['mean']:.4g}" for key, label in names.items()
                  if key in heldout and name in heldout[key]["scores"]]
        parts.append(f"{name}: best {best[name]['mean']:.4g} vs " + ", ".join(others))
    return f"held-out ({heldout['num_samples']} samples): " + "; ".join(parts)


def start_point_line(trials: list[TrialResult], best: TrialResult, start: Schedule) -> str | None:
    """The summary line saying that the search's best is the FORA start point itself (a search that found
    nothing better than its baseline should say so, not look like a result); ``None`` otherwise."""
    if best.schedule != start:
        return None
    others = sum(1 for t in trials if t.ok and not t.probe and t.schedule != start)
    return (f"best: the FORA start point itself; none of the {others} other schedules tried beat it on the "
            "calibration samples (more trials, or strategy='tpe', search further)")


def start_point_guard(heldout: Mapping[str, Any], trials: list[TrialResult], start: Schedule, primary: str,
                      direction: str) -> tuple[int | None, str | None]:
    """Never worse than the FORA start point: the start point's trial when the searched best loses to it on the
    held-out samples in the primary objective, with the summary line saying so; ``(None, None)`` otherwise.

    The start point is scored there as ``uniform_baseline`` (FORA with the search's forecast) or, when the
    search reuses as cached, ``fora_baseline``. The stored trials are left as they are: the result only names
    which of them it returns. Without a start-point trial (``include_baseline=False``) nothing changes.
    """
    key = "uniform_baseline" if "uniform_baseline" in heldout else "fora_baseline"
    trial = next((t for t in trials if t.ok and not t.probe and t.schedule == start), None)
    if trial is None or key not in heldout or heldout["best"]["pattern"] == heldout[key]["pattern"]:
        return None, None
    searched = heldout["best"]["scores"][primary]["mean"]
    baseline = heldout[key]["scores"][primary]["mean"]
    worse = searched > baseline if direction == "minimize" else searched < baseline
    if not worse:
        return None, None
    return trial.trial_id, (f"held-out: the searched best ({primary} {searched:.4g}) is worse than the FORA start "
                            f"point ({baseline:.4g}); returning the start point (trial {trial.trial_id})")

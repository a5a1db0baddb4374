"""``SearchConfig``: everything that defines a search, as one frozen, validated, JSON-serialisable value.

The Python API (:func:`procache_opt.search`), the CLI, sweeps and the comparison harness all build one
instead of re-listing keywords (style guide, item 16), and it is checked whole before any model is loaded
(item 17): numbers finite and in range, names against the plugin registries, options against each plugin's
signature. A user's mistake costs a second, not the minutes a model load and a probe take.

Pure Python (no torch): the CLI validates a config before it imports torch.

Example:
    >>> config = SearchConfig(budget_flops=0.35, strategy="tpe", strategy_options={"n_startup_trials": 8})
    >>> SearchConfig.from_dict(config.to_dict()) == config
    True
    >>> SearchConfig(budget_flops=1.5)
    Traceback (most recent call last):
    ...
    procache_opt.search_config.ConfigError: budget_flops: must be a fraction of full computation in (0, 1], got 1.5
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from procache_opt.calibration import Calibration
from procache_opt.runtimes._base import DEFAULT_RUNTIME
from procache_opt.schedule import FORECAST_ORDERS, Action, SelectiveConfig

__all__ = ["ConfigError", "SearchConfig", "IDENTITY_FIELDS", "objective_weights"]

Monotone = Literal["auto", "decreasing", "increasing"] | None

#: Fields that change what a trial scores: a stored search resumes only into a search equal on all of them
#: (with the model's weights, dtype and device class, see :mod:`procache_opt.identity`). ``n_trials`` may grow,
#: ``heldout`` only judges the result, and the backend decides where evaluations run, not what they give.
IDENTITY_FIELDS = ("budget_flops", "cost", "strategy", "strategy_options", "objectives", "objective_options",
                   "num_inference_steps", "guidance_scale", "calibration", "selective", "monotone", "forecast",
                   "per_depth", "depth_split", "v_min", "v_max", "include_baseline", "multi_objective", "seed",
                   "runtime", "runtime_options")

#: Strategy arguments procache-opt passes itself (``objectives`` and ``directions`` in multi-objective searches).
_STRATEGY_RESERVED = ("space", "seed", "objectives", "directions")

_DTYPES = ("float32", "float16", "bfloat16", "float64")
_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|npu|hpu)(:\d+)?$")


class ConfigError(ValueError):
    """A setting that is wrong, named by its field (the CLI turns the field into its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def objective_weights(objective: str | Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """What users write for objectives as ``{name: weight}``: ``"lpips"``, ``["lpips", "latency"]`` (equal
    weights) or ``{"feature_error": 1, "latency": 0.1}``. The one parser the API, CLI and sweeps share."""
    if isinstance(objective, str):
        names: dict[str, Any] = {n.strip(): 1.0 for n in objective.split(",") if n.strip()}
    elif isinstance(objective, Mapping):
        names = dict(objective)
    elif isinstance(objective, Sequence) and all(isinstance(n, str) for n in objective):
        names = dict.fromkeys(objective, 1.0)
    else:
        raise ConfigError("objective", f"a name, a list of names or {{name: weight}}, got {objective!r}")
    if not names:
        raise ConfigError("objective", "at least one objective is needed, e.g. 'feature_error'")
    for name, weight in names.items():
        if not isinstance(name, str) or not _is_real(weight) or not math.isfinite(weight) or weight < 0:
            raise ConfigError("objective", f"{name!r} needs a finite weight >= 0, got {weight!r}")
    return {name: float(weight) for name, weight in names.items()}


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """``value`` as JSON; an object JSON cannot hold (a custom operator) is named by its class, stably."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        if isinstance(value, Mapping):
            return {str(k): _plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_plain(v) for v in value]
        return f"<{type(value).__module__}.{type(value).__qualname__}>"


@dataclass(frozen=True)
class SearchConfig:
    """One search: the model it runs, the space it searches, how it scores and how it proposes.

    Attributes:
        model: A zoo name or pipeline folder; for a pipeline object or factory, a label (the object is passed
            beside the config).
        budget_flops: Largest cost ratio against full computation, in (0, 1]: counted FLOPs (guidance included)
            with ``cost="flops"``, measured time with ``cost="measured"``.
        cost: What the budget counts: ``"flops"`` (counted, the same on every device) or ``"measured"`` (each
            action's seconds per step, timed on the search's device before the search; see
            :mod:`procache_opt.measured_costs`).
        strategy: A registered strategy name (``procache_opt.strategies.available()``).
        strategy_options: Keyword arguments of the strategy (checked against its signature).
        objectives: Objective names and weights; strategies minimise the weighted sum.
        objective_options: Keyword arguments per objective name (checked against its signature).
        n_trials: Distinct schedules to evaluate at most.
        num_inference_steps: Denoising steps (at least 2: a single step has nothing to reuse).
        guidance_scale: Classifier-free guidance scale (``None``: the pipeline's default).
        calibration: The calibration set, or its size (default samples for the model).
        heldout: The held-out set or its size, or ``None`` to skip the final check.
        selective: ProCache's selective computation settings (Eq. 7), ``None`` for plain reuse.
        monotone: Interval order (Eq. 3): ``"decreasing"``, ``"increasing"``, ``None`` or ``"auto"`` (probe).
        forecast: ``Schedule.forecast_order`` of every proposal, or ``"auto"`` (measure both).
        per_depth: Search the per-depth space (needs ``selective``).
        depth_split: Share of the blocks in the shallow group of per-depth schedules, in (0, 1).
        v_min: Shortest reuse run (Eq. 4); ``None``: 1 (no two FULL steps in a row, as in the authors' spaces)
            when the budget is at most 0.5 and the intervals do not grow along denoising, else 0 (measured:
            ``search_phases.default_v_min``).
        v_max: Longest reuse run (``None``: three times the mean interval the budget implies).
        include_baseline: Evaluate the best FORA schedule within the budget first.
        multi_objective: Optimise each objective and the FLOPs ratio as separate goals.
        runtime: What executes each candidate (``procache_opt.runtimes``): ``"procache"`` (this project's hooks,
            every action) or ``"cache-dit"`` (the schedule becomes cache-dit's static steps computation mask; FULL
            and REUSE steps only, so ``selective`` is ignored and ``forecast="auto"`` means 0).
        runtime_options: Keyword arguments of the runtime (cache-dit: ``Fn_compute_blocks``, ``Bn_compute_blocks``,
            ``calibrator="taylorseer"``, ...).
        backend: ``"local"`` or ``"ray"``.
        backend_options: Keyword arguments of the Ray backend.
        seed: Seeds the strategy.
        device: Torch device to move the pipeline to (``None``: leave it).
        dtype: Torch dtype name to cast the pipeline to (``None``: leave it).
    """

    model: str = "dit-digits"
    budget_flops: float = 0.5
    cost: Literal["flops", "measured"] = "flops"
    strategy: str = "constrained_sampling"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    objectives: Mapping[str, float] = field(default_factory=lambda: {"feature_error": 1.0})
    objective_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    n_trials: int = 30
    num_inference_steps: int = 50
    guidance_scale: float | None = None
    calibration: int | Calibration = 8
    heldout: int | Calibration | None = 16
    selective: SelectiveConfig | None = field(default_factory=SelectiveConfig)
    monotone: Monotone = "auto"
    forecast: int | Literal["auto"] = "auto"
    per_depth: bool = False
    depth_split: float = 0.5
    v_min: int | None = None
    v_max: int | None = None
    include_baseline: bool = True
    multi_objective: bool = False
    runtime: str = DEFAULT_RUNTIME
    runtime_options: Mapping[str, Any] = field(default_factory=dict)
    backend: Literal["local", "ray"] = "local"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.selective is True:
            set_(self, "selective", SelectiveConfig())
        elif self.selective is False:
            set_(self, "selective", None)
        elif isinstance(self.selective, Mapping):
            set_(self, "selective", _convert("selective", SelectiveConfig.from_dict, self.selective))
        if isinstance(self.calibration, Mapping):
            set_(self, "calibration", _convert("calibration", Calibration.from_dict, self.calibration))
        if isinstance(self.heldout, Mapping):
            set_(self, "heldout", _convert("heldout", Calibration.from_dict, self.heldout))
        if self.dtype is not None and not isinstance(self.dtype, str):
            set_(self, "dtype", str(self.dtype))  # a torch.dtype, named without importing torch
        if isinstance(self.dtype, str):
            set_(self, "dtype", self.dtype.removeprefix("torch."))
        set_(self, "objectives", objective_weights(self.objectives))
        for name in ("strategy_options", "objective_options", "backend_options", "runtime_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ConfigError(name, f"must be a mapping of names to values, got {value!r}")
            set_(self, name, dict(value))
        self._check_numbers()
        self._check_choices()

    # -- checks that need nothing but the values ------------------------------------------------------------
    def _check_numbers(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ConfigError(name, f"{rule}, got {getattr(self, name)!r}")

        budget, guidance = self.budget_flops, self.guidance_scale
        check("budget_flops", _is_real(budget) and math.isfinite(budget) and 0 < budget <= 1,
              "must be a fraction of full computation in (0, 1]")
        check("n_trials", _is_int(self.n_trials) and self.n_trials >= 1, "must be an integer >= 1")
        check("num_inference_steps", _is_int(self.num_inference_steps) and self.num_inference_steps >= 2,
              "must be an integer >= 2 (a schedule reuses between steps)")
        check("guidance_scale", guidance is None or (_is_real(guidance) and math.isfinite(guidance) and guidance >= 0),
              "must be a finite number >= 0 (or unset for the pipeline's default)")
        for name in ("calibration", "heldout"):
            value = getattr(self, name)
            if not isinstance(value, Calibration) and not (name == "heldout" and value is None):
                check(name, _is_int(value) and value >= 1, "must be a number of samples >= 1 or a Calibration"
                      + (" (or unset to skip the check)" if name == "heldout" else ""))
        check("depth_split", _is_real(self.depth_split) and 0 < self.depth_split < 1, "must be in (0, 1)")
        check("v_min", self.v_min is None or (_is_int(self.v_min) and 0 <= self.v_min < self.num_inference_steps),
              f"must be an integer in [0, {self.num_inference_steps - 1}] (reuse runs shorter than the schedule) "
              "or unset")
        check("v_max", self.v_max is None or (_is_int(self.v_max) and max(1, self.v_min or 0) <= self.v_max
                                               < self.num_inference_steps),
              f"must be an integer in [max(1, v_min), {self.num_inference_steps - 1}] or unset")
        check("seed", _is_int(self.seed) and self.seed >= 0, "must be an integer >= 0")

    def _check_choices(self) -> None:
        if self.selective is not None and not isinstance(self.selective, SelectiveConfig):
            raise ConfigError("selective", f"must be true, false, a SelectiveConfig or its fields, got "
                                           f"{self.selective!r}")
        if self.monotone not in ("auto", "decreasing", "increasing", None):
            raise ConfigError("monotone", f"must be 'auto', 'decreasing', 'increasing' or None, got {self.monotone!r}")
        if self.forecast != "auto" and not (_is_int(self.forecast) and self.forecast in FORECAST_ORDERS):
            raise ConfigError("forecast", f"must be 'auto' or a forecast order in {FORECAST_ORDERS}, got "
                                          f"{self.forecast!r}")
        for name in ("per_depth", "include_baseline", "multi_objective"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.per_depth and self.selective is None:
            raise ConfigError("per_depth", "puts DEEP refreshes where selective computation would go (Eq. 7); it "
                                           "needs selective computation on, not selective=False")
        if self.cost not in ("flops", "measured"):
            raise ConfigError("cost", f"must be 'flops' (counted) or 'measured' (timed on this device), got "
                                      f"{self.cost!r}")
        if self.backend not in ("local", "ray"):
            raise ConfigError("backend", f"must be 'local' or 'ray', got {self.backend!r}")
        if self.backend == "local" and self.backend_options:
            raise ConfigError("backend_options", "need backend='ray' (the local backend takes none)")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.device is not None and not (isinstance(self.device, str) and _DEVICE.match(self.device)):
            raise ConfigError("device", f"must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
                                        f"{self.device!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model", f"must be a zoo name or a pipeline folder, got {self.model!r}")
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ConfigError("strategy", f"must be a registered strategy name, got {self.strategy!r}")
        if not isinstance(self.runtime, str) or not self.runtime:
            raise ConfigError("runtime", f"must be a registered runtime name, got {self.runtime!r}")

    # -- checks against what is installed --------------------------------------------------------------------
    def check_plugins(self, strategy: bool = True) -> None:
        """Check names against the registries and options against the plugins' signatures.

        Strategies are pure Python, so their signatures are cheap to read; objective classes import torch, so an
        objective's options are checked against its signature only when options are given. ``strategy=False``
        skips the strategy (a search given a strategy instance).
        """
        if strategy:
            self._check_strategy()
        self._check_objectives()
        self._check_runtime()
        if self.backend == "ray":
            from procache_opt.backends.ray_backend import RayBackend

            allowed = set(_parameters(RayBackend)) - {"spec"}
            if unknown := sorted(set(self.backend_options) - allowed):
                raise ConfigError("backend_options", f"unknown {unknown}; allowed: {sorted(allowed)}")

    def _check_strategy(self) -> None:
        from procache_opt.strategy import STRATEGIES

        if self.strategy not in STRATEGIES.available():
            raise ConfigError("strategy", f"unknown strategy {self.strategy!r}; available: "
                                          f"{', '.join(STRATEGIES.available())}")
        reserved = _STRATEGY_RESERVED[:2] + (_STRATEGY_RESERVED[2:] if self.multi_objective else ())
        _as_config_error("strategy_options", STRATEGIES.check_kwargs, self.strategy, self.strategy_options, reserved)
        if self.multi_objective and not _accepts(STRATEGIES.get(self.strategy), "objectives"):
            raise ConfigError("multi_objective", f"strategy {self.strategy!r} optimises one loss; multi_objective "
                                                 "needs a strategy with an `objectives` argument, e.g. 'tpe' or "
                                                 "'evolutionary'")

    def _check_runtime(self) -> None:
        """The runtime exists, is installed, takes the options, can be searched for and runs what is asked."""
        from procache_opt.runtimes import RUNTIMES

        if self.runtime not in RUNTIMES.available():
            raise ConfigError("runtime", f"unknown runtime {self.runtime!r}; available: "
                                         f"{', '.join(RUNTIMES.available())}")
        cls = RUNTIMES.get(self.runtime)
        _as_config_error("runtime_options", RUNTIMES.check_kwargs, self.runtime, self.runtime_options)
        try:
            runtime = cls(**self.runtime_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError("runtime_options", str(exc)) from None
        if not runtime.follows_schedules:
            raise ConfigError("runtime", f"{self.runtime!r} decides at run time which steps to compute; it runs no "
                                         "schedule, so there is nothing to search for it (it is a comparison baseline)")
        if self.per_depth and Action.DEEP not in runtime.actions:
            raise ConfigError("per_depth", f"the {self.runtime} runtime cannot run per-depth (DEEP/SHALLOW) steps; "
                                           "search without per_depth")
        if self.forecast != "auto" and self.forecast not in runtime.forecast_orders:
            raise ConfigError("forecast", f"the {self.runtime} runtime runs forecast orders {runtime.forecast_orders}"
                              + (f" ({runtime.forecast_note})" if runtime.forecast_note else ""))
        if self.cost == "measured" and self.runtime != DEFAULT_RUNTIME:
            raise ConfigError("cost", f"measured step costs are timed through the {DEFAULT_RUNTIME} runtime; with the "
                                      f"{self.runtime} runtime the budget counts FLOPs (cost='flops')")
        if not cls.installed():
            raise ConfigError("runtime", f"{self.runtime!r} needs {cls.module!r}, which is not installed: pip install "
                                         f"'procache-opt[{cls.extra}]'")

    def _check_objectives(self) -> None:
        from procache_opt.objective import OBJECTIVES

        for name in self.objectives:
            if name not in OBJECTIVES.available():
                raise ConfigError("objective", f"unknown objective {name!r}; available: "
                                               f"{', '.join(OBJECTIVES.available())}")
        if unused := sorted(set(self.objective_options) - set(self.objectives)):
            raise ConfigError("objective_options", f"names objectives not in use: {unused}")
        for name, options in self.objective_options.items():
            if not isinstance(options, Mapping):
                raise ConfigError("objective_options", f"{name!r} needs a mapping of keyword arguments, got "
                                                       f"{options!r}")
            _as_config_error("objective_options", OBJECTIVES.check_kwargs, name, options)

    def validate(self, model: Any = None, strategy: bool = True) -> None:
        """Every check that needs no model loaded: plugins and options, the model reference (or the type of the
        ``model`` object passed beside the config) and what the backend needs. ``strategy=False``: a strategy
        instance is passed beside the config, so its name and options are not the registry's to check."""
        from procache_opt.models import check_model_type, is_pipeline

        self.check_plugins(strategy=strategy)
        if model is None:
            self.check_model_reference()
        else:
            check_model_type(model)
        if self.backend == "ray" and model is not None and is_pipeline(model):
            raise ConfigError("backend", "'ray' ships the model to workers by name: pass a zoo name, a pipeline "
                                         "folder or a picklable factory as the model, not a pipeline object")

    def check_model_reference(self) -> None:
        """A model named by text must be a bundled model or a folder holding a diffusers pipeline."""
        from procache_opt import zoo

        if self.model in zoo.list() or self.model.startswith("<"):
            return
        path = Path(self.model)
        if not path.is_dir():
            raise ConfigError("model", f"{self.model!r} is neither a bundled model ({', '.join(zoo.list())}) "
                                       "nor a local pipeline folder; download a checkpoint first (e.g. "
                                       "DiTPipeline.from_pretrained('facebook/DiT-XL-2-256')) and pass the "
                                       "pipeline or its folder")
        if not (path / "model_index.json").is_file():
            raise ConfigError("model", f"folder {self.model} holds no model_index.json, so it is not a diffusers "
                                       "pipeline folder (save one with pipe.save_pretrained(folder))")

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: calibration sets and selective settings as their own dicts."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Calibration):
                value = value.to_dict()
            elif isinstance(value, SelectiveConfig):
                value = asdict(value)
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """Build from :meth:`to_dict`'s output or any subset of it; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"a search config is a mapping of settings, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(data) - set(known)):
            raise ConfigError(unknown[0], f"unknown setting(s) {unknown}; known: {known}")
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The settings a stored search must share to be resumed (:data:`IDENTITY_FIELDS`), as JSON.

        The default runtime is left out, so that searches stored before runtimes were a setting still resume.
        Strategy options hold the strategy's defaults too (with the user's options over them): a default that
        changed between versions (``constrained_sampling``'s ``num_full``) is a different search, and giving an
        option its default value is the same search as leaving it out.
        """
        from procache_opt.strategy import STRATEGIES

        data = self.to_dict()
        data["strategy_options"] = {**STRATEGIES.defaults(self.strategy, _STRATEGY_RESERVED),
                                    **data["strategy_options"]}
        return {name: data[name] for name in IDENTITY_FIELDS
                if not (name == "runtime" and data[name] == DEFAULT_RUNTIME)}


def _convert(name: str, build: Any, value: Any) -> Any:
    try:
        return build(value)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(name, str(exc)) from None


def _as_config_error(name: str, check: Any, *args: Any) -> None:
    try:
        check(*args)
    except TypeError as exc:
        raise ConfigError(name, str(exc)) from None


def _parameters(cls: type) -> list[str]:
    import inspect

    return list(inspect.signature(cls).parameters)


def _accepts(cls: type, name: str) -> bool:
    return name in _parameters(cls)

"""What a comparison is: its settings (:class:`CompareConfig`) and the searches it runs, as
:class:`~procache_opt.search_config.SearchConfig` values.

Pure Python (no torch): ``procache-opt compare`` checks every search it will run before it removes, loads or
writes anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from procache_opt.calibration import Calibration
from procache_opt.schedule import FORECAST_ORDERS
from procache_opt.search_config import ConfigError, SearchConfig
from procache_opt.strategy import STRATEGIES

if TYPE_CHECKING:
    from procache_opt.search_phases import Setup

__all__ = ["CompareConfig", "MARKER", "WRITTEN", "base_config", "search_configs", "validate"]

Monotone = Literal["auto", "decreasing", "increasing"] | None

#: The file that says a folder holds a comparison this tool wrote: ``--fresh`` removes nothing without it.
MARKER = ".procache-opt-compare"
#: Everything a comparison writes into its folder (by default): all ``--fresh`` may remove.
WRITTEN = (MARKER, "compare.json", "setup.json", "runs", "images", "baselines.json", "speedup_grid.json",
           "heldout_scores.json", "elapsed.json", "report.md", "report")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of a comparison (all plain data; stored as ``compare.json``).

    Attributes:
        model: What ``model`` was (a zoo name, or ``"<in-process pipeline>"``).
        budgets: FLOPs budgets (fractions of full computation) searched at.
        strategies: Registered strategy names compared.
        n_trials: Evaluations per search, equal for every strategy (the FORA start point included).
        seeds: Searches per (budget, strategy), seeded ``0 .. seeds - 1``.
        num_inference_steps: Denoising steps.
        guidance_scale: Classifier-free guidance scale.
        calibration: Samples each search is scored on.
        heldout: Held-out samples every best schedule and baseline is judged on.
        objective: What the searches minimise.
        heldout_objectives: What the held-out judgement reports (the first is the headline quality).
        monotone: Interval-order constraint; ``"auto"`` probes the model once for the whole comparison.
        forecast: ``Schedule.forecast_order`` of every search; ``"auto"`` chooses once for the whole comparison.
        include_baseline: Every search starts from the best FORA schedule within its budget (the engine default).
        baselines: Measure the baseline rows.
        timing_samples: Samples per timed generation.
        timing_repeats: Timed (full, method) pairs per speedup.
        grid_images: Samples shown in the image grids.
    """

    model: str = "dit-digits"
    budgets: tuple[float, ...] = (0.5, 0.35)
    strategies: tuple[str, ...] = ("constrained_sampling", "tpe", "evolutionary", "random")
    n_trials: int = 20
    seeds: int = 5
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    calibration: int = 8
    heldout: int = 16
    objective: str = "feature_error"
    heldout_objectives: tuple[str, ...] = ("feature_error", "psnr")
    monotone: Monotone = "auto"
    forecast: int | str = "auto"
    include_baseline: bool = True
    baselines: bool = True
    timing_samples: int = 2
    timing_repeats: int = 3
    grid_images: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "heldout_objectives", tuple(self.heldout_objectives))
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise ValueError(f"CompareConfig.budgets={self.budgets}; each must be in (0, 1]")
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"CompareConfig.strategies={self.strategies}; need distinct names")
        for name in ("n_trials", "seeds", "num_inference_steps", "calibration", "heldout", "timing_samples",
                     "timing_repeats", "grid_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompareConfig.{name}={getattr(self, name)}; must be >= 1")
        if self.forecast != "auto" and self.forecast not in FORECAST_ORDERS:
            raise ValueError(f"CompareConfig.forecast={self.forecast!r}; use 'auto' or one of {FORECAST_ORDERS}")
        if self.heldout_objectives[:1] != (self.objective,):
            raise ValueError(f"CompareConfig.heldout_objectives={self.heldout_objectives} must start with the "
                             f"searched objective {self.objective!r}, the headline quality")

    @property
    def quality(self) -> str:
        """The headline quality: the searched objective, on the held-out set."""
        return self.objective

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})



def validate(config: CompareConfig, model: Any = None) -> None:
    """Every search the comparison will run is checked before any model is loaded or anything is written."""
    try:
        for cell in search_configs(config, base_config(config, config.calibration), None).values():
            cell.validate(model if model is not None and not isinstance(model, str) else None)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{exc.message} (in the comparison's searches)") from None


def base_config(config: CompareConfig, calibration: Calibration | int) -> SearchConfig:
    """The search every cell varies: the comparison's settings at its largest budget."""
    return SearchConfig(model=config.model, budget_flops=max(config.budgets), strategy=config.strategies[0],
                        objectives=config.objective, n_trials=config.n_trials,
                        num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                        calibration=calibration, heldout=None, monotone=config.monotone, forecast=config.forecast,
                        include_baseline=config.include_baseline)


def search_configs(config: CompareConfig, base: SearchConfig, setup: Setup | None) -> dict[tuple[float, str, int],
                                                                                         SearchConfig]:
    """Each (budget, strategy, seed) search, seed by seed (an interrupted comparison has whole seeds), all in the
    measured space (``setup``; ``None`` before it is measured) and each strategy with the options it scales to the
    evaluation budget."""
    measured = {"monotone": setup.monotone, "forecast": setup.forecast} if setup is not None else {}
    configs = {}
    for k in range(config.seeds):
        for b in config.budgets:
            for s in config.strategies:
                options = STRATEGIES.get(s).options_for_budget(config.n_trials) if s in STRATEGIES.available() else {}
                configs[(b, s, k)] = replace(base, budget_flops=b, strategy=s, seed=k, strategy_options=options,
                                             **measured)
    return configs

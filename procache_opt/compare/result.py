"""What a comparison produced, read back from its output folder: settings, every search, every baseline row.

Everything lives in files (``compare.json``, ``runs/<budget>/<strategy>/seed<k>/{trials,result,cell}.json``,
``baselines.json``, ``setup.json``), so a :class:`CompareResult` is the same whether the comparison ran just
now, was resumed, or ran on another machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from procache_opt.compare.baselines import Row
from procache_opt.result import SearchResult
from procache_opt.schedule import FORECAST_ORDERS

__all__ = ["Cell", "CompareConfig", "CompareResult", "cell_dir", "image_path"]

Monotone = Literal["auto", "decreasing", "increasing"] | None


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


def cell_dir(out: Path, budget: float, strategy: str, seed: int) -> Path:
    """Where one search keeps its storage: ``<out>/runs/<budget>/<strategy>/seed<k>``."""
    return out / "runs" / f"{budget:g}" / strategy / f"seed{seed}"


def image_path(out: Path, key: str) -> Path:
    """Where the sample images of a row (``Row.key``, or ``"full"`` for the full computation) are kept."""
    return out / "images" / ("".join(c if c.isalnum() or c in ".-" else "_" for c in key) + ".pt")


@dataclass(frozen=True)
class Cell:
    """One finished search and its best schedule's held-out scores.

    Attributes:
        budget: FLOPs budget.
        strategy: Strategy name.
        seed: Strategy seed.
        result: The search (every trial, in order).
        heldout: Held-out mean of each objective for the best schedule.
        wall_s: Wall-clock seconds of the whole search (strategy overhead included).
    """

    budget: float
    strategy: str
    seed: int
    result: SearchResult
    heldout: dict[str, float]
    wall_s: float

    @classmethod
    def load(cls, folder: Path) -> Cell:
        meta = json.loads((folder / "cell.json").read_text())
        return cls(meta["budget"], meta["strategy"], meta["seed"], SearchResult.load(folder / "result.json"),
                   dict(meta["heldout"]), meta["wall_s"])


@dataclass
class CompareResult:
    """A comparison: its settings, searches, baseline rows and the one-off set-up facts (the probe).

    Use :mod:`procache_opt.compare.stats` for the tables, :mod:`~procache_opt.compare.export` to write them,
    :mod:`~procache_opt.compare.figures` for the figures.
    """

    config: CompareConfig
    out: Path
    cells: list[Cell] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)

    def cells_at(self, budget: float, strategy: str | None = None) -> list[Cell]:
        return [c for c in self.cells if c.budget == budget and strategy in (None, c.strategy)]

    def best_cell(self, budget: float) -> Cell:
        """The search whose best schedule scored lowest on its *calibration* set (held-out never chooses)."""
        return min(self.cells_at(budget), key=lambda c: (c.result.best_trial.value, c.strategy, c.seed))

    @classmethod
    def load(cls, out: str | Path) -> CompareResult:
        out = Path(out)
        config = CompareConfig.from_dict(json.loads((out / "compare.json").read_text()))
        cells = [Cell.load(f.parent) for f in sorted((out / "runs").glob("*/*/seed*/cell.json"))]
        rows_file, setup_file = out / "baselines.json", out / "setup.json"
        rows = [Row.from_dict(d) for d in json.loads(rows_file.read_text()).values()] if rows_file.exists() else []
        setup = json.loads(setup_file.read_text()) if setup_file.exists() else {}
        # Only the cells the settings ask for: a folder may hold more seeds from a longer run (``seeds`` may shrink).
        order = {(b, s): i for i, (b, s) in enumerate((b, s) for b in config.budgets for s in config.strategies)}
        cells = [c for c in cells if (c.budget, c.strategy) in order and c.seed < config.seeds]
        cells.sort(key=lambda c: (order[(c.budget, c.strategy)], c.seed))
        return cls(config, out, cells, rows, setup)

"""What a comparison produced, read back from its output folder: settings, every search, every baseline row.

Everything lives in files (``compare.json``, ``runs/<budget>/<strategy>/seed<k>/{state,result,cell}.json``,
``baselines.json``, ``setup.json``), so a :class:`CompareResult` is the same whether the comparison ran just
now, was resumed, or ran on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procache_opt._io import read_json
from procache_opt.compare.baselines import Row
from procache_opt.compare.plan import MARKER, WRITTEN, CompareConfig
from procache_opt.result import SearchResult

__all__ = ["Cell", "CompareConfig", "CompareResult", "MARKER", "WRITTEN", "cell_dir", "image_path"]



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
        meta = read_json(folder / "cell.json", "comparison cell file")
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
        config = CompareConfig.from_dict(read_json(out / "compare.json", "comparison settings file"))
        cells = [Cell.load(f.parent) for f in sorted((out / "runs").glob("*/*/seed*/cell.json"))]
        rows_file, setup_file = out / "baselines.json", out / "setup.json"
        rows = [Row.from_dict(d) for d in read_json(rows_file, "baselines file").values()] if rows_file.exists() else []
        setup = read_json(setup_file, "comparison set-up file") if setup_file.exists() else {}
        # Only the cells the settings ask for: a folder may hold more seeds from a longer run (``seeds`` may shrink).
        order = {(b, s): i for i, (b, s) in enumerate((b, s) for b in config.budgets for s in config.strategies)}
        cells = [c for c in cells if (c.budget, c.strategy) in order and c.seed < config.seeds]
        cells.sort(key=lambda c: (order[(c.budget, c.strategy)], c.seed))
        return cls(config, out, cells, rows, setup)

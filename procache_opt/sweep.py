"""Sweeps: a grid of searches (models x budgets x strategies x objectives x seeds) run from one YAML file.

Every cell is one :func:`procache_opt.search` whose storage is ``<out>/<cell name>``, so an interrupted sweep
resumes where it stopped: a cell with a ``result.json`` is finished and not rerun, a half-finished cell
continues from its stored trials (its finished evaluations are replayed, not redone). After every cell the
folder gets ``summary.md`` and ``summary.csv`` with one row per cell.

On a Ray cluster (``backend: ray`` or ``address``) the cells run one after another and each search spreads its
evaluations over all workers; ``docs/ray.md`` shows a multi-GPU setup.

Example:
    >>> from procache_opt.sweep import run_sweep
    >>> rows = run_sweep("examples/sweep.yaml", out="runs/sweep")  # doctest: +SKIP
    >>> rows[0]["best_pattern"]  # doctest: +SKIP
    '1,0,0,1,...'
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from procache_opt._io import CorruptFileError, atomic_write_text, read_text
from procache_opt.result import HELDOUT_SCHEDULES, SearchResult
from procache_opt.search_config import ConfigError, SearchConfig, objective_weights

__all__ = ["SweepConfig", "SweepCell", "StrategyEntry", "run_sweep", "run_cell", "summary_markdown"]

logger = logging.getLogger("procache_opt.sweep")

#: SearchConfig fields a sweep sets itself, per cell or from a top-level key; the `search:` section may not.
_SET_BY_SWEEP = ("model", "budget_flops", "strategy", "strategy_options", "objectives", "n_trials", "seed",
                 "backend", "backend_options")


def _as_tuple(key: str, value: Any) -> tuple[Any, ...]:
    """An axis of the grid: a YAML list, or one scalar standing for a list of one."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ValueError(f"sweep config: `{key}` is empty; give at least one value")
    return values


def _numbers(key: str, value: Any, kind: type) -> tuple[Any, ...]:
    values = _as_tuple(key, value)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or v == int(v))
               for v in values):
        raise ValueError(f"sweep config: `{key}` must be {'numbers' if kind is float else 'integers'}, got "
                         f"{list(values)}")
    return tuple(kind(v) for v in values)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy of the grid: a registered name, its keyword arguments, and the label used in cell names.

    YAML: ``tpe`` or ``{name: tpe, label: tpe-20, options: {n_startup_trials: 20}}``.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @classmethod
    def parse(cls, entry: Any) -> StrategyEntry:
        if isinstance(entry, str):
            return cls(entry)
        if isinstance(entry, Mapping) and "name" in entry:
            unknown = set(entry) - {"name", "options", "label"}
            if unknown:
                raise ValueError(f"sweep config: unknown key(s) {sorted(unknown)} in strategy entry {dict(entry)}; "
                                 "allowed: name, options, label")
            return cls(str(entry["name"]), dict(entry.get("options") or {}), str(entry.get("label", "")))
        raise ValueError(f"sweep config: a strategy is a name or {{name, options, label}}, got {entry!r}")


def _parse_objective(entry: Any) -> dict[str, float]:
    """``feature_error``, ``[lpips, latency]`` (equal weights) or ``{feature_error: 1, latency: 0.1}``."""
    if not isinstance(entry, (str, list, tuple, Mapping)):
        raise ValueError(f"sweep config: an objective is a name, a list of names or {{name: weight}}, got {entry!r}")
    try:
        return objective_weights(entry)
    except ConfigError as exc:
        raise ValueError(f"sweep config: objectives: {exc.message}") from None


def _objective_label(objective: Mapping[str, float]) -> str:
    return "+".join(name if w == 1 else f"{name}x{w:g}" for name, w in objective.items())


@dataclass(frozen=True)
class SweepCell:
    """One search of the grid."""

    model: str
    budget: float
    strategy: StrategyEntry
    objective: Mapping[str, float]
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name: every axis value, readable and filesystem-safe."""
        model = Path(self.model).name if os.sep in self.model else self.model
        parts = (model, f"b{self.budget:g}", self.strategy.label, _objective_label(self.objective), f"s{self.seed}")
        return "__".join(_slug(p) for p in parts)

    def search_config(self, sweep: SweepConfig) -> SearchConfig:
        """The cell's search: the sweep's `search:` settings with the cell's axes."""
        return SearchConfig(**dict(sweep.search), model=self.model, budget_flops=self.budget,
                            strategy=self.strategy.name, strategy_options=dict(self.strategy.options),
                            objectives=dict(self.objective), n_trials=sweep.n_trials, seed=self.seed,
                            backend=sweep.backend, backend_options=dict(sweep.backend_options))

    def axes(self) -> dict[str, Any]:
        return {"cell": self.name, "model": self.model, "budget": self.budget, "strategy": self.strategy.label,
                "objective": _objective_label(self.objective), "seed": self.seed}


@dataclass(frozen=True)
class SweepConfig:
    """A sweep file, validated. Keys mirror :func:`procache_opt.search` (see ``examples/sweep.yaml``).

    Attributes:
        models: Zoo names or pipeline folders (the Ray workers load them by name).
        budgets: FLOPs budgets, fractions of full computation.
        strategies: Strategy entries (see :class:`StrategyEntry`).
        objectives: Objective entries: a name, a list of names or ``{name: weight}``.
        seeds: Strategy seeds.
        n_trials: Distinct schedules per search.
        backend: ``"local"`` or ``"ray"``.
        backend_options: Keyword arguments of :class:`~procache_opt.backends.ray_backend.RayBackend`.
        search: Further keyword arguments of every ``search()`` call (``num_inference_steps``, ``calibration``,
            ``heldout``, ``device``...).
        out: Results folder (relative to the working directory).
    """

    models: tuple[str, ...]
    budgets: tuple[float, ...]
    strategies: tuple[StrategyEntry, ...] = (StrategyEntry("constrained_sampling"),)
    objectives: tuple[Mapping[str, float], ...] = ({"feature_error": 1.0},)
    seeds: tuple[int, ...] = (0,)
    n_trials: int = 30
    backend: str = "local"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)
    out: str = "runs/sweep"

    def __post_init__(self) -> None:
        if bad := [b for b in self.budgets if not 0 < b <= 1]:
            raise ValueError(f"sweep config: budgets must be in (0, 1] (fractions of full computation), got {bad}")
        if self.n_trials < 1:
            raise ValueError(f"sweep config: n_trials must be >= 1, got {self.n_trials}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"sweep config: backend must be 'local' or 'ray', got {self.backend!r}")
        if self.backend == "local" and self.backend_options:
            raise ValueError("sweep config: backend_options need `backend: ray`")
        if clash := sorted(set(self.search) & set(_SET_BY_SWEEP)):
            raise ValueError(f"sweep config: set {clash} as top-level sweep keys (models, budgets, strategies, "
                             "objectives, seeds, n_trials, backend, backend_options), not under `search`")
        known = sorted(f.name for f in fields(SearchConfig) if f.name not in _SET_BY_SWEEP)
        if unknown := sorted(set(self.search) - set(known)):
            raise ValueError(f"sweep config: unknown `search` option(s) {unknown}; allowed: {known}")
        for cell in self.cells():  # every cell's search is checked now, not as the same error in every cell
            try:
                cell.search_config(self).check_plugins()  # model folders are checked when the sweep runs
            except ConfigError as exc:
                key = exc.field if exc.field in _SET_BY_SWEEP else f"search.{exc.field}"
                raise ValueError(f"sweep config: {key} (cell {cell.name}): {exc.message}") from None
        names = [c.name for c in self.cells()]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"sweep config: cells share a name {dupes}; give strategies distinct `label`s")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepConfig:
        allowed = [f.name for f in fields(cls)]
        if unknown := sorted(set(data) - set(allowed)):
            raise ValueError(f"sweep config: unknown key(s) {unknown}; allowed: {allowed}")
        for required in ("models", "budgets"):
            if required not in data:
                raise ValueError(f"sweep config: `{required}` is required")
        kwargs: dict[str, Any] = dict(data)
        kwargs["models"] = tuple(str(m) for m in _as_tuple("models", data["models"]))
        kwargs["budgets"] = _numbers("budgets", data["budgets"], float)
        if "strategies" in data:
            kwargs["strategies"] = tuple(StrategyEntry.parse(s) for s in _as_tuple("strategies", data["strategies"]))
        if "objectives" in data:
            entries = data["objectives"] if isinstance(data["objectives"], list) else [data["objectives"]]
            kwargs["objectives"] = tuple(_parse_objective(o) for o in _as_tuple("objectives", entries))
        if "seeds" in data:
            kwargs["seeds"] = _numbers("seeds", data["seeds"], int)
        for key in ("backend_options", "search"):
            if not isinstance(kwargs.get(key, {}), Mapping):
                raise ValueError(f"sweep config: `{key}` must be a mapping, got {kwargs[key]!r}")
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepConfig:
        """Read a sweep file; any error names the file (and the key)."""
        try:
            data = yaml.safe_load(read_text(path, "sweep config"))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise CorruptFileError(f"sweep config {path} is not valid YAML ({problem}{line}); plain YAML only, no "
                                   "Python tags") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"sweep config {path}: expected a YAML mapping of keys, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(str(exc).replace("sweep config:", f"sweep config {path}:", 1)) from None

    def cells(self) -> list[SweepCell]:
        grid = itertools.product(self.models, self.budgets, self.strategies, self.objectives, self.seeds)
        return [SweepCell(m, b, s, o, seed) for m, b, s, o, seed in grid]


def run_cell(cell: SweepCell, config: SweepConfig, out: Path) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one cell's search; return its summary row.

    A failed search does not stop the sweep: its row says why, and the next run of the sweep tries it again. A
    finished cell whose ``result.json`` cannot be read is named and run again from its stored trials.
    """
    from procache_opt import _search

    folder = out / cell.name
    done = folder / "result.json"
    if done.exists():
        try:
            result = SearchResult.load(done)
            logger.info("%s: finished earlier, not rerun", cell.name)
            return _row(cell, result)
        except CorruptFileError as exc:
            logger.warning("cell %s: %s; running the cell again from its stored trials", cell.name, exc)
    try:
        result = _search.run_search(cell.search_config(config), storage=str(folder), progress=False)
    except Exception as exc:  # noqa: BLE001 - one failed cell is reported; the other cells still run
        logger.exception("%s: search failed", cell.name)
        return {**cell.axes(), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    result.best.save(folder / "schedule.json")
    result.save(done)  # written last: its presence marks the cell finished
    return _row(cell, result)


def _row(cell: SweepCell, result: SearchResult) -> dict[str, Any]:
    best = result.best_trial
    row: dict[str, Any] = {
        **cell.axes(), "status": "complete", "trials": len(result.trials), "completed": len(result.completed),
        "best_value": best.value, "best_flops_ratio": best.flops_ratio, "best_pattern": str(best.schedule),
        "eval_seconds": round(sum(t.duration_s for t in result.trials), 3),
    }
    for label in HELDOUT_SCHEDULES:
        for name, score in result.heldout.get(label, {}).get("scores", {}).items():
            row[f"heldout_{label}_{name}"] = score["mean"]
    return row


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sweep's rows as a Markdown table (columns: the union of all rows' keys, in first-seen order)."""
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = (_fmt(row.get(c)) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def _write_summary(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", buffer.getvalue())
    atomic_write_text(out / "summary.md", summary_markdown(rows))


def run_sweep(config: str | os.PathLike[str] | Mapping[str, Any] | SweepConfig, address: str | None = None,
              out: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Run every cell of a sweep (skipping finished ones) and write the summary; return one row per cell.

    Args:
        config: A sweep YAML file, its parsed mapping, or a :class:`SweepConfig`.
        address: A Ray cluster to run on (e.g. ``"auto"``); implies ``backend: ray``.
        out: Results folder (default: the config's ``out``).

    Returns:
        One dict per cell: its axes, ``status`` (``complete`` or ``failed``), the best schedule's loss, FLOPs
        ratio and pattern, and held-out scores of the best schedule and the FORA baseline.
    """
    if not isinstance(config, SweepConfig):
        config = SweepConfig.from_dict(config) if isinstance(config, Mapping) else SweepConfig.load(config)
    if address is not None and config.backend != "ray":
        logger.info("address=%r given: running the sweep on Ray", address)
        config = replace(config, backend="ray")
    for model in config.models:  # a missing model folder is an error now, not a failed row per cell
        try:
            SearchConfig(model=model).check_model_reference()
        except ConfigError as exc:
            raise ValueError(f"sweep config: models: {exc.message}") from None
    folder = Path(out if out is not None else config.out)
    folder.mkdir(parents=True, exist_ok=True)
    started_ray = False
    if config.backend == "ray":  # connect once; every search's backend reuses this connection
        from procache_opt.backends.ray_backend import connect

        opts = config.backend_options
        started_ray = connect(address or opts.get("address"), **dict(opts.get("ray_init_kwargs") or {}))
    rows: list[dict[str, Any]] = []
    try:
        cells = config.cells()
        for i, cell in enumerate(cells, 1):
            logger.info("cell %d/%d: %s", i, len(cells), cell.name)
            rows.append(run_cell(cell, config, folder))
            _write_summary(rows, folder)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return rows


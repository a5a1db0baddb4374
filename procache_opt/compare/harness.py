"""``compare``: run every (budget, strategy, seed) search and every baseline, resumably, into one folder.

Fairness rules the harness enforces:

* equal evaluation budgets: every search evaluates ``n_trials`` schedules, with strategy options scaled to that
  budget by each strategy (``Strategy.options_for_budget``);
* the same space for every strategy: the search's own set-up phases (:func:`~procache_opt.search_phases.measure`:
  the interval-order probe and the forecast-order choice on the FORA start point of the largest budget) run
  once, not per search;
* the same calibration set for every search and one disjoint held-out set for every judgement, so results
  pair up across strategies by seed and sample;
* every search seeded (``seed = k``), every raw trial kept (``<out>/runs/<budget>/<strategy>/seed<k>``).

Resuming: a search's storage replays its finished trials, a finished search (``cell.json``) is not rerun, and
finished baseline rows are not remeasured. Cells run seed by seed, so an interrupted comparison has whole
seeds for every strategy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from procache_opt import _search
from procache_opt._io import atomic_write_json, read_json
from procache_opt.calibration import Calibration
from procache_opt.compare.baselines import OURS, Row, run_rows
from procache_opt.compare.diffusers_caches import mag_ratios
from procache_opt.compare.measure import Bench, Method, call_kwargs
from procache_opt.compare.plan import base_config, search_configs, validate
from procache_opt.compare.result import MARKER, Cell, CompareConfig, CompareResult, cell_dir, image_path
from procache_opt.models import load_pipeline, worker_model_spec
from procache_opt.pipelines import DiTAdapter, adapter_for
from procache_opt.search_config import SearchConfig
from procache_opt.search_phases import Setup, check_reference, measure, prepare

__all__ = ["compare", "ComparisonMismatchError"]

#: Settings that may change between runs into the same folder: more seeds extend a comparison, and the
#: baselines can be added later; anything else would mix incomparable results.
_RESUMABLE_CHANGES = frozenset({"seeds", "baselines"})


class ComparisonMismatchError(ValueError):
    """The output folder holds a comparison with different settings."""


def compare(
    model: Any = "dit-digits",
    budgets: Sequence[float] = (0.5, 0.35),
    strategies: Sequence[str] = ("constrained_sampling", "tpe", "evolutionary", "random"),
    n_trials: int = 20,
    seeds: int = 5,
    out: str | Path = "runs/compare",
    *,
    progress: bool = True,
    **settings: Any,
) -> CompareResult:
    """Compare search strategies and caching baselines at each FLOPs budget.

    Example:
        >>> from procache_opt.compare import compare
        >>> result = compare("dit-digits", budgets=[0.5], strategies=["tpe", "random"], n_trials=10,
        ...                  seeds=3, out="runs/cmp")  # doctest: +SKIP
        >>> from procache_opt.compare import tables
        >>> print(tables.strategy_table(result).to_markdown())  # doctest: +SKIP

    Args:
        model: A zoo name, a pipeline, a pipeline folder or a factory (as :func:`procache_opt.search`).
        budgets: FLOPs budgets.
        strategies: Registered strategy names.
        n_trials: Evaluations per search (equal for every strategy).
        seeds: Seeds per (budget, strategy).
        out: Output folder; rerunning with the same settings resumes.
        progress: Progress bars.
        **settings: Further :class:`CompareConfig` fields (``calibration``, ``heldout``, ``timing_repeats``, ...).

    Returns:
        The :class:`CompareResult`, also readable later with ``CompareResult.load(out)``.
    """
    config = CompareConfig(model=model if isinstance(model, str) else "<in-process pipeline>", budgets=tuple(budgets),
                           strategies=tuple(strategies), n_trials=n_trials, seeds=seeds, **settings)
    validate(config, model)
    out = Path(out)
    _bind(out, config)
    pipe = load_pipeline(model)
    # Thousands of generations: the comparison's and each search's bars report progress, not diffusers' own.
    pipe.set_progress_bar_config(disable=True)
    search_set = Calibration.default(pipe, num_samples=config.calibration, split="search")
    base = base_config(config, search_set)
    setup = _resolve_setup(pipe, base, out)
    bench = Bench(pipe, Calibration.default(pipe, num_samples=config.heldout, split="heldout"),
                  config.num_inference_steps, config.guidance_scale, config.heldout_objectives,
                  config.timing_samples, config.timing_repeats, mag_ratios=_mag_ratios(pipe, config, search_set))
    _save_images(image_path(out, "full"), bench.reference().images, config.grid_images)
    _run_cells(pipe, search_configs(config, base, setup), bench, out, progress)
    result = CompareResult.load(out)
    if config.baselines:
        _run_baselines(result, bench, pipe, progress)
    return CompareResult.load(out)


def _bind(out: Path, config: CompareConfig) -> None:
    """Store the settings, or check they match the stored ones (see :data:`_RESUMABLE_CHANGES`)."""
    path = out / "compare.json"
    current = config.to_dict()
    if path.exists():
        stored = read_json(path, "comparison settings file")
        diff = sorted(k for k in set(stored) | set(current)
                      if stored.get(k) != current.get(k) and k not in _RESUMABLE_CHANGES)
        if diff:
            raise ComparisonMismatchError(
                f"{out} holds a comparison with other settings (differs in: {', '.join(diff)}); use another "
                "--out folder, or the same settings to resume"
            )
    atomic_write_json(path, current)
    (out / MARKER).touch()  # what `--fresh` checks before it removes anything here


def _resolve_setup(pipe: Any, base: SearchConfig, out: Path) -> Setup:
    """The interval and forecast orders for every search, measured once by the search's own phase and kept in
    ``setup.json`` (with the torch version and threads the timings ran with)."""
    path = out / "setup.json"
    if path.exists():
        return Setup.from_dict(read_json(path, "comparison set-up file"))
    prepared = prepare(base, pipe, worker_model_spec(pipe))
    check_reference(prepared.evaluator, prepared.config)
    setup = measure(prepared)
    atomic_write_json(path, {**setup.to_dict(), "torch": torch.__version__, "threads": torch.get_num_threads()})
    return setup


def _mag_ratios(pipe: Any, config: CompareConfig, search_set: Calibration) -> tuple[float, ...] | None:
    """MagCache's calibration on the search set (never the held-out one); only DiT pipelines take the caches."""
    if not (config.baselines and isinstance(adapter_for(pipe), DiTAdapter)):
        return None
    return mag_ratios(pipe, call_kwargs(pipe, search_set, config.num_inference_steps, config.guidance_scale))


def _run_cells(pipe: Any, configs: dict[tuple[float, str, int], SearchConfig], bench: Bench, out: Path,
               progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(configs.items(), desc="compare", unit="search", disable=not progress)
    for (budget, strategy, seed), search_config in bar:
        folder = cell_dir(out, budget, strategy, seed)
        if (folder / "cell.json").exists():
            continue
        bar.set_postfix_str(f"budget {budget:g} {strategy} seed {seed}")
        start = time.perf_counter()
        result = _search.run_search(search_config, pipe, storage=str(folder), progress=progress)
        wall = time.perf_counter() - start
        result.save(folder / "result.json")
        scores = _heldout_scores(bench, result.best, out / "heldout_scores.json")
        atomic_write_json(folder / "cell.json", {
            "budget": budget, "strategy": strategy, "seed": seed, "wall_s": wall, "best": str(result.best),
            "heldout": scores,
        })
        Cell.load(folder)  # fail now, not at report time, if the record cannot be read back


def _heldout_scores(bench: Bench, schedule: Any, path: Path) -> dict[str, float]:
    """Held-out means of a best schedule; searches that find the same schedule share one evaluation."""
    known = json.loads(path.read_text()) if path.exists() else {}
    key = str(schedule)
    if key not in known:
        known[key] = bench.measure(Method("searched", key, schedule=schedule), time_it=False)[0].scores
        atomic_write_json(path, known)
    return known[key]


def _run_baselines(result: CompareResult, bench: Bench, pipe: Any, progress: bool) -> None:
    from tqdm.auto import tqdm

    out, config = result.out, result.config
    rows_file, grid_file = out / "baselines.json", out / "speedup_grid.json"
    done = {r.key: r for r in result.rows}
    grid = {family: dict(settings) for family, settings in
            (json.loads(grid_file.read_text()) if grid_file.exists() else {}).items()}
    ours = {}
    for budget in config.budgets:
        best = result.best_cell(budget)
        ours[f"{budget:g}"] = Method(OURS, f"{best.strategy} seed {best.seed}", schedule=best.result.best)

    def save(row: Row, images: Any) -> None:
        done[row.key] = row
        atomic_write_json(rows_file, {k: r.to_dict() for k, r in done.items()})
        _save_images(image_path(out, row.key), images, config.grid_images)

    def say(what: str) -> None:
        if progress:
            tqdm.write(f"baselines: {what}")

    run_rows(bench, ours, pipe.transformer, done, save, grid,
             lambda: atomic_write_json(grid_file, grid), say)


def _save_images(path: Path, images: Any, n: int) -> None:
    """Keep the first ``n`` decoded samples for the image grids (none without an image objective)."""
    if images is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(images[:n].detach().cpu().clone(), path)

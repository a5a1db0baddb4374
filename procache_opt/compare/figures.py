"""The comparison's figures, each written as PNG (docs) and PDF (papers) with matplotlib.

* ``convergence``: best-so-far calibration loss against evaluations and against cumulative evaluation seconds;
  median over seeds with the interquartile range shaded.
* ``pareto``: per strategy, the Pareto front of counted FLOPs ratio against calibration loss over every trial
  of every seed (one search serves every budget below its own).
* ``tradeoff``: measured speedup against held-out quality for every baseline row and the searched schedules.
* ``schedules``: each strategy's best schedule at each budget and the fixed FORA schedules, steps x action,
  drawn the way the ProCache paper draws patterns (:func:`procache_opt.plots.draw_schedule`).
* ``samples_<budget>``: held-out samples of every method at a budget under the full computation's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from procache_opt.compare.baselines import OURS
from procache_opt.compare.result import CompareResult, image_path
from procache_opt.compare.stats import best_so_far
from procache_opt.plots import action_legend, draw_schedule
from procache_opt.result import pareto_front
from procache_opt.schedule import Schedule

__all__ = ["write_figures"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if path.suffix == ".pdf"
                    else {"Software": None})
    _pyplot().close(fig)
    return paths


def convergence(result: CompareResult) -> Any:
    """Two rows (against evaluations, against seconds), one column per budget."""
    plt = _pyplot()
    budgets = result.config.budgets
    fig, axes = plt.subplots(2, len(budgets), figsize=(5 * len(budgets), 7), squeeze=False)
    for col, budget in enumerate(budgets):
        for strategy in result.config.strategies:
            runs = [best_so_far(c.result.trials) for c in result.cells_at(budget, strategy)]
            if not runs:
                continue
            length = min(len(b) for b, _ in runs)
            curves = np.array([b[:length] for b, _ in runs])
            line = _band(axes[0, col], np.arange(1, length + 1), curves, strategy)
            horizon = np.linspace(0, max(s[-1] for _, s in runs), 200)
            timed = np.array([_at_times(b, s, horizon) for b, s in runs])
            _band(axes[1, col], horizon, timed, strategy, line.get_color())
        losses = [t.value for c in result.cells_at(budget) for t in c.result.trials if t.candidate]
        for ax in axes[:, col]:
            _log_if_wide(ax, losses)
        axes[0, col].set(title=f"budget {budget:g}", xlabel="evaluations", ylabel="best calibration loss")
        axes[1, col].set(xlabel="cumulative evaluation seconds", ylabel="best calibration loss")
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_if_wide(ax: Any, values: list[float]) -> None:
    """Log-scale the y axis when positive losses span more than two orders of magnitude."""
    finite = [v for v in values if v > 0 and np.isfinite(v)]
    if finite and max(finite) / min(finite) > 100:
        ax.set_yscale("log")


def _band(ax: Any, x: np.ndarray, curves: np.ndarray, label: str, color: str | None = None) -> Any:
    with np.errstate(invalid="ignore"):
        low, mid, high = np.nanpercentile(np.where(np.isinf(curves), np.nan, curves), [25, 50, 75], axis=0)
    (line,) = ax.plot(x, mid, drawstyle="steps-post", label=label, color=color)
    ax.fill_between(x, low, high, step="post", alpha=0.2, color=line.get_color())
    return line


def _at_times(best: list[float], seconds: list[float], horizon: np.ndarray) -> np.ndarray:
    """The best-so-far value at each time of ``horizon`` (NaN before the first evaluation finished)."""
    index = np.searchsorted(np.asarray(seconds), horizon, side="right") - 1
    values = np.asarray(best, dtype=float)
    return np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)


def pareto(result: CompareResult) -> Any:
    """Per budget, each strategy's front (pooled over seeds) and all its trials, faintly."""
    plt = _pyplot()
    budgets = result.config.budgets
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for strategy in result.config.strategies:
            trials = [t for c in result.cells_at(budget, strategy) for t in c.result.trials if t.candidate]
            if not trials:
                continue
            front = pareto_front(trials)
            (line,) = ax.plot([t.flops_ratio for t in front], [t.value for t in front], drawstyle="steps-post",
                              marker="o", markersize=3, label=strategy)
            ax.scatter([t.flops_ratio for t in trials], [t.value for t in trials], s=6, alpha=0.25,
                       color=line.get_color())
        _log_if_wide(ax, [t.value for c in result.cells_at(budget) for t in c.result.trials if t.candidate])
        ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"budget {budget:g}", xlabel="counted FLOPs ratio", ylabel="calibration loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tradeoff(result: CompareResult) -> Any:
    """Per budget: measured speedup against held-out quality for its rows and the fixed FORA rows."""
    plt = _pyplot()
    quality = result.config.quality
    groups = [f"{b:g}" for b in result.config.budgets]
    families = sorted({r.family for r in result.rows if r.measured is not None}, key=lambda f: (f != OURS, f))
    # 10 colours and 11 markers: (colour, marker) pairs stay distinct for up to 110 families (cache-dit's rows
    # made 13, and the 11th repeated the 1st's colour and marker when both cycled through 10).
    style = {f: (f"C{i % 10}", "*" if f == OURS else "osD^vP<>Xhp"[i % 11]) for i, f in enumerate(families)}
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for row in (r for r in result.rows if r.measured is not None and r.group in (group, "fixed")):
            color, marker = style[row.family]
            ax.scatter(row.measured.speedup, row.measured.scores[quality], color=color, marker=marker,
                       s=160 if row.family == OURS else 40, label=row.family, edgecolors="black", linewidths=0.4)
            ax.annotate(row.setting, (row.measured.speedup, row.measured.scores[quality]), fontsize=6,
                        xytext=(4, 2), textcoords="offset points")
        ax.set(title=f"budget {group} (and fixed FORA)", xlabel="measured speedup (x, same-run ratio)",
               ylabel=f"held-out {quality}")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    fig.tight_layout()
    return fig


def schedules(result: CompareResult) -> Any:
    """Each strategy's best schedule per budget (best seed by calibration loss), then the fixed FORA schedules."""
    from procache_opt.compare.baselines import fixed_methods

    plt = _pyplot()
    drawn: list[tuple[str, Schedule]] = []
    for budget in result.config.budgets:
        for strategy in result.config.strategies:
            cells = result.cells_at(budget, strategy)
            if cells:
                best = min(cells, key=lambda c: (c.result.best_trial.value, c.seed))
                drawn.append((f"{budget:g} {strategy} (seed {best.seed})", best.result.best))
    drawn += [(f"{m.family} {m.setting}", m.schedule) for m in fixed_methods(result.config.num_inference_steps)]
    fig, axes = plt.subplots(len(drawn), 1, figsize=(10, 0.5 * len(drawn) + 1.4), squeeze=False)
    for ax, (label, schedule) in zip(axes[:, 0], drawn, strict=True):
        draw_schedule(ax, schedule, label, legend=False)
        if ax is not axes[-1, 0]:
            ax.set_xlabel("")
            ax.set_xticks([])
    axes[0, 0].set_title("best schedules", fontsize=9)
    fig.tight_layout()
    fig.legend(handles=action_legend([s for _, s in drawn]), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.9 / (0.5 * len(drawn) + 1.4))
    return fig


def samples(result: CompareResult, group: str) -> Any | None:
    """Held-out samples: the full computation on top, then every measured row of ``group``."""
    import torch

    plt = _pyplot()
    named = [("full computation", image_path(result.out, "full"))]
    members = sorted((r for r in result.rows if r.group == group and r.measured is not None),
                     key=lambda r: (r.family != OURS, r.family))
    named += [(f"{r.family} {r.setting}", image_path(result.out, r.key)) for r in members]
    named = [(label, path) for label, path in named if path.exists()]
    if len(named) < 2:
        return None
    # weights_only: the saved images are plain tensors; a tampered file must not run code when unpickled
    rows = [(label, torch.load(path, weights_only=True).float().clamp(0, 1)) for label, path in named]
    cols = min(len(images) for _, images in rows)
    label_in, cell_in = 2.6, 0.7
    width, height = label_in + cell_in * cols, cell_in * len(rows) + 0.4
    fig, axes = plt.subplots(len(rows), cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=label_in / width, right=0.99, bottom=0.01, top=1 - 0.35 / height, wspace=0.06,
                        hspace=0.06)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"held-out samples at budget {group}", fontsize=9, y=1 - 0.1 / height)
    return fig


def write_figures(result: CompareResult, folder: str | Path) -> list[Path]:
    """Write every figure (PNG and PDF) into ``folder``; returns the paths written."""
    folder = Path(folder)
    makers: list[tuple[str, Callable[[], Any]]] = [
        ("convergence", lambda: convergence(result)), ("pareto", lambda: pareto(result)),
        ("schedules", lambda: schedules(result)),
    ]
    if result.rows:
        makers.append(("tradeoff", lambda: tradeoff(result)))
        for budget in result.config.budgets:
            makers.append((f"samples_{budget:g}", lambda b=budget: samples(result, f"{b:g}")))
    paths = []
    for name, make in makers:
        fig = make()
        if fig is not None:
            paths += _save(fig, folder, name)
    return paths

"""Figures: a schedule drawn the way the ProCache paper draws them, and a search's convergence."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from procache_opt.schedule import Schedule

if TYPE_CHECKING:
    from procache_opt.result import SearchResult

__all__ = ["draw_schedule", "plot_search"]

#: Colours of REUSE (0), FULL (1) and SELECTIVE (2) steps.
ACTION_COLOURS = ("#d9d9d9", "#1f77b4", "#ff7f0e")


def draw_schedule(ax: Any, schedule: Schedule, label: str = "") -> None:
    """One row of coloured cells, one per step: full (blue), selective (orange), reuse (grey)."""
    from matplotlib.colors import ListedColormap

    ax.imshow(np.array([schedule.pattern]), aspect="auto", cmap=ListedColormap(ACTION_COLOURS), vmin=0, vmax=2,
              interpolation="nearest")
    ax.set_yticks([0], [label or f"{schedule.num_full} full"])
    ax.set_xlabel("denoising step (0 = noisiest)")


def plot_search(result: SearchResult, path: str | os.PathLike[str] | None = None) -> Any:
    """Best loss so far against trials, and the best schedule; saved to ``path`` when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (conv, sched) = plt.subplots(2, 1, figsize=(8, 4.5), gridspec_kw={"height_ratios": [3, 1]})
    xs, best, running = [], [], float("inf")
    for t in result.trials:
        if t.candidate:
            running = min(running, t.value)
        xs.append(t.trial_id)
        best.append(running)
    conv.plot(xs, best, drawstyle="steps-post")
    shown = [t for t in result.trials if t.candidate]  # a probe's loss is no schedule's within the budget
    conv.scatter([t.trial_id for t in shown], [t.value for t in shown], s=10, alpha=0.5)
    conv.set_xlabel("trial")
    conv.set_ylabel("loss (lower is better)")
    conv.set_title("search convergence")
    draw_schedule(sched, result.best, "best")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig

"""Figures: a schedule drawn the way the ProCache paper draws them, and a search's convergence."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from procache_opt.schedule import Action, Schedule

if TYPE_CHECKING:
    from procache_opt.result import SearchResult

__all__ = ["ACTION_COLOURS", "action_legend", "draw_schedule", "plot_search"]

#: Colour of each action, indexed by its digit: REUSE (0), FULL (1), SELECTIVE (2), DEEP (3), SHALLOW (4).
ACTION_COLOURS = ("#d9d9d9", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
#: What each action does, as the legend says it.
_ACTION_WORDS = {
    Action.FULL: "FULL: every block computed",
    Action.REUSE: "REUSE: cached outputs reused",
    Action.SELECTIVE: "SELECTIVE: deep blocks refresh key tokens",
    Action.DEEP: "DEEP: deep blocks computed, shallow reused",
    Action.SHALLOW: "SHALLOW: shallow blocks computed, deep reused",
}


def draw_schedule(ax: Any, schedule: Schedule, label: str = "", legend: bool = True) -> None:
    """One row of coloured cells, one per step (colours: :data:`ACTION_COLOURS`), with a legend of the actions
    unless ``legend`` is false (a figure of many schedules draws one legend for all, :func:`action_legend`)."""
    from matplotlib.colors import ListedColormap

    ax.imshow(np.array([schedule.pattern]), aspect="auto", cmap=ListedColormap(ACTION_COLOURS), vmin=0,
              vmax=len(ACTION_COLOURS) - 1, interpolation="nearest")
    ax.set_yticks([0], [label or f"{schedule.num_full} full"])
    ax.set_xlabel("denoising step (0 = noisiest)")
    if legend:
        ax.legend(handles=action_legend([schedule]), loc="upper center", bbox_to_anchor=(0.5, -0.9), ncol=3,
                  fontsize=7, frameon=False)


def action_legend(schedules: list[Schedule]) -> list[Any]:
    """Legend entries for FULL, REUSE and SELECTIVE, and for DEEP and SHALLOW when a schedule has them."""
    from matplotlib.patches import Patch

    shown = [Action.FULL, Action.REUSE, Action.SELECTIVE]
    shown += [a for a in (Action.DEEP, Action.SHALLOW) if any(a in s.actions for s in schedules)]
    words = dict(_ACTION_WORDS)
    if any(s.forecast_order for s in schedules):
        words[Action.REUSE] = "REUSE: cached outputs forecast (TaylorSeer)"
    return [Patch(facecolor=ACTION_COLOURS[a], edgecolor="black", linewidth=0.4, label=words[a]) for a in shown]


def plot_search(result: SearchResult, path: str | os.PathLike[str] | None = None) -> Any:
    """Best loss so far against trials, and the best schedule; saved to ``path`` when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (conv, sched) = plt.subplots(2, 1, figsize=(8, 5.2), gridspec_kw={"height_ratios": [3, 1]})
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
    conv.xaxis.set_major_locator(MaxNLocator(integer=True))
    conv.set_ylabel("loss (lower is better)")
    conv.set_title("search convergence")
    draw_schedule(sched, result.best, "best")
    sched.set_title(f"best schedule: {result.best.num_full} of {result.best.num_steps} steps FULL", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig

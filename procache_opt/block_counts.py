"""How the transformer's blocks spend a generation under a schedule: run, run on a few tokens, reused, forecast.

Pure Python (no torch): the runtime's ``handle.summary()`` counts calls with it as they happen
(:mod:`procache_opt.runtime.stats`), a runtime plugin totals a generation with it
(:meth:`procache_opt.runtimes.Runtime.block_outcomes`), and ``SearchResult.summary()`` reports the best schedule's.
"""

from __future__ import annotations

from collections import Counter

from procache_opt.schedule import Action, Schedule

__all__ = ["BLOCK_OUTCOMES", "blocks_by_step", "generation_blocks", "outcome_shares", "step_blocks"]

#: How one block spends one step: run in full, run on a few tokens (SELECTIVE), its cached outputs applied as
#: they are, or extrapolated from the last two FULL steps (``forecast_order=1``).
BLOCK_OUTCOMES = ("computed", "selective", "reused", "forecast")


def step_blocks(schedule: Schedule, step: int, num_layers: int) -> Counter[str]:
    """How each of ``num_layers`` blocks spends step ``step`` of ``schedule`` under this project's runtime.

    SELECTIVE steps refresh tokens in the deep blocks (``SelectiveConfig.deep_start``) and reuse the rest;
    per-depth steps run one group in full. A reused block forecasts when ``forecast_order >= 1`` and its group has
    had two FULL steps (the slope needs both).

    Example:
        >>> step_blocks(Schedule.from_pattern([1, 0, 2]), 2, num_layers=4)
        Counter({'reused': 3, 'selective': 1})
    """
    return blocks_by_step(schedule, num_layers)[step]


def blocks_by_step(schedule: Schedule, num_layers: int) -> list[Counter[str]]:
    """:func:`step_blocks` of every step, in one pass (each block group's pattern is read once, so a runtime
    can table a generation when it is applied)."""
    split = schedule.split_layer(num_layers) if schedule.per_depth else num_layers
    deep_start = schedule.selective.deep_start(num_layers)
    groups = {deep: schedule.group_actions(deep) for deep in (False, True)}
    full_before = {deep: [0] for deep in groups}  # FULL steps of the group before each step
    for deep, actions in groups.items():
        for action in actions:
            full_before[deep].append(full_before[deep][-1] + (action == Action.FULL))
    table: list[Counter[str]] = []
    for step in range(schedule.num_steps):
        out: Counter[str] = Counter()
        for layer in range(num_layers):
            deep = layer >= split
            action = groups[deep][step]
            if action == Action.FULL:
                out["computed"] += 1
            elif action == Action.SELECTIVE and layer >= deep_start:
                out["selective"] += 1
            elif schedule.forecast_order >= 1 and full_before[deep][step] >= 2:
                out["forecast"] += 1
            else:
                out["reused"] += 1
        table.append(out)
    return table


def generation_blocks(schedule: Schedule, num_layers: int) -> Counter[str]:
    """:func:`step_blocks` summed over every step of one generation."""
    total: Counter[str] = Counter()
    for counts in blocks_by_step(schedule, num_layers):
        total.update(counts)
    return total


def outcome_shares(blocks: Counter[str]) -> str:
    """``"computed 40.0%, reused 60.0%"``: each outcome's share of the block evaluations, in a fixed order."""
    total = sum(blocks.values()) or 1
    return ", ".join(f"{kind} {blocks[kind] / total:.1%}" for kind in BLOCK_OUTCOMES if blocks[kind])

"""Local moves between schedules and the diagnosis of an empty space, on segment lengths (intervals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from procache_opt.space._dp import FLOPS_QUANTUM

if TYPE_CHECKING:
    from procache_opt.space._space import ScheduleSpace

__all__ = ["diagnose_empty", "format_ranges", "neighbour_intervals"]


def neighbour_intervals(intervals: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Distinct interval tuples one move from ``intervals``, feasible or not, in a fixed order.

    Moves: give one step of segment ``i`` to segment ``j`` (for neighbouring segments that shifts one FULL
    step by one; for distant ones it shifts every FULL step in between, which keeps sorted partitions with a
    fixed number of FULL steps connected, as single shifts alone do not), split a segment in two, and merge
    two neighbouring segments.
    """
    out: dict[tuple[int, ...], None] = {}
    n = len(intervals)
    for i in range(n):
        for j in range(n):
            if i != j and intervals[i] > 1:
                moved = list(intervals)
                moved[i] -= 1
                moved[j] += 1
                out[tuple(moved)] = None
    for i, length in enumerate(intervals):
        for head in range(1, length):
            out[intervals[:i] + (head, length - head) + intervals[i + 1:]] = None
    for i in range(n - 1):
        out[intervals[:i] + (intervals[i] + intervals[i + 1],) + intervals[i + 2:]] = None
    out.pop(intervals, None)
    return list(out)


def format_ranges(values: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def diagnose_empty(space: ScheduleSpace, min_costs: np.ndarray) -> str:
    """Which constraint empties ``space``, and the smallest budget that would work with the others."""
    head = "the schedule space is empty: "
    shape = [k for k, units in enumerate(min_costs) if units >= 0]
    if not shape:  # (sorting a partition satisfies Eq. 3, so only the bounds can do this)
        return (head + f"{space.num_steps} steps cannot be split into segments of {space.v_min + 1}.."
                f"{space.v_max + 1} steps (v_min={space.v_min}, v_max={space.v_max}, Eq. 4); widen [v_min, v_max]")
    budget = space.max_flops_ratio
    affordable = [k for k in shape if budget is None or min_costs[k] <= space._budget]
    wanted = [k for k in shape if space.num_full in (None, k) and k >= (space.min_full or 1)]
    if not wanted:
        asked = space.num_full if space.num_full is not None else space.min_full
        name = "num_full" if space.num_full is not None else "min_full"
        options = affordable or shape
        nearest = min(options, key=lambda k: (abs(k - asked), k))
        return (head + f"{name}={asked} is impossible with v in [{space.v_min}, {space.v_max}] and "
                f"monotone={space.monotone!r} (Eq. 2-4); feasible numbers of FULL steps: {format_ranges(options)} "
                f"(nearest: {nearest})")
    cheapest = min(int(min_costs[k]) for k in wanted) * FLOPS_QUANTUM
    message = (head + f"max_flops_ratio={budget} is below the cheapest member's FLOPs ratio {cheapest:.4f} "
               f"(segment costs rounded up to {FLOPS_QUANTUM:g}); raise max_flops_ratio to at least {cheapest:.4f}")
    if affordable:
        message += f", or allow {format_ranges(affordable)} FULL steps"
    return message

"""``ScheduleSpace.segments`` and ``best_paths``: the exact DP of the graph strategy, against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from procache_opt.costs import StepCosts
from procache_opt.space import ScheduleSpace


def _starts(intervals: tuple[int, ...]) -> list[int]:
    return [int(s) for s in np.cumsum((0, *intervals[:-1]))]


def _members(space: ScheduleSpace, weights: dict, order: str) -> list[tuple[int, object, tuple[int, ...]]]:
    """(quantised cost, key, intervals) of every member whose segments all have finite weights."""
    out = []
    for schedule in space.enumerate():
        intervals = space.intervals(schedule)
        segs = list(zip(_starts(intervals), intervals, strict=True))
        if not all(math.isfinite(weights.get(seg, math.inf)) for seg in segs):
            continue
        values = [weights[seg] for seg in segs]
        key = math.fsum(values) if order == "sum" else tuple(sorted(values, reverse=True))
        cost = sum(space._graph.step((s, 0, 0), n) for s, n in segs)
        out.append((cost, key, intervals))
    return out


def _random_space(rng: np.random.Generator, case: int) -> ScheduleSpace | None:
    steps = int(rng.integers(4, 12))
    v_max = int(rng.integers(1, steps))
    kwargs = {"monotone": (None, "decreasing", "increasing")[case % 3], "v_max": v_max,
              "v_min": int(rng.integers(0, min(v_max, 2) + 1))}
    reuse = rng.uniform(0.01, 0.1, steps)
    costs = StepCosts(full=tuple(rng.uniform(0.9, 1.1, steps)), reuse=tuple(reuse), selective=tuple(reuse + 0.05))
    if case % 4 == 0:
        kwargs.update(max_flops_ratio=float(rng.uniform(0.3, 1.0)), costs=costs)
    elif case % 4 == 1:
        kwargs.update(costs=costs)  # a front over every FLOPs ratio
    elif case % 4 == 2:
        kwargs.update(min_full=int(rng.integers(1, steps // 2 + 1)))
    try:
        return ScheduleSpace(steps, **kwargs)
    except ValueError:  # an empty space
        return None


@pytest.mark.parametrize("case", range(60))
def test_front_is_every_budgets_brute_force_best(case: int) -> None:
    rng = np.random.default_rng(case)
    space = _random_space(rng, case)
    if space is None:
        pytest.skip("empty space")
    used = {seg for s in space.enumerate()
            for seg in zip(_starts(space.intervals(s)), space.intervals(s), strict=True)}
    assert set(space.segments()) == used
    # integer weights make ties common, so the lexicographic tie-break is exercised too
    weights = {seg: float(rng.integers(0, 4)) if case % 2 else float(rng.uniform()) for seg in used}
    weights[sorted(used)[int(rng.integers(len(used)))]] = math.inf  # an unusable segment
    for order in ("sum", "minimax"):
        front, members = space.best_paths(weights, order), _members(space, weights, order)
        assert bool(front) == bool(members)
        assert [p.units for p in front] == sorted({p.units for p in front})
        for cost in sorted({c for c, _, _ in members}):
            best = min(key for c, key, _ in members if c <= cost)
            point = [p for p in front if p.units <= cost][-1]
            assert space.contains(space.build(point.intervals))
            assert (point.total == pytest.approx(best)) if order == "sum" else point.worst_first == best


def _two_way_space() -> ScheduleSpace:
    """6 steps of segments of 2 or 3 steps: members (3, 3), (2, 2, 2) and the any-order mixes are out (no 1)."""
    return ScheduleSpace(6, v_min=1, v_max=2, monotone="decreasing",
                         costs=StepCosts(full=(1.0,) * 6, reuse=(0.0,) * 6, selective=(0.0,) * 6))


def test_minimax_avoids_the_worst_segment_where_the_sum_does_not() -> None:
    space = _two_way_space()
    assert space.segments() == [(0, 2), (0, 3), (2, 2), (3, 3), (4, 2)]
    weights = {(0, 3): 5.0, (3, 3): 0.0, (0, 2): 2.0, (2, 2): 2.0, (4, 2): 2.0}
    by_sum, by_minimax = space.best_paths(weights, "sum"), space.best_paths(weights, "minimax")
    assert [p.intervals for p in by_sum] == [(3, 3)]  # (2, 2, 2) costs more and sums to 6 > 5
    assert [p.intervals for p in by_minimax] == [(3, 3), (2, 2, 2)]  # its worst is 2 < 5: worth its cost
    assert by_minimax[1].worst_first == (2.0, 2.0, 2.0) and by_minimax[1].units == 3 * 1667  # 1/6 rounded up


def test_minimax_compares_the_next_worst_on_a_tie() -> None:
    space = _two_way_space()
    weights = {(0, 3): 5.0, (3, 3): 1.0, (0, 2): 5.0, (2, 2): 0.5, (4, 2): 0.5}
    assert space.best_paths(weights, "minimax")[-1].intervals == (2, 2, 2)  # (5, .5, .5) < (5, 1)
    weights[(3, 3)] = 0.5
    assert space.best_paths(weights, "minimax")[-1].intervals == (3, 3)  # (5, .5) beats (5, .5, .5): fewer


def test_segments_without_a_finite_weight_are_never_used() -> None:
    space = _two_way_space()
    weights = {(0, 3): 0.0, (3, 3): math.nan, (0, 2): 1.0, (2, 2): 1.0, (4, 2): 1.0}
    assert [p.intervals for p in space.best_paths(weights, "sum")] == [(2, 2, 2)]
    assert space.best_paths({(0, 3): 0.0}, "sum") == []
    with pytest.raises(ValueError, match="order='max'"):
        space.best_paths(weights, "max")  # type: ignore[arg-type]


def test_the_budget_limits_the_segments_and_the_front() -> None:
    costs = StepCosts(full=(1.0,) * 20, reuse=(0.05,) * 20, selective=(0.1,) * 20)
    space = ScheduleSpace(20, max_flops_ratio=0.4, costs=costs, v_max=5)
    weights = {seg: (seg[1] - 1) * (1 + seg[0]) for seg in space.segments()}
    front = space.best_paths(weights, "sum")
    assert front and all(space.contains(space.build(p.intervals)) for p in front)
    assert front[-1].flops_ratio <= 0.4 < front[-1].flops_ratio + 0.1
    assert [p.total for p in front] == sorted((p.total for p in front), reverse=True)
    # the same weights in a space without the budget give more points, the budgeted ones among them
    free = ScheduleSpace(20, costs=costs, v_max=5)
    assert {p.intervals for p in front} <= {p.intervals for p in free.best_paths(weights, "sum")}
    assert set(space.segments()) < set(free.segments())  # e.g. the 1-step segments at the start

"""ScheduleSpace: ProCache's constraints (Sec. 3.2, Eqs. 2-4), exact counting, uniform sampling, moves."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from procache_opt.conformance.strategies import synthetic_costs
from procache_opt.costs import StepCosts
from procache_opt.schedule import Schedule, SelectiveConfig
from procache_opt.space import FLOPS_QUANTUM, ScheduleSpace

# The schedules the authors ship (github.com/macovaseas/ProCache): DiT-ProCache/cache_functions/cal_type.py
# and PixArt-alpha-ProCache/diffusion/model/cache_functions/global_force_fresh.py.
AUTHORS_DIT = [1, 0, 2, 0] * 6 + [1, 0, 2] * 4 + [1, 0] * 7
AUTHORS_PIXART = [1, 0, 2] * 6 + [1, 0]
SPACE_DEFAULTS = dict(num_full=None, min_full=None, max_flops_ratio=None, costs=None, v_min=0, v_max=None,
                      monotone="decreasing", selective=True)


def compositions(n: int):
    for cuts in itertools.product((0, 1), repeat=n - 1):
        lengths, run = [], 1
        for cut in cuts:
            if cut:
                lengths.append(run)
                run = 0
            run += 1
        yield tuple(lengths + [run])


def brute_force_members(kwargs: dict) -> list[tuple[int, ...]]:
    """Every member, checked directly from the constraints' definitions (independent of the DP)."""
    space = SimpleNamespace(**{**SPACE_DEFAULTS, **kwargs})
    space.v_max = space.num_steps - 1 if space.v_max is None else space.v_max
    members = []
    for lengths in compositions(space.num_steps):
        pairs = list(zip(lengths, lengths[1:], strict=False))
        if not all(space.v_min <= n - 1 <= space.v_max for n in lengths):
            continue
        if (space.monotone == "decreasing" and any(b > a for a, b in pairs)) or (
                space.monotone == "increasing" and any(b < a for a, b in pairs)):
            continue
        if (space.num_full not in (None, len(lengths))) or len(lengths) < (space.min_full or 1):
            continue
        if space.max_flops_ratio is not None:
            schedule = Schedule.from_intervals(lengths)
            pattern = (schedule.inject_selective() if space.selective else schedule).pattern
            units, start = 0, 0
            for n in lengths:
                macs = sum(space.costs.of(a, t) for t, a in enumerate(pattern) if start <= t < start + n)
                units += math.ceil(macs / space.costs.full_total / FLOPS_QUANTUM - 1e-9)
                start += n
            if units * FLOPS_QUANTUM > space.max_flops_ratio + 1e-12:
                continue
        members.append(lengths)
    return sorted(members)


@st.composite
def rarely(draw: st.DrawFn, values: st.SearchStrategy[int]) -> int | None:
    """``None`` three times in four: a FULL-step constraint on every draw would leave most spaces empty."""
    return draw(values) if draw(st.integers(0, 3)) == 0 else None


@st.composite
def small_spaces(draw: st.DrawFn) -> dict:
    num_steps = draw(st.integers(1, 11))
    v_min = draw(st.integers(0, min(3, num_steps - 1)))
    kwargs = dict(num_steps=num_steps, v_min=v_min,
                  v_max=draw(st.one_of(st.none(), st.integers(v_min, num_steps - 1))),
                  monotone=draw(st.sampled_from(["decreasing", "increasing", None])),
                  num_full=draw(rarely(st.integers(1, num_steps))),
                  min_full=draw(rarely(st.integers(1, num_steps))),
                  selective=draw(st.booleans()))
    if draw(st.booleans()):
        step = st.floats(0.0, 0.5)
        kwargs["costs"] = StepCosts(full=tuple(draw(st.lists(st.floats(0.5, 2.0), min_size=num_steps,
                                                             max_size=num_steps))),
                                    reuse=tuple(draw(st.lists(step, min_size=num_steps, max_size=num_steps))),
                                    selective=tuple(draw(st.lists(step, min_size=num_steps, max_size=num_steps))))
        kwargs["max_flops_ratio"] = draw(st.floats(0.2, 1.0))
    return kwargs


def build(kwargs: dict) -> ScheduleSpace | None:
    try:
        return ScheduleSpace(**kwargs)
    except ValueError as error:
        assert "the schedule space is empty" in str(error)
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_spaces())
def test_count_and_enumeration_match_brute_force(kwargs: dict) -> None:
    space, expected = build(kwargs), brute_force_members(kwargs)
    if space is None:
        assert expected == []
        return
    assert space.count() == len(expected) > 0
    assert [space.intervals(s) for s in space.enumerate()] == expected
    assert sorted({len(m) for m in expected}) == space.num_full_values()


@settings(max_examples=60, deadline=None)
@given(small_spaces(), st.integers(0, 2**32 - 1))
def test_samples_and_neighbours_are_members(kwargs: dict, seed: int) -> None:
    space = build(kwargs)
    if space is None:
        return
    rng = np.random.default_rng(seed)
    for schedule in [space.sample(rng) for _ in range(5)]:
        assert space.contains(schedule), space.violations(schedule)
        neighbours = space.neighbors(schedule)
        assert schedule not in neighbours and len(set(neighbours)) == len(neighbours)
        assert all(space.contains(n) for n in neighbours)
        if space.max_flops_ratio is not None:
            assert space.flops_ratio(schedule) <= space.max_flops_ratio + 1e-9
    drawn = space.sample_stick_breaking(rng)
    assert drawn is None or space.contains(drawn)


@settings(max_examples=60, deadline=None)
@given(small_spaces(), st.data())
def test_repair_and_decode_give_members(kwargs: dict, data: st.DataObject) -> None:
    space = build(kwargs)
    if space is None:
        return
    target = data.draw(st.sampled_from(list(compositions(space.num_steps))))
    repaired = space.repair(target)
    assert space.contains(repaired)
    assert space.repair(space.intervals(repaired)) == repaired  # members come back unchanged
    pick = data.draw(st.integers(0, 10**6))
    assert space.contains(space.decode(lambda i, start, lengths: lengths[(pick + i) % len(lengths)]))


def test_decode_refuses_an_unoffered_length() -> None:
    with pytest.raises(ValueError, match="feasible lengths are"):
        ScheduleSpace(50, num_full=17, v_min=1, v_max=3).decode(lambda i, start, lengths: 7)


def test_empty_spaces_raise() -> None:
    for kwargs in (dict(num_steps=10, num_full=2, v_max=3), dict(num_steps=7, v_min=2, v_max=2)):
        with pytest.raises(ValueError, match="empty"):
            ScheduleSpace(**kwargs)


def test_sample_is_uniform() -> None:
    space = ScheduleSpace(8, monotone=None, v_max=3, max_flops_ratio=0.6, costs=synthetic_costs(8))
    members = {s: i for i, s in enumerate(space.enumerate())}
    rng = np.random.default_rng(1)
    draws = 200 * len(members)
    observed = np.bincount([members[space.sample(rng)] for _ in range(draws)], minlength=len(members))
    assert chisquare(observed).pvalue > 1e-3


@pytest.mark.parametrize(("num_steps", "num_full", "v_min", "v_max", "expected"), [
    (50, 13, 1, 4, 25),  # CASS.py SearchConfig defaults
    (50, 11, 2, 5, 21),  # CASS.py __main__ example
    (50, 17, 1, 3, 9),  # the settings of the shipped DiT schedule (17 FULL steps, segments 4 -> 2)
    (20, 7, 1, 2, 1),  # the settings of the shipped PixArt-alpha schedule (7 FULL steps of 20)
])
def test_authors_settings(num_steps: int, num_full: int, v_min: int, v_max: int, expected: int) -> None:
    space = ScheduleSpace(num_steps, num_full=num_full, v_min=v_min, v_max=v_max)
    assert space.count() == expected == len(list(space.enumerate()))


def test_shipped_schedules_are_members_of_their_spaces() -> None:
    assert ScheduleSpace(50, num_full=17, v_min=1, v_max=3).contains(AUTHORS_DIT)
    assert ScheduleSpace(20, num_full=7, v_min=1, v_max=2).contains(AUTHORS_PIXART)


def test_alternating_space_has_one_member() -> None:
    space = ScheduleSpace(50, num_full=25, v_min=1, v_max=1)
    assert space.count() == 1
    assert space.sample(np.random.default_rng(0)).pattern == (1, 0) * 25


def test_large_spaces_count_fast() -> None:
    start = time.perf_counter()
    assert ScheduleSpace(50, monotone=None).count() == 2**49  # every composition of 50
    budgeted = ScheduleSpace(50, monotone=None, max_flops_ratio=0.5, costs=synthetic_costs(50))
    assert 0 < budgeted.count() < 2**49
    ScheduleSpace(50, max_flops_ratio=1.0, costs=synthetic_costs(50), num_full=20).count()
    assert time.perf_counter() - start < 1.0
    assert ScheduleSpace(80, monotone=None).count() == 2**79  # beyond int64: Python integers


def test_violations_name_each_constraint() -> None:
    space = ScheduleSpace(12, num_full=3, v_min=1, v_max=4, max_flops_ratio=0.262, costs=synthetic_costs(12))
    assert space.violations([1] * 5) == ["the pattern has 5 steps, the space 12"]
    problems = space.violations(Schedule.from_intervals([1, 6, 5]))
    assert len(problems) == 4  # selective injection missing, Eq. 4, Eq. 3, budget
    assert "Eq. 7" in problems[0] and "Eq. 4" in problems[1] and "Eq. 3" in problems[2]
    assert "max_flops_ratio" in problems[3]
    assert "exactly num_full=3" in space.violations(space.from_intervals([5, 4, 3]).pattern[:8] + (1, 0, 1, 0))[0]
    other = Schedule.from_intervals([5, 4, 3], selective=SelectiveConfig(fresh_ratio=0.5)).inject_selective()
    assert "SelectiveConfig" in space.violations(other)[0]
    with pytest.raises(ValueError, match="Eq. 3"):
        space.from_intervals([3, 4, 5])


def test_empty_space_messages_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"num_full=5 is impossible.*10-25 \(nearest: 10\)"):
        ScheduleSpace(50, num_full=5, v_min=1, v_max=4)
    with pytest.raises(ValueError, match=r"at least 0\.2\d+"):
        ScheduleSpace(50, v_min=1, v_max=4, max_flops_ratio=0.1, costs=synthetic_costs(50))
    with pytest.raises(ValueError, match="widen"):
        ScheduleSpace(7, v_min=2, v_max=2)
    with pytest.raises(ValueError, match="needs costs"):
        ScheduleSpace(10, max_flops_ratio=0.5)


def test_stick_breaking_follows_cass() -> None:
    space = ScheduleSpace(50, num_full=13, v_min=1, v_max=4)
    rng = np.random.default_rng(0)
    drawn = [space.sample_stick_breaking(rng) for _ in range(300)]
    kept = [s for s in drawn if s is not None]
    assert kept and all(space.contains(s) for s in kept)
    assert len(kept) < len(drawn)  # segments longer than v_max + 1 are rejected
    ascending = ScheduleSpace(50, num_full=13, v_min=1, v_max=4, monotone="increasing")
    schedule = next(s for s in iter(lambda: ascending.sample_stick_breaking(rng), 0) if s is not None)
    assert list(ascending.intervals(schedule)) == sorted(ascending.intervals(schedule))
    assert ScheduleSpace(20, v_min=1, v_max=2).sample_stick_breaking(rng, num_full=3) is None


def test_dict_round_trip_is_json() -> None:
    space = ScheduleSpace(16, min_full=4, max_flops_ratio=0.5, costs=synthetic_costs(16), monotone=None)
    restored = ScheduleSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert restored == space and restored.count() == space.count()
    assert "FULL" in space.describe() and f"{space.count():,}" in space.describe()


def test_no_heavy_imports() -> None:
    code = "import sys, procache_opt.space; print(sorted({'torch', 'diffusers', 'ray'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_forecast_order_is_part_of_membership_and_storage() -> None:
    space = ScheduleSpace(12, num_full=4, v_max=4, forecast_order=1)
    member = space.sample(np.random.default_rng(0))
    assert member.forecast_order == 1 and space.contains(member)
    plain = Schedule.from_pattern(member.pattern, selective=member.selective)
    assert any("forecast_order=0, the space's 1" in v for v in space.violations(plain))
    back = ScheduleSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert back.forecast_order == 1 and back.count() == space.count()
    assert "forecast to first order" in space.describe()


def test_per_depth_space_injects_deep_refreshes_and_counts_their_cost() -> None:
    from procache_opt.flops import step_costs
    from procache_opt.testing import tiny_dit_transformer

    costs = step_costs(tiny_dit_transformer(), 12, depth_split=0.5)
    plain = ScheduleSpace(12, max_flops_ratio=0.6, costs=costs, v_max=4)
    deep = ScheduleSpace(12, max_flops_ratio=0.6, costs=costs, v_max=4, refresh="deep")
    member = deep.sample(np.random.default_rng(1))
    assert set(member.pattern) <= {0, 1, 3} and 3 in deep.from_intervals((4, 4, 4)).pattern
    assert all(costs.ratio(s) <= 0.6 for s in deep.enumerate())
    # a DEEP refresh recomputes half the blocks, a SELECTIVE one a few tokens: fewer DEEP members fit
    assert 0 < deep.count() < plain.count()
    assert deep.from_intervals((4, 4, 4)).pattern == (1, 0, 3, 0) * 3
    selective = Schedule.from_pattern((1, 0, 2, 0) * 3)
    assert any("DEEP steps injected" in v for v in deep.violations(selective))
    back = ScheduleSpace.from_dict(json.loads(json.dumps(deep.to_dict())))
    assert back.count() == deep.count() and back.costs == costs
    assert "per-depth" in deep.describe()
    with pytest.raises(ValueError, match="refresh='wide'"):
        ScheduleSpace(12, refresh="wide")

"""The built-in simple strategies: conformance (shared with every strategy) plus what is special to each."""

from __future__ import annotations

import logging

import pytest
from procache_opt.strategies.constrained_sampling import ConstrainedSampling
from procache_opt.strategies.exhaustive import ExhaustiveStrategy
from procache_opt.strategies.random_search import RandomStrategy
from procache_opt.strategies.uniform import UniformStrategy, even_intervals

from procache_opt.conformance.strategies import StrategyConformance, synthetic_costs, toy_results
from procache_opt.space import ScheduleSpace


class TestConstrainedSampling(StrategyConformance):
    strategy_cls = ConstrainedSampling


class TestConstrainedSamplingUniform(StrategyConformance):
    strategy_cls = ConstrainedSampling
    strategy_kwargs = {"mode": "uniform", "num_candidates": 8}


class TestRandom(StrategyConformance):
    strategy_cls = RandomStrategy


class TestUniform(StrategyConformance):
    strategy_cls = UniformStrategy
    seed_dependent = False


class TestExhaustive(StrategyConformance):
    strategy_cls = ExhaustiveStrategy
    seed_dependent = False


def test_constrained_sampling_proposes_k_and_keeps_the_best() -> None:
    strategy = ConstrainedSampling(ScheduleSpace(50, num_full=13, v_min=1, v_max=4), seed=0)
    proposals = strategy.ask(3) + strategy.ask(3)
    assert len(set(proposals)) == 5 and strategy.is_finished
    results = toy_results(proposals)
    strategy.tell(results)
    assert strategy.best.value == min(r.value for r in results if r.ok)


def test_constrained_sampling_spends_the_budget_like_the_authors_unless_told_any() -> None:
    space = ScheduleSpace(50, max_flops_ratio=0.35, costs=synthetic_costs(50), v_min=1, v_max=6)
    most = max(space.num_full_values())
    budget = ConstrainedSampling(space, seed=0, num_candidates=12).ask(12)
    assert len(set(budget)) == 12 and {s.num_full for s in budget} == {most}
    assert all(space.contains(s) for s in budget)
    counts = {s.num_full for s in ConstrainedSampling(space, seed=0, num_candidates=12, num_full="any").ask(12)}
    assert len(counts) > 1 and min(counts) < most
    with pytest.raises(ValueError, match="num_full='all'; allowed: 'budget' or 'any'"):
        ConstrainedSampling(space, num_full="all")


def test_constrained_sampling_proposes_all_of_a_small_space(caplog: pytest.LogCaptureFixture) -> None:
    tiny = ConstrainedSampling(ScheduleSpace(20, num_full=7, v_min=1, v_max=2), seed=0)
    assert len(tiny.ask(10)) == 1 and tiny.is_finished
    # dit-digits at budget 0.5 with the search's defaults: 2 members, one of which stick-breaking never draws
    space = ScheduleSpace(50, num_full=24, v_min=1, v_max=5)
    with caplog.at_level(logging.WARNING, logger="procache_opt.strategies"):
        proposals = ConstrainedSampling(space, seed=0, max_attempts=20).ask(5)
    assert sorted(proposals, key=lambda s: s.pattern) == sorted(space.enumerate(), key=lambda s: s.pattern)
    assert not caplog.records  # all drawn without replacement, no stick-breaking until the draws give up


def test_constrained_sampling_falls_back_to_uniform_once(caplog: pytest.LogCaptureFixture) -> None:
    # 45 free steps cut into 5 parts of at most 10: about 1 stick-breaking draw in 1,400 fits.
    space = ScheduleSpace(50, num_full=5, v_max=10)
    strategy = ConstrainedSampling(space, seed=0, max_attempts=20)
    with caplog.at_level(logging.WARNING, logger="procache_opt.strategies"):
        proposals = strategy.ask(5)
    assert len(proposals) == 5 and all(space.contains(s) for s in proposals)
    assert sum("sampling the rest uniformly" in r.message for r in caplog.records) == 1


def test_random_exhausts_small_spaces_without_repeats() -> None:
    space = ScheduleSpace(10, monotone=None, v_max=3)
    strategy = RandomStrategy(space, seed=0)
    proposals = strategy.ask(space.count() + 10)
    assert len(proposals) == len(set(proposals)) == space.count() and strategy.is_finished


def test_uniform_is_even_and_uses_the_budget_first() -> None:
    assert even_intervals(50, 13, "decreasing") == (4,) * 11 + (3,) * 2
    assert even_intervals(50, 13, "increasing") == (3,) * 2 + (4,) * 11
    assert sorted(even_intervals(10, 3, None)) == [3, 3, 4]
    space = ScheduleSpace(50, max_flops_ratio=0.35, costs=synthetic_costs(50), v_min=1)
    proposals = UniformStrategy(space).ask(100)
    assert [s.num_full for s in proposals] == sorted(space.num_full_values(), reverse=True)
    for schedule in proposals:  # even, unless the even schedule breaks the budget (then repaired)
        even = even_intervals(50, schedule.num_full, "decreasing")
        assert space.intervals(schedule) == even or space.interval_violations(even)
    assert space.intervals(proposals[1]) == even_intervals(50, proposals[1].num_full, "decreasing")


def test_exhaustive_enumerates_everything_and_refuses_big_spaces() -> None:
    space = ScheduleSpace(50, num_full=13, v_min=1, v_max=4)
    assert set(ExhaustiveStrategy(space).ask(100)) == set(space.enumerate())
    with pytest.raises(ValueError, match="more than max_size=10"):
        ExhaustiveStrategy(space, max_size=10)



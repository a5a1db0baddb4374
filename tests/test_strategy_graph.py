"""The ``graph`` strategy: conformance, what it measures, the paths it proposes, and a search on a tiny DiT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from procache_opt.strategies._segment_weights import estimate_weights, plan_probes, probe_rounds
from procache_opt.strategies.graph import GraphStrategy

import procache_opt
from procache_opt.compare.stats import best_so_far
from procache_opt.conformance.strategies import StrategyConformance, synthetic_costs
from procache_opt.result import SearchResult
from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.strategy import TrialResult, TrialStatus, as_probe, is_probe
from procache_opt.testing import tiny_dit_pipeline


class TestGraph(StrategyConformance):
    strategy_cls = GraphStrategy
    seed_dependent = False


class TestGraphSampled(StrategyConformance):
    """Few probes, so the conformance rounds reach the candidates and the end."""

    strategy_cls = GraphStrategy
    strategy_kwargs = {"max_probes": 6, "num_candidates": 2, "order": "sum"}
    seed_dependent = False


class TestGraphRounds(StrategyConformance):
    """Several rounds of probes, each followed by candidates."""

    strategy_cls = GraphStrategy
    strategy_kwargs = {"max_probes": 7, "first_round": 2, "num_candidates": 1}
    seed_dependent = False


def _segments(intervals: tuple[int, ...]) -> list[tuple[int, int]]:
    starts = np.cumsum((0, *intervals[:-1]))
    return [(int(s), n) for s, n in zip(starts, intervals, strict=True)]


def _segment_error(start: int, length: int) -> float:
    """A made-up error: reuse hurts more late in denoising and grows faster than the steps reused."""
    return (length - 1) ** 1.5 * (1 + 3 * start / 30) / 100


def _additive_loss(schedule: Schedule, space: ScheduleSpace) -> float:
    return sum(_segment_error(s, n) for s, n in _segments(space.intervals(schedule)))


def _drive(strategy: GraphStrategy, loss, fail=lambda s: False, batch: int = 4) -> list[TrialResult]:
    """Ask/tell until the strategy finishes; every result in order of proposal."""
    told: list[TrialResult] = []
    while not strategy.is_finished:
        proposals = strategy.ask(batch)
        assert proposals, "an unfinished strategy with nothing pending proposed nothing"
        results = [TrialResult(len(told) + i, s, TrialStatus.FAILED, error="nan") if fail(s) else
                   TrialResult(len(told) + i, s, TrialStatus.COMPLETE, value=loss(s)) for i, s in enumerate(proposals)]
        strategy.tell(results)
        told += results
    return told


SPACE = ScheduleSpace(30, max_flops_ratio=0.4, costs=synthetic_costs(30), v_min=1, v_max=5)


def test_probes_are_single_segment_runs_outside_the_space() -> None:
    strategy = GraphStrategy(SPACE)
    assert sorted(strategy.plan) == [seg for seg in SPACE.segments() if seg[1] > 1]
    probes = strategy.ask(len(strategy.plan))
    assert strategy.ask(1) == [] and not strategy.is_finished  # nothing to propose until the probes are told
    for (start, length), probe in zip(strategy.plan, probes, strict=True):
        assert is_probe(probe) and probe.metadata["probe"] == {"start": start, "length": length}
        assert probe.intervals == (1,) * start + (length,) + (1,) * (30 - start - length)
        assert probe.pattern[start + 2:start + length:2] == (2,) * len(range(start + 2, start + length, 2))  # Eq. 7
        assert not SPACE.contains(probe)
    # a probe that is a member of the space is proposed as an ordinary schedule
    member = GraphStrategy(ScheduleSpace(6, monotone=None)).ask(1)[0]
    assert not is_probe(member) and member.intervals == (2, 1, 1, 1, 1)


@pytest.mark.parametrize("order", ["sum", "minimax"])
def test_on_an_additive_loss_the_first_candidate_is_the_exact_best(order: str) -> None:
    strategy = GraphStrategy(SPACE, order=order, first_round=None)  # LeMiCa's way: measure all, then solve
    told = _drive(strategy, lambda s: _additive_loss(s, SPACE))
    candidates = [t for t in told if not t.probe]
    assert 2 <= len(candidates) <= 4 and all(SPACE.contains(t.schedule) for t in candidates)
    assert len(told) == strategy.evaluations_needed - 4 + len(candidates)

    def key(schedule: Schedule) -> object:
        errors = [_segment_error(s, n) for s, n in _segments(SPACE.intervals(schedule))]
        return sum(errors) if order == "sum" else tuple(sorted(errors, reverse=True))

    best = min(SPACE.enumerate(), key=key)  # brute force over the members
    first = candidates[0].schedule
    assert key(first) == pytest.approx(key(best)) if order == "sum" else key(first) == key(best)
    assert first.metadata["graph"]["order"] == order
    assert candidates[1].schedule.metadata["graph"]["order"] != order  # the other order's best comes next


def test_rounds_end_with_the_exact_best_among_the_candidates() -> None:
    strategy = GraphStrategy(SPACE)
    assert [len(r) for r in np.split(strategy.plan, strategy.round_ends[:-1])][0] == 16
    told = _drive(strategy, lambda s: _additive_loss(s, SPACE))
    candidates = [t for t in told if not t.probe]
    rounds = [t.schedule.metadata["graph"]["round"] for t in candidates]
    assert rounds == sorted(rounds) and set(rounds) == set(range(len(strategy.round_ends)))
    assert told[16].schedule.metadata["graph"]["round"] == 0  # the first paths right after the first round
    best = min(SPACE.enumerate(), key=lambda s: _additive_loss(s, SPACE))
    assert best in [t.schedule for t in candidates]
    assert len(told) <= strategy.evaluations_needed and sorted(t.schedule.metadata["probe"]["start"] for t in told
                                                              if t.probe) == sorted(s for s, _ in strategy.plan)


def test_ask_serves_a_finished_rounds_candidates_first_and_probes_while_waiting() -> None:
    strategy = GraphStrategy(SPACE, first_round=8, num_candidates=2)
    probes = strategy.ask(20)  # round 0 untold: the next round's probes keep workers busy
    assert len(probes) == 20 and all(is_probe(s) for s in probes) and strategy.round_ends[0] == 8
    strategy.tell([TrialResult(i, s, TrialStatus.COMPLETE, value=_additive_loss(s, SPACE))
                   for i, s in enumerate(probes[:8])])
    batch = strategy.ask(3)
    assert [s.metadata.get("graph", {}).get("round") for s in batch] == [0, 0, None]
    start, length = strategy.plan[20]  # then the probes go on where they stopped
    assert batch[2].metadata["probe"] == {"start": start, "length": length}


def test_the_front_gives_every_budgets_best_from_one_measurement_pass() -> None:
    strategy = GraphStrategy(SPACE, order="sum")
    _drive(strategy, lambda s: _additive_loss(s, SPACE))
    front = strategy.front()
    assert len(front) > 3
    for budget in (0.25, 0.3, 0.35):
        smaller = ScheduleSpace(30, max_flops_ratio=budget, costs=synthetic_costs(30), v_min=1, v_max=5)
        best = min(smaller.enumerate(), key=lambda s: _additive_loss(s, smaller))
        point = [p for p in front if p.units <= round(budget * 1e4)][-1]
        assert point.total == pytest.approx(_additive_loss(best, smaller))
        assert smaller.contains(SPACE.build(point.intervals))


def test_a_failed_probe_keeps_its_segment_out_of_every_path() -> None:
    strategy = GraphStrategy(SPACE, order="sum", first_round=None)
    unlucky = (0, 3)

    def fail(schedule: Schedule) -> bool:
        return is_probe(schedule) and schedule.metadata["probe"] == {"start": unlucky[0], "length": unlucky[1]}

    told = _drive(strategy, lambda s: _additive_loss(s, SPACE), fail)
    assert any(not t.ok for t in told)
    assert strategy.weights()[unlucky] == math.inf
    assert all(unlucky not in _segments(SPACE.intervals(t.schedule)) for t in told if not t.probe)


def test_without_any_usable_path_it_draws_members_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    strategy = GraphStrategy(SPACE, num_candidates=3)
    told = _drive(strategy, lambda s: 0.0, fail=is_probe)
    assert "uniform draws" in caplog.text
    candidates = [t.schedule for t in told if not t.probe]
    assert len(candidates) == 3 and all(SPACE.contains(s) for s in candidates)


def test_objective_reads_one_value_and_names_the_known_ones() -> None:
    strategy = GraphStrategy(SPACE, objective="feature_error")
    probe = strategy.ask(1)[0]
    strategy.tell([TrialResult(0, probe, TrialStatus.COMPLETE, value=9.0, values={"feature_error": 0.25})])
    assert strategy.weights()[strategy.plan[0]] == 0.25
    with pytest.raises(KeyError, match="'feature_error'.*'psnr'"):
        strategy.tell([TrialResult(1, probe, TrialStatus.COMPLETE, value=1.0, values={"psnr": 30.0})])


def test_bad_options_are_refused() -> None:
    for kwargs, field in (({"order": "max"}, "order"), ({"num_candidates": 0}, "num_candidates"),
                          ({"max_probes": 0}, "max_probes")):
        with pytest.raises(ValueError, match=field):
            GraphStrategy(SPACE, **kwargs)


def test_max_probes_spreads_the_measurements_and_interpolates_exactly_when_linear() -> None:
    segments = [seg for seg in SPACE.segments() if seg[1] > 1]
    plan = plan_probes(segments, 12)
    assert len(plan) <= 12 and set(plan) <= set(segments)
    lengths = sorted({n for _, n in segments})
    assert {n for _, n in plan} >= {lengths[0], lengths[-1]}
    for length in {n for _, n in plan}:  # each measured length: its first and last start
        starts = [s for s, n in segments if n == length]
        assert {min(starts), max(starts)} <= {s for s, n in plan if n == length}
    linear = {seg: 0.01 * seg[0] + 0.1 * seg[1] for seg in segments}
    estimated = estimate_weights(segments, {seg: linear[seg] for seg in plan})
    assert estimated == pytest.approx(linear)
    assert plan_probes(segments, None) == plan_probes(segments, 10_000) == sorted(segments)


def test_with_max_probes_on_linear_errors_it_finds_what_full_measurement_finds() -> None:
    def linear(schedule: Schedule) -> float:
        return sum(0.01 * s + 0.1 * (n - 1) for s, n in _segments(SPACE.intervals(schedule)))

    full = GraphStrategy(SPACE, order="sum", first_round=None)
    sampled = GraphStrategy(SPACE, order="sum", max_probes=15, first_round=None)
    full_told, sampled_told = _drive(full, linear), _drive(sampled, linear)
    assert len(sampled_told) == 15 + 4 < len(full_told) // 4
    assert [t.schedule for t in sampled_told if not t.probe][0] == [t.schedule for t in full_told if not t.probe][0]
    assert GraphStrategy.options_for_budget(24) == {"max_probes": 19, "first_round": None}


def test_probe_rounds_grow_and_never_repeat_a_segment() -> None:
    segments = [seg for seg in SPACE.segments() if seg[1] > 1]
    rounds = probe_rounds(segments, None, 8)
    flat = [seg for r in rounds for seg in r]
    assert len(rounds[0]) == 8 and sorted(flat) == sorted(segments)  # every segment, once
    assert [len(r) for r in rounds[:-1]] == sorted(len(r) for r in rounds[:-1])
    assert sum(map(len, probe_rounds(segments, 20, 8))) == 20 and probe_rounds(segments, 20, None) == [
        plan_probes(segments, 20)]


def test_state_resumes_exactly_through_every_round() -> None:
    def make() -> GraphStrategy:
        return GraphStrategy(SPACE, max_probes=24, first_round=5, num_candidates=2)

    strategy, batches = make(), []
    while not strategy.is_finished:
        batch = [TrialResult(0, s, TrialStatus.COMPLETE, value=_additive_loss(s, SPACE)) for s in strategy.ask(3)]
        strategy.tell(batch)
        batches.append(batch)
    assert len(make().round_ends) == 4  # 5, then 10, 20 and 24 planned
    for cut in range(len(batches) + 1):
        replay = make()
        for batch in batches[:cut]:
            assert replay.ask(3) == [t.schedule for t in batch]
            replay.tell(batch)
        state = json.loads(json.dumps(replay.state_dict()))
        resumed = make()
        resumed.tell([t for batch in batches[:cut] for t in batch])
        resumed.load_state_dict(state)
        assert resumed.ask(3) == replay.ask(3) and resumed.is_finished == replay.is_finished


def test_probes_are_never_a_result_nor_on_a_curve() -> None:
    full = SPACE.build((1,) * 30)
    probe = as_probe(SPACE.build((1, 3) + (1,) * 26), start=1, length=3)
    member = SPACE.sample(np.random.default_rng(0))
    trials = [TrialResult(0, probe, TrialStatus.COMPLETE, value=0.001, flops_ratio=0.3),
              TrialResult(1, member, TrialStatus.COMPLETE, value=0.5, flops_ratio=0.3),
              TrialResult(2, full, TrialStatus.COMPLETE, value=0.0, flops_ratio=1.0)]
    result = SearchResult(trials, {"budget_flops": 0.4})
    assert result.best_trial.trial_id == 1 and [t.trial_id for t in result.pareto] == [1, 2]
    assert best_so_far(trials)[0] == [math.inf, 0.5, 0.0]
    assert "1 of them measurement probes" in result.summary()
    assert TrialResult.from_dict(json.loads(json.dumps(trials[0].to_dict()))).probe


def test_graph_search_on_a_tiny_dit() -> None:
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.6, strategy="graph", n_trials=40,
                                 monotone=None, forecast=0, num_inference_steps=10, calibration=2, heldout=None,
                                 progress=False, v_max=3)
    probes = [t for t in result.trials if t.probe]
    candidates = [t for t in result.trials[1:] if not t.probe]  # trial 0: the FORA start point
    assert len(result.trials) < 40  # the strategy finished: probes, then its candidates
    assert probes and candidates and all(t.schedule.metadata.get("graph") for t in candidates)
    assert all(t.ok for t in result.trials)
    assert not result.best_trial.probe and result.best_trial.flops_ratio <= 0.6
    assert min(t.value for t in probes) < result.best_trial.value  # probes (one segment reused) never win
    assert "measurement probes" in result.summary()

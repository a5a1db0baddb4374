"""Pure-Python pieces of the search: FORA baselines, the reuse probe, Pareto fronts, wrappers, results."""

import pytest

from procache_opt.baselines import best_fora_within, fora
from procache_opt.costs import StepCosts
from procache_opt.dynamics import choose_direction, choose_forecast_order, probe_reuse_sensitivity
from procache_opt.result import SearchResult, pareto_front
from procache_opt.schedule import Schedule
from procache_opt.search_phases import default_v_max, default_v_min
from procache_opt.strategy import Strategy, TrialResult, TrialStatus
from procache_opt.strategy_wrappers import Enqueued

COSTS = StepCosts(full=(10.0,) * 10, reuse=(0.0,) * 10, selective=(1.0,) * 10)


def _trial(i, pattern, value, flops, status=TrialStatus.COMPLETE):
    return TrialResult(i, Schedule.from_pattern(pattern), status, value=value, flops_ratio=flops,
                       values={"loss": value} if value is not None else {})


def test_fora_and_best_within_budget():
    assert fora(7, 3).pattern == (1, 0, 0, 1, 0, 0, 1)
    assert fora(7, 3, selective=True).pattern == (1, 0, 2, 1, 0, 2, 1)
    best = best_fora_within(COSTS, 0.5)
    assert best.pattern == fora(10, 2).pattern and COSTS.ratio(best) <= 0.5
    assert COSTS.ratio(best_fora_within(COSTS, 0.34)) <= 0.34
    with pytest.raises(ValueError, match="cheapest .* costs 0.100"):
        best_fora_within(COSTS, 0.05)


def test_probe_chooses_direction_from_measured_errors():
    # error of reusing step t falls with t: early reuse hurts -> reuse late -> increasing intervals
    report = probe_reuse_sensitivity(lambda s: 1.0 / (1 + s.pattern.index(0)), num_steps=20, num_probes=6)
    assert report.direction == "increasing" and report.early_late_ratio > 1.25
    assert len(report.probe_steps) == 6 and all(1 <= t <= 19 for t in report.probe_steps)
    report = probe_reuse_sensitivity(lambda s: float(s.pattern.index(0)), num_steps=20, num_probes=6)
    assert report.direction == "decreasing"
    assert choose_direction((1.0, 1.1, 0.95, 1.0)) == (None, pytest.approx(2.1 / 1.95))
    with pytest.raises(ValueError, match="at least 3 denoising steps"):
        probe_reuse_sensitivity(lambda s: 0.0, num_steps=2)


def test_forecast_order_is_the_measured_best_and_failures_lose():
    start = fora(10, 3)
    runs = []

    def loss(schedule):
        runs.append(schedule)
        return {0: 0.5, 1: 0.2}[schedule.forecast_order]

    choice = choose_forecast_order(loss, start)
    assert choice.order == 1 and choice.losses == {0: 0.5, 1: 0.2} and choice.pattern == str(start)
    assert [r.pattern for r in runs] == [start.pattern] * 2 and {r.forecast_order for r in runs} == {0, 1}
    assert "forecast_order=1" in choice.summary() and choice.to_dict()["losses"] == {"0": 0.5, "1": 0.2}
    assert choose_forecast_order(lambda s: [0.3, float("nan")][s.forecast_order], start).order == 0
    assert choose_forecast_order(lambda s: 0.3, start).order == 0  # a tie keeps the cheaper plain reuse
    assert fora(7, 3, forecast_order=1).forecast_order == 1


def test_pareto_front_keeps_only_non_dominated():
    trials = [
        _trial(0, [1, 1, 1], 0.0, 1.0),
        _trial(1, [1, 0, 1], 0.2, 0.6),
        _trial(2, [1, 1, 0], 0.3, 0.6),  # dominated by 1
        _trial(3, [1, 0, 0], 0.5, 0.3),
        _trial(4, [1, 0, 2], 0.6, 0.4),  # dominated by 3
        _trial(5, [1, 2, 0], None, 0.2, TrialStatus.FAILED),
    ]
    assert [t.trial_id for t in pareto_front(trials)] == [3, 1, 0]


def test_result_best_respects_budget_and_round_trips(tmp_path):
    trials = [_trial(0, [1, 1, 1], 0.0, 1.0), _trial(1, [1, 0, 1], 0.2, 0.6), _trial(2, [1, 0, 0], 0.5, 0.3)]
    result = SearchResult(trials, config={"budget_flops": 0.6}, seconds={"setup": 1.5, "trials": 2.0},
                          heldout_images={"full": "not saved"})
    assert result.best.pattern == (1, 0, 1) and result.best.metadata["trial_id"] == 1
    back = SearchResult.load(result.save(tmp_path / "r.json"))
    assert back.trials == trials and back.best == result.best
    assert back.seconds == result.seconds and back.heldout_images == {}
    failed = SearchResult([_trial(0, [1, 0, 0], None, 0.3, TrialStatus.FAILED)], config={"budget_flops": 0.5})
    with pytest.raises(RuntimeError, match="no trial completed"):
        _ = failed.best_trial


def test_default_v_max_leaves_room():
    assert default_v_max(0.5, 50) == 5
    assert default_v_max(0.25, 50) == 11
    assert default_v_max(0.01, 10) == 9


def test_default_v_min_keeps_full_steps_apart_at_half_budget_and_below():
    assert default_v_min(0.5, 50, "decreasing") == default_v_min(0.2, 20, None) == 1
    assert default_v_min(0.6, 50, None) == 0  # alternating FULL and REUSE could not spend 60%
    assert default_v_min(0.35, 50, "increasing") == 0  # early steps sensitive: consecutive FULL steps allowed
    assert default_v_min(0.3, 1, None) == 0


class _Fixed(Strategy):
    def __init__(self):
        super().__init__(space=None)
        self.told = []

    def ask(self, n=1):
        return [Schedule.from_pattern([1, 1, 0])][:n]

    def tell(self, results):
        self.told.extend(results)


def test_enqueued_proposes_first_then_delegates():
    inner = _Fixed()
    wrapped = Enqueued(inner, [Schedule.from_pattern([1, 0, 0])])
    assert [s.pattern for s in wrapped.ask(2)] == [(1, 0, 0), (1, 1, 0)]
    assert [s.pattern for s in wrapped.ask(2)] == [(1, 1, 0)]
    wrapped.tell([_trial(0, [1, 0, 0], 0.1, 0.3)])
    assert len(inner.told) == 1  # no space to check membership against: the inner strategy hears it

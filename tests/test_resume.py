"""Resuming is exact: every strategy, one or two evaluations in flight, results arriving out of order.

Also the loop's other guarantees: a strategy that keeps proposing known schedules cannot hang it, and a
non-finite objective value is a failed trial that can never be best and never reaches a file.
"""

from __future__ import annotations

import json
import logging

import pytest

from procache_opt.backends.base import Backend, EvalOutcome, run_evaluation
from procache_opt.baselines import best_fora_within
from procache_opt.conformance.strategies import CONFORMANCE_SPACES, synthetic_costs
from procache_opt.engine import SearchLoop
from procache_opt.objective import Objective, Score
from procache_opt.result import SearchResult
from procache_opt.schedule import Schedule
from procache_opt.scoring import ObjectiveSet
from procache_opt.storage import DirectoryStore
from procache_opt.strategy import STRATEGIES, Strategy, TrialStatus
from procache_opt.strategy_wrappers import Enqueued

SPACE = CONFORMANCE_SPACES["flops_budget"]
COSTS = synthetic_costs(50)
#: Options that make each strategy learn (or stop) within the 20 evaluations below.
OPTIONS = {"tpe": {"n_startup_trials": 4}, "evolutionary": {"population_size": 4},
           "constrained_sampling": {"num_candidates": 14}, "graph": {"max_probes": 12, "first_round": 4,
                                                                                  "num_candidates": 2}}


class _Loss(Objective):
    name = "loss"

    def score(self, run, reference):  # the backend below scores schedules itself
        raise NotImplementedError


def _score(schedule: Schedule) -> dict[str, Score]:
    late_reuse = [t for t, a in enumerate(schedule.pattern) if a != 1]
    if sum(late_reuse) % 11 == 3:
        raise FloatingPointError("NaN in the cached output")  # some trials fail, as on a real model
    return {"loss": Score.of([sum(late_reuse) / 2500, sum(late_reuse) / 2400])}


class OutOfOrderBackend(Backend):
    """``capacity`` evaluations in flight; ``wait`` finishes the newest first (Ray finishes whichever is quicker).

    ``interrupt_after`` raises ``KeyboardInterrupt`` once that many results were handed out (Ctrl-C).
    """

    def __init__(self, capacity: int, interrupt_after: int | None = None) -> None:
        self._capacity, self.interrupt_after = capacity, interrupt_after
        self.pending: list[tuple[int, Schedule]] = []
        self.evaluated: list[Schedule] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, trial_id: int, schedule: Schedule) -> None:
        self.pending.append((trial_id, schedule))

    def wait(self) -> list[EvalOutcome]:
        if self.interrupt_after is not None and len(self.evaluated) >= self.interrupt_after:
            raise KeyboardInterrupt
        trial_id, schedule = self.pending.pop()
        self.evaluated.append(schedule)
        return [run_evaluation(_score, trial_id, schedule)]


def _search(name: str, backend: Backend, store: DirectoryStore | None, n_trials: int = 20) -> list:
    space = SPACE()
    inner = STRATEGIES.create(name, space, seed=4, **OPTIONS.get(name, {}))
    strategy = Enqueued(inner, [best_fora_within(COSTS, 0.35)])  # as search() starts: the FORA start point first
    return SearchLoop(strategy, backend, ObjectiveSet((_Loss(),), (1.0,)), COSTS, n_trials, store=store).run()


def _facts(trials):
    return [(t.trial_id, t.schedule.pattern, t.status, t.value) for t in trials]


@pytest.mark.parametrize("capacity", [1, 2])
@pytest.mark.parametrize("name", sorted(STRATEGIES.available()))
def test_resume_is_exact_for_every_strategy(name: str, capacity: int, tmp_path) -> None:
    uninterrupted = _search(name, OutOfOrderBackend(capacity), None)
    interrupted = OutOfOrderBackend(capacity, interrupt_after=min(10, len(uninterrupted) - 1))
    with pytest.raises(KeyboardInterrupt):
        _search(name, interrupted, DirectoryStore(tmp_path))
    backend = OutOfOrderBackend(capacity)
    resumed = _search(name, backend, DirectoryStore(tmp_path))
    assert _facts(resumed) == _facts(uninterrupted)
    finished_before = {s.pattern for s in interrupted.evaluated}
    assert not finished_before & {s.pattern for s in backend.evaluated}, "a finished evaluation was redone"
    assert len(interrupted.evaluated) + len(backend.evaluated) == len(uninterrupted)
    best = [SearchResult(trials, {"budget_flops": 0.35}).best_trial for trials in (resumed, uninterrupted)]
    assert _facts(best[:1]) == _facts(best[1:])


def test_an_interruption_between_recording_and_telling_loses_nothing(tmp_path, monkeypatch) -> None:
    uninterrupted = _search("tpe", OutOfOrderBackend(2), None)
    original_tell = Enqueued.tell
    calls = {"n": 0}

    def tell_then_die(self, results):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # the result is stored; the strategy never heard of it
        original_tell(self, results)

    monkeypatch.setattr(Enqueued, "tell", tell_then_die)
    with pytest.raises(KeyboardInterrupt):
        _search("tpe", OutOfOrderBackend(2), DirectoryStore(tmp_path))
    monkeypatch.setattr(Enqueued, "tell", original_tell)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["told"] == len(state["trials"]) - 1
    assert _facts(_search("tpe", OutOfOrderBackend(2), DirectoryStore(tmp_path))) == _facts(uninterrupted)


class _Repeater(Strategy):
    """Proposes two new schedules, then only ever the first one again."""

    def __init__(self, space) -> None:
        super().__init__(space)
        self.asks = 0
        self.first, self.second = space.sample(self.rng), space.sample(self.rng)
        while self.second == self.first:
            self.second = space.sample(self.rng)

    def ask(self, n: int = 1) -> list[Schedule]:
        self.asks += 1
        if self.asks > 10_000:
            raise RuntimeError("the loop kept asking a strategy that only repeats itself")
        return [self.first, self.second][:n] if self.asks == 1 else [self.first] * min(n, 1)


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_strategy_that_only_repeats_itself_cannot_hang_the_search(capacity: int, caplog) -> None:
    strategy = _Repeater(SPACE())
    with caplog.at_level(logging.WARNING, "procache_opt.search"):
        trials = SearchLoop(strategy, OutOfOrderBackend(capacity), ObjectiveSet((_Loss(),), (1.0,)), COSTS,
                            n_trials=10).run()
    assert len(trials) == capacity and strategy.asks < 100  # ask(1) first gets only the first schedule
    assert "proposed nothing new 50 times in a row" in caplog.text


class _NaNFirst(Backend):
    """Trial 0 scores NaN, every other trial a finite loss."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Schedule]] = []

    @property
    def capacity(self) -> int:
        return 1

    def submit(self, trial_id: int, schedule: Schedule) -> None:
        self.pending.append((trial_id, schedule))

    def wait(self) -> list[EvalOutcome]:
        trial_id, schedule = self.pending.pop(0)
        value = float("nan") if trial_id == 0 else 0.5 + trial_id / 100
        return [EvalOutcome(trial_id, schedule, {"loss": Score.of([value, value])})]


def test_a_nan_objective_value_is_a_failed_trial_and_files_stay_json(tmp_path) -> None:
    strategy = STRATEGIES.create("random", SPACE(), seed=0)
    trials = SearchLoop(strategy, _NaNFirst(), ObjectiveSet((_Loss(),), (1.0,)), COSTS, n_trials=4,
                        store=DirectoryStore(tmp_path)).run()
    assert trials[0].status == TrialStatus.FAILED and "non-finite" in trials[0].error
    result = SearchResult(trials, {"budget_flops": 1.0})
    assert result.best_trial.trial_id == 1
    strict = json.loads((tmp_path / "state.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"{name} in state.json"))
    assert [t["status"] for t in strict["trials"]][0] == "failed"
    result.save(tmp_path / "result.json")
    json.loads((tmp_path / "result.json").read_text(), parse_constant=lambda n: pytest.fail(n))


def test_a_strategy_state_that_does_not_fit_is_one_line_naming_the_store(tmp_path) -> None:
    from procache_opt._io import CorruptFileError

    _search("tpe", OutOfOrderBackend(1), DirectoryStore(tmp_path), n_trials=3)
    state = json.loads((tmp_path / "state.json").read_text())
    state["strategy"]["inner"] = {"history": "not a history"}
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CorruptFileError, match=f"{tmp_path}: the stored state of strategy Enqueued cannot be "):
        _search("tpe", OutOfOrderBackend(1), DirectoryStore(tmp_path), n_trials=5)

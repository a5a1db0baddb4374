"""The search loop with a fake strategy and backend: storage order, resume, failures, duplicates."""

import json

import pytest

from procache_opt.backends import LocalBackend
from procache_opt.costs import StepCosts
from procache_opt.engine import SearchLoop
from procache_opt.objective import Objective, Score
from procache_opt.schedule import Schedule
from procache_opt.scoring import ObjectiveSet
from procache_opt.storage import DirectoryStore, OptunaStore, SearchConfigMismatchError, open_store
from procache_opt.strategy import Strategy, TrialStatus

COSTS = StepCosts(full=(10.0,) * 6, reuse=(1.0,) * 6, selective=(2.0,) * 6)
PATTERNS = [(1, 0, 0, 1, 0, 0), (1, 1, 0, 1, 0, 0), (1, 0, 1, 0, 1, 0), (1, 1, 1, 0, 0, 0), (1, 0, 0, 0, 0, 1)]


class _Loss(Objective):
    name = "loss"

    def score(self, run, reference):  # not used: the fake evaluator returns scores directly
        raise NotImplementedError


class _Listed(Strategy):
    """Proposes a fixed list (with a repeat), records what it is told."""

    def __init__(self, patterns, seed=0):
        super().__init__(space=None, seed=seed)
        self.queue = [Schedule.from_pattern(p) for p in patterns]
        self.told = []

    def ask(self, n=1):
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def tell(self, results):
        self.told.extend(results)

    @property
    def is_finished(self):
        return not self.queue


def _evaluate_counting(calls):
    def evaluate(schedule):
        calls.append(schedule.pattern)
        if schedule.pattern == PATTERNS[2]:
            raise FloatingPointError("NaN in output")
        return {"loss": Score.of([sum(schedule.pattern), sum(schedule.pattern) + 1])}

    return evaluate


def _loop(strategy, calls, store=None, n_trials=10):
    objectives = ObjectiveSet((_Loss(),), (1.0,))
    return SearchLoop(strategy, LocalBackend(_evaluate_counting(calls)), objectives, COSTS, n_trials, store=store)


def test_loop_scores_records_failures_and_skips_repeats():
    calls = []
    strategy = _Listed(PATTERNS[:3] + [PATTERNS[0]] + PATTERNS[3:])
    trials = _loop(strategy, calls).run()
    assert [t.trial_id for t in trials] == [0, 1, 2, 3, 4]
    assert len(calls) == 5  # the repeated schedule was answered, not evaluated again
    failed = [t for t in trials if t.status == TrialStatus.FAILED]
    assert len(failed) == 1 and "NaN in output" in failed[0].error and failed[0].value is None
    ok = trials[0]
    assert ok.value == pytest.approx(2.5) and ok.values["loss"] == pytest.approx(2.5)
    assert ok.flops_ratio == pytest.approx(COSTS.ratio(PATTERNS[0]))
    assert len(strategy.told) == 6  # every result, and the repeat's, reached the strategy


def test_n_trials_bounds_evaluations():
    calls = []
    trials = _loop(_Listed(PATTERNS), calls, n_trials=2).run()
    assert len(trials) == 2 and len(calls) == 2


def test_resume_from_directory_redoes_nothing(tmp_path):
    config = {"space": "toy", "seed": 0}
    calls = []
    store = DirectoryStore(tmp_path / "run")
    store.bind(config)
    first = _loop(_Listed(PATTERNS), calls, store, n_trials=3).run()
    assert len(calls) == 3
    saved = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [t["trial_id"] for t in saved["trials"]] == [0, 1, 2] and saved["told"] == 3

    calls.clear()
    store2 = DirectoryStore(tmp_path / "run")
    assert store2.bind(config) == {}
    resumed = _loop(_Listed(PATTERNS), calls, store2, n_trials=5).run()
    assert calls == [PATTERNS[3], PATTERNS[4]]  # only the new ones ran
    assert [t.trial_id for t in resumed] == [0, 1, 2, 3, 4]
    assert resumed[:3] == first


def test_resume_into_a_different_search_fails(tmp_path):
    store = DirectoryStore(tmp_path)
    store.bind({"seed": 0, "model": {"weights": "ab12"}})
    with pytest.raises(SearchConfigMismatchError, match=r'differs in: model.weights \("ab12" -> "cd34"\), seed'):
        DirectoryStore(tmp_path).bind({"seed": 1, "model": {"weights": "cd34"}})


def test_optuna_storage_url_round_trip(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    store = open_store(url)
    assert isinstance(store, OptunaStore)
    calls = []
    store.bind({"seed": 0})
    trials = _loop(_Listed(PATTERNS), calls, store, n_trials=3).run()
    again = open_store(url)
    assert again.bind({"seed": 0}) == {}
    assert again.load_trials() == trials and again.load_state().told == 3

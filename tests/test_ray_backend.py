"""The Ray backend on a local 2-CPU Ray instance and on a loopback cluster (``ray start --head`` on 127.0.0.1).

Evaluations use a fake, picklable spec: each evaluation leaves a file in a marker folder (so tests count
evaluations across worker processes), sleeps a little (so concurrency is visible) and, for chosen patterns,
kills its own process or raises, as a crashing or NaN-producing model would.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from procache_opt.strategies.graph import GraphStrategy
from ray import tune

import procache_opt
from procache_opt.backends.base import EvalOutcome
from procache_opt.backends.local import LocalBackend
from procache_opt.backends.ray_backend import RayBackend
from procache_opt.backends.ray_tune import StrategySearcher, evaluation_trainable
from procache_opt.conformance.strategies import CONFORMANCE_SPACES
from procache_opt.costs import StepCosts
from procache_opt.engine import SearchLoop
from procache_opt.objective import Objective, Score
from procache_opt.result import SearchResult
from procache_opt.schedule import Schedule
from procache_opt.scoring import ObjectiveSet
from procache_opt.storage import DirectoryStore
from procache_opt.strategy import Strategy, TrialStatus
from procache_opt.sweep import run_sweep
from procache_opt.testing import tiny_dit_pipeline

pytestmark = pytest.mark.ray

# Workers cannot import this test module (tests/ is not on their path): ship its classes by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEPS = 6
COSTS = StepCosts(full=(10.0,) * STEPS, reuse=(1.0,) * STEPS, selective=(2.0,) * STEPS)
CANDIDATES = [(1, *bits) for bits in itertools.product((0, 1), repeat=STEPS - 1)]
KILLER = (1, 0, 0, 0, 0, 0)  # the pattern whose evaluation kills its worker process
NAN = (1, 1, 1, 1, 1, 0)  # the pattern whose evaluation raises


# -- fakes -----------------------------------------------------------------------------------------------------
class _Loss(Objective):
    name = "loss"

    def score(self, run, reference):  # the fake evaluator returns scores directly
        raise NotImplementedError


OBJECTIVES = ObjectiveSet((_Loss(),), (1.0,))


@dataclass(frozen=True)
class FakeSpec:
    """Stands in for an EvaluationSpec: picklable, builds its evaluator in the worker."""

    markers: str
    seconds: float = 0.05
    kill_once: tuple[int, ...] | None = None
    fail_build: bool = False

    def build_evaluator(self) -> FakeEvaluator:
        if self.fail_build:
            raise FileNotFoundError("no such model: missing-model")
        return FakeEvaluator(self)

    def objective_set(self) -> ObjectiveSet:
        return OBJECTIVES


class FakeEvaluator:
    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec

    def evaluate(self, schedule: Schedule) -> dict[str, Score]:
        markers = Path(self.spec.markers)
        start = time.time()
        if schedule.pattern == self.spec.kill_once and not (markers / "killed").exists():
            (markers / "killed").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        (markers / f"{''.join(map(str, schedule.pattern))}.{uuid.uuid4().hex}").touch()  # one per evaluation
        if schedule.pattern == NAN:
            raise FloatingPointError("NaN in the denoised latents")
        time.sleep(self.spec.seconds)
        loss = sum((i + 1) * a for i, a in enumerate(schedule.pattern)) / 10
        return {"loss": Score.of([loss]), "pid": Score.of([os.getpid()]),
                "start": Score.of([start]), "end": Score.of([time.time()])}


class SeededSampler(Strategy):
    """Deterministic: a seeded shuffle of CANDIDATES, proposed in order (repeats included, to test memoization)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(space=None, seed=seed)
        order = self.rng.permutation(len(CANDIDATES))
        self.queue = [Schedule.from_pattern(CANDIDATES[i]) for i in [*order[:6], order[2], *order[6:]]]
        self.told: list = []

    def ask(self, n: int = 1) -> list[Schedule]:
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def tell(self, results) -> None:
        self.told.extend(results)

    @property
    def is_finished(self) -> bool:
        return not self.queue


def evaluation_counts(markers: Path) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for f in markers.iterdir():
        if "." in f.name:
            key = tuple(int(c) for c in f.name.split(".")[0])
            counts[key] = counts.get(key, 0) + 1
    return counts


def run_search(backend, n_trials: int, store=None, on_result=None):
    loop = SearchLoop(SeededSampler(seed=3), backend, OBJECTIVES, COSTS, n_trials, store=store, on_result=on_result)
    return loop.run()


def drain(backend, expected: int) -> list[EvalOutcome]:
    outcomes: list[EvalOutcome] = []
    while len(outcomes) < expected:
        outcomes += backend.wait()
    return sorted(outcomes, key=lambda o: o.trial_id)


# -- Ray instances ---------------------------------------------------------------------------------------------
QUIET = {"log_to_driver": False, "logging_level": logging.WARNING}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["local", "loopback-cluster"])
def ray_instance(request) -> Iterator[str]:
    """Connects this process to a 2-CPU Ray: started in-process, or a head node joined by its address."""
    with pytest.MonkeyPatch.context() as env:
        # Token authentication stays off on these private instances: Ray switches it on for the first local
        # instance of a process, and the driver would then refuse unauthenticated calls from the head's workers.
        env.setenv("RAY_AUTH_MODE", "disabled")
        if request.param == "local":
            ray.init(num_cpus=2, resources={"accelerator": 1}, include_dashboard=False,
                     object_store_memory=100 * 1024**2, **QUIET)
            yield "local"
            ray.shutdown()
        else:
            yield from _loopback_cluster()


def _loopback_cluster() -> Iterator[str]:
    port, temp_dir = _free_port(), tempfile.mkdtemp(prefix="ray-")
    # --block keeps the head's processes children of this one, so teardown stops exactly them (`ray stop` would
    # stop every Ray on the machine, other users' included).
    head = subprocess.Popen(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=100000000",
         f"--temp-dir={temp_dir}", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not Path(temp_dir, "ray_current_cluster").exists():  # written once the head is up
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`ray start --head` did not come up (exit status {head.poll()})")
            time.sleep(0.5)
        ray.init(address=f"127.0.0.1:{port}", **QUIET)
        yield f"127.0.0.1:{port}"
        ray.shutdown()
    finally:
        head.terminate()
        head.wait(timeout=60)


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


# -- tests on both instances -----------------------------------------------------------------------------------
def test_two_workers_evaluate_concurrently(ray_instance, markers):
    with RayBackend(FakeSpec(str(markers), seconds=1.0)) as backend:
        assert backend.capacity == 2  # no GPU: one worker per CPU, as many as fit
        for i, pattern in enumerate(CANDIDATES[:2]):
            backend.submit(i, Schedule.from_pattern(pattern))
        first, second = drain(backend, 2)
    assert first.ok and second.ok
    assert first.scores["pid"].mean != second.scores["pid"].mean
    assert first.scores["start"].mean < second.scores["end"].mean and second.scores["start"].mean < first.scores[
        "end"].mean  # the two evaluations overlapped in time


def test_ray_finds_the_same_trials_and_best_as_local(ray_instance, markers):
    local = run_search(LocalBackend(FakeSpec(str(markers)).build_evaluator().evaluate), n_trials=8)
    with RayBackend(FakeSpec(str(markers)), num_workers=2) as backend:
        remote = run_search(backend, n_trials=8)
    assert [(t.trial_id, t.schedule, t.status, t.value) for t in remote] == [
        (t.trial_id, t.schedule, t.status, t.value) for t in local]
    best = min((t for t in remote if t.ok), key=lambda t: (t.value, t.trial_id))
    assert best.schedule == min((t for t in local if t.ok), key=lambda t: (t.value, t.trial_id)).schedule


def test_killed_worker_is_replaced_and_its_evaluation_retried(ray_instance, markers):
    spec = FakeSpec(str(markers), kill_once=KILLER)
    with RayBackend(spec, num_workers=2, max_retries=1) as backend:
        patterns = [KILLER, CANDIDATES[5], CANDIDATES[6], CANDIDATES[7], CANDIDATES[9]]
        for i, pattern in enumerate(patterns):
            backend.submit(i, Schedule.from_pattern(pattern))
        outcomes = drain(backend, len(patterns))
        assert backend.capacity == 2
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    retried = outcomes[0]
    assert retried.extra == {"worker": 0, "attempt": 2}  # the killed evaluation ran again in worker slot 0 ...
    assert retried.scores["pid"].mean != int((markers / "killed").read_text())  # ... in a fresh process
    assert evaluation_counts(markers)[KILLER] == 1


def test_interrupted_search_resumes_without_reevaluating(ray_instance, markers, tmp_path):
    store = DirectoryStore(tmp_path / "search")
    seen: list = []

    def interrupt_after_three(result) -> None:
        seen.append(result)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C with evaluations in flight

    with pytest.raises(KeyboardInterrupt), RayBackend(FakeSpec(str(markers), seconds=0.3), num_workers=2) as b:
        run_search(b, n_trials=10, store=store, on_result=interrupt_after_three)
    stored = {t.schedule.pattern for t in DirectoryStore(tmp_path / "search").load_trials()}
    # Every result announced was stored first; results that arrived in the same wait are stored with it.
    assert {t.schedule.pattern for t in seen} <= stored and 3 <= len(stored) <= 4

    with RayBackend(FakeSpec(str(markers), seconds=0.3), num_workers=2) as backend:
        resumed = run_search(backend, n_trials=10, store=store)
    counts = evaluation_counts(markers)
    assert len(resumed) == 10 and len(store.load_trials()) == 10
    assert all(counts[p] == 1 for p in stored)  # nothing stored before the interruption ran again
    assert {t.schedule.pattern for t in resumed} >= stored


# -- failure modes (local instance only: they do not depend on how the cluster was started) ------------------
local_only = pytest.mark.parametrize("ray_instance", ["local"], indirect=True)


@local_only
def test_worker_death_without_retries_is_a_failed_trial_and_the_search_goes_on(ray_instance, markers):
    class KillerFirst(SeededSampler):
        def __init__(self) -> None:
            super().__init__(seed=1)
            self.queue.insert(0, Schedule.from_pattern(KILLER))

    with RayBackend(FakeSpec(str(markers), kill_once=KILLER), num_workers=2, max_retries=0) as backend:
        trials = SearchLoop(KillerFirst(), backend, OBJECTIVES, COSTS, n_trials=6).run()
    assert len(trials) == 6
    failed = [t for t in trials if t.status == TrialStatus.FAILED]
    assert [t.schedule.pattern for t in failed] == [KILLER]
    assert failed[0].error.startswith("worker died while evaluating this schedule (attempt 1 of 1)")
    assert sum(t.ok for t in trials) == 5


@local_only
def test_exception_in_evaluation_is_recorded_with_its_schedule_and_the_worker_kept(ray_instance, markers):
    with RayBackend(FakeSpec(str(markers)), num_workers=1) as backend:
        backend.submit(0, Schedule.from_pattern(NAN))
        backend.submit(1, Schedule.from_pattern(CANDIDATES[3]))
        failed, ok = drain(backend, 2)
    assert failed.schedule.pattern == NAN and not failed.ok
    assert failed.error.startswith("FloatingPointError: NaN in the denoised latents")
    assert ok.ok and "attempt" not in ok.extra


@local_only
def test_a_worker_that_cannot_build_its_evaluator_fails_at_construction(ray_instance, markers):
    with pytest.raises(ray.exceptions.RayActorError, match="no such model: missing-model"):
        RayBackend(FakeSpec(str(markers), fail_build=True), num_workers=1)


@local_only
def test_worker_count_follows_cluster_resources(ray_instance, markers):
    with RayBackend(FakeSpec(str(markers)), resources_per_worker={"CPU": 1, "accelerator": 1}) as backend:
        assert backend.capacity == 1  # a scarce resource (as GPUs are) bounds the worker count
    with pytest.raises(ValueError, match="cannot host one worker"):
        RayBackend(FakeSpec(str(markers)), resources_per_worker={"CPU": 3})
    with pytest.raises(ValueError, match="num_workers=3, but the Ray cluster .* fits 2"):
        RayBackend(FakeSpec(str(markers)), num_workers=3, resources_per_worker={"CPU": 1})
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        RayBackend(FakeSpec(str(markers)), max_retries=-1)


@local_only
def test_strategy_searcher_drives_ray_tune(ray_instance, markers, tmp_path):
    strategy = SeededSampler(seed=5)
    proposed = [s.pattern for s in strategy.queue[:4]]
    tuner = tune.Tuner(
        evaluation_trainable(FakeSpec(str(markers))),
        tune_config=tune.TuneConfig(search_alg=StrategySearcher(strategy), num_samples=4, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()
    assert sorted(tuple(r.config["pattern"]) for r in results) == sorted(proposed)
    assert len(strategy.told) == 4 and all(t.ok for t in strategy.told)
    best = results.get_best_result(metric="value", mode="min")
    assert best.metrics["value"] == min(t.value for t in strategy.told)
    assert best.metrics["values"]["loss"] == best.metrics["value"]


def test_strategy_searcher_marks_measurement_probes_in_the_config() -> None:
    searcher = StrategySearcher(GraphStrategy(CONFORMANCE_SPACES["flops_budget"]()))
    config = searcher.suggest("trial-0")
    assert config["probe"] is True and Schedule.from_dict(config["schedule"]).metadata["probe"]
    assert StrategySearcher(SeededSampler(seed=5)).suggest("trial-0")["probe"] is False


@local_only
def test_real_search_swept_on_ray_matches_local_search(ray_instance, tmp_path):
    """The real EvaluationSpec (a pipeline folder) on two workers: same trials, bit for bit, as in-process."""
    folder = str(tmp_path / "tiny-dit")
    tiny_dit_pipeline(seed=0).save_pretrained(folder)
    options = {"num_inference_steps": 6, "calibration": 2, "heldout": None, "monotone": None}
    local = procache_opt.search(folder, budget_flops=0.6, strategy="random", n_trials=4, progress=False, **options)
    sweep = {"models": [folder], "budgets": [0.6], "strategies": ["random"], "n_trials": 4, "backend": "ray",
             "backend_options": {"num_workers": 2}, "search": options}
    rows = run_sweep(sweep, out=tmp_path / "runs")
    remote = SearchResult.load(tmp_path / "runs" / rows[0]["cell"] / "result.json")
    assert [(t.trial_id, t.schedule, t.value) for t in remote.trials] == [
        (t.trial_id, t.schedule, t.value) for t in local.trials]
    assert {t.extra["worker"] for t in remote.trials} <= {0, 1} and remote.best == local.best

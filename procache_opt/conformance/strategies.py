"""``StrategyConformance``: the tests every strategy, built-in or third-party, should pass.

Modelled on ``optuna/testing/pytest_samplers.py``. Subclass it in a test module and name the strategy;
pytest collects the inherited tests::

    from procache_opt.conformance.strategies import StrategyConformance
    from my_package import MyStrategy

    class TestMyStrategy(StrategyConformance):
        strategy_cls = MyStrategy
        strategy_kwargs = {"population": 8}

The checks: proposals always lie in the space (ProCache's constraints, arXiv 2512.17298, Sec. 3.2, on
several spaces: the authors' DiT settings, any order, increasing order, a FLOPs budget), or are measurement
probes marked with :func:`~procache_opt.strategy.as_probe` (schedules of the space's length that are never a
result, e.g. the ``graph`` strategy's single-segment runs); ``ask(n)`` returns
at most ``n`` distinct schedules never proposed before; a finished strategy proposes nothing; the same
seed gives the same proposals and different seeds differ; failed results are accepted; the state is JSON
and resumes; the strategy's module imports neither torch, diffusers nor ray; the registry finds it by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from procache_opt.costs import StepCosts
from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.strategy import STRATEGIES, Strategy, TrialResult, TrialStatus, is_probe

__all__ = ["CONFORMANCE_SPACES", "StrategyConformance", "check_proposal", "synthetic_costs", "toy_results"]


def synthetic_costs(num_steps: int) -> StepCosts:
    """Costs shaped like DiT-XL/2's: a reused step ~0.2% of a FULL one, selective steps dearer late; a DEEP or
    SHALLOW step (per-depth schedules, blocks split in half) recomputes half the blocks."""
    half = (0.002 + 0.499,) * num_steps
    return StepCosts(full=(1.0,) * num_steps, reuse=(0.002,) * num_steps,
                     selective=tuple(0.002 + 0.06 * t / num_steps for t in range(num_steps)),
                     deep=half, shallow=half, depth_split=0.5)


#: Spaces every strategy is checked on (all small enough for ``exhaustive``'s default ``max_size``).
CONFORMANCE_SPACES: dict[str, Callable[[], ScheduleSpace]] = {
    "authors_dit": lambda: ScheduleSpace(50, num_full=17, v_min=1, v_max=3),
    "any_order": lambda: ScheduleSpace(12, monotone=None, v_max=4),
    "increasing": lambda: ScheduleSpace(30, monotone="increasing", v_min=1, v_max=7, min_full=6),
    "flops_budget": lambda: ScheduleSpace(50, max_flops_ratio=0.35, costs=synthetic_costs(50), v_min=1,
                                          v_max=6),
    "per_depth": lambda: ScheduleSpace(16, max_flops_ratio=0.45, costs=synthetic_costs(16), monotone=None, v_max=5,
                                       refresh="deep"),
}


def check_proposal(space: ScheduleSpace, schedule: Schedule) -> None:
    """A proposal is a member of ``space``, or a measurement probe of the space's length."""
    if is_probe(schedule):
        assert schedule.num_steps == space.num_steps, f"a probe of {schedule.num_steps} steps in a space of " \
                                                      f"{space.num_steps}"
    else:
        assert space.contains(schedule), space.violations(schedule)


def toy_results(schedules: list[Schedule], first_id: int = 0) -> list[TrialResult]:
    """Deterministic scores (late FULL steps are good); every third trial fails, with ``value=None``."""
    results = []
    for offset, schedule in enumerate(schedules):
        trial_id = first_id + offset
        if trial_id % 3 == 2:
            results.append(TrialResult(trial_id, schedule, TrialStatus.FAILED, error="toy failure"))
        else:
            value = sum(t for t, a in enumerate(schedule.pattern) if a != 1) / len(schedule) ** 2
            results.append(TrialResult(trial_id, schedule, TrialStatus.COMPLETE, value=value))
    return results


class StrategyConformance:
    """Inherited pytest tests for one strategy class; set :attr:`strategy_cls` (and kwargs) in a subclass.

    Attributes:
        strategy_cls: The strategy under test.
        strategy_kwargs: Extra constructor arguments (besides ``space`` and ``seed``).
        seed_dependent: False for deterministic strategies (e.g. ``uniform``): skips "seeds differ".
        rounds: How many ask/tell rounds the tests run.
    """

    strategy_cls: ClassVar[type[Strategy]]
    strategy_kwargs: ClassVar[dict[str, Any]] = {}
    seed_dependent: ClassVar[bool] = True
    rounds: ClassVar[int] = 4

    def make(self, space: ScheduleSpace, seed: int = 0) -> Strategy:
        """Build the strategy under test; override for a custom factory."""
        return self.strategy_cls(space, seed=seed, **self.strategy_kwargs)

    def run(self, strategy: Strategy, n: int = 3) -> list[Schedule]:
        """Ask/tell rounds with :func:`toy_results`; checks every ``ask`` on the way, returns all proposals."""
        proposed: list[Schedule] = []
        for _ in range(self.rounds):
            finished = strategy.is_finished
            batch = strategy.ask(n)
            assert len(batch) <= n, f"ask({n}) returned {len(batch)} schedules"
            assert len(set(batch)) == len(batch), "ask returned the same schedule twice"
            assert not set(batch) & set(proposed), "ask re-proposed a schedule"
            assert not (finished and batch), "a finished strategy proposed"
            for schedule in batch:
                check_proposal(strategy.space, schedule)
            strategy.tell(toy_results(batch, len(proposed)))
            proposed += batch
        return proposed

    @pytest.fixture(params=sorted(CONFORMANCE_SPACES))
    def space(self, request: pytest.FixtureRequest) -> ScheduleSpace:
        return CONFORMANCE_SPACES[request.param]()

    def test_proposals_are_members(self, space: ScheduleSpace) -> None:
        assert self.run(self.make(space)), "the strategy proposed nothing on a non-empty space"

    @pytest.mark.parametrize("n", [0, 1, 5])
    def test_ask_returns_at_most_n_distinct_unseen(self, n: int) -> None:
        self.run(self.make(CONFORMANCE_SPACES["any_order"]()), n=n)

    def test_finished_strategy_proposes_nothing(self) -> None:
        strategy = self.make(CONFORMANCE_SPACES["authors_dit"]())  # 9 members
        proposed = self.run(strategy, n=5) + self.run(strategy, n=5)
        assert len([s for s in proposed if not is_probe(s)]) <= 9
        if strategy.is_finished:
            assert strategy.ask(5) == []

    def test_same_seed_same_proposals(self, space: ScheduleSpace) -> None:
        assert self.run(self.make(space, seed=3)) == self.run(self.make(space, seed=3))

    def test_different_seeds_differ(self) -> None:
        if not self.seed_dependent:
            pytest.skip("deterministic strategy")
        space = CONFORMANCE_SPACES["flops_budget"]()
        assert self.run(self.make(space, seed=1)) != self.run(self.make(space, seed=2))

    def test_failed_results_are_accepted(self) -> None:
        strategy = self.make(CONFORMANCE_SPACES["any_order"]())
        for trial_id, schedule in enumerate(strategy.ask(4)):
            strategy.tell([TrialResult(trial_id, schedule, TrialStatus.FAILED, error="out of memory")])
        for schedule in strategy.ask(2):
            check_proposal(strategy.space, schedule)

    def test_state_is_json_and_resumes(self, space: ScheduleSpace) -> None:
        original = self.make(space, seed=5)
        proposed = self.run(original)
        state = json.loads(json.dumps(original.state_dict()))
        expected = original.ask(3)
        resumed = self.make(space, seed=5)
        resumed.tell(toy_results(proposed))  # the engine replays the stored results, then restores the state
        resumed.load_state_dict(state)
        assert resumed.ask(3) == expected

    def test_does_not_import_heavy_frameworks(self) -> None:
        module, name = self.strategy_cls.__module__, self.strategy_cls.__qualname__
        code = (f"import sys; from procache_opt.space import ScheduleSpace; from {module} import {name}; "
                f"{name}(ScheduleSpace(12, monotone=None, v_max=4), **{self.strategy_kwargs!r}).ask(2); "
                "print(sorted({'torch', 'diffusers', 'ray'} & set(sys.modules)))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"

    def test_registered_by_name(self) -> None:
        if not self.strategy_cls.name:
            pytest.skip("the strategy sets no registry name")
        assert STRATEGIES.get(self.strategy_cls.name) is self.strategy_cls

"""Optuna's Tree-structured Parzen Estimator over ProCache schedules, through ask/tell.

TPE (Bergstra et al., "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011; Optuna's implementation
as described by Watanabe, "Tree-Structured Parzen Estimator: Understanding Its Algorithm Components and
Their Roles for Better Empirical Performance", 2023) models good and bad trials with two Parzen densities and
proposes where their ratio is largest. Here it learns segment lengths of ProCache schedules (arXiv
2512.17298, Sec. 3.2) instead of the authors' hand-scored stick-breaking draws.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from procache_opt.strategies._common import ProposalHistory
from procache_opt.strategies._parametrization import ObjectiveSpec, OptunaCoding, UniformFallback

from procache_opt.schedule import Schedule
from procache_opt.strategy import Strategy, TrialResult

if TYPE_CHECKING:
    from procache_opt.space import ScheduleSpace

__all__ = ["TPEStrategy"]

Outcome = tuple[float, ...] | None  # objective values, or None for a failed trial
Pattern = tuple[int, ...]


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines (study creation, skipped tells) without changing its level for good."""
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        optuna_logger.setLevel(level)


class TPEStrategy(Strategy):
    """Optuna's ``TPESampler`` on an in-memory study, decoding each trial into a feasible schedule.

    Parametrization (``_parametrization.OptunaCoding``, define-by-run): ``num_full`` (when the space allows
    several counts of FULL steps) and one weight ``segment_i`` per segment; segment ``i`` takes its weight's
    share of the steps left, snapped by ``ScheduleSpace.decode`` to the nearest length from which a member
    continues under every constraint (Eqs. 2-4 and the FLOPs budget). So every proposal is a member and no
    evaluation is spent on an infeasible schedule. The constraints are hard, so they are not passed to
    Optuna as soft constraints (``Trial.set_constraint``): constrained TPE would still propose, and we would
    score, infeasible schedules.

    The first ``n_startup_trials`` proposals are uniform draws from the space (uniform over members, which
    Optuna's random sampler seen through the decoder is not); they enter the study through
    ``enqueue_trial`` so TPE learns from them. Batches: ``ask(n)`` asks Optuna ``n`` times; with
    ``constant_liar`` the pending trials count as bad ones, so a batch spreads out. Duplicates: if TPE decodes
    to a schedule already told, the trial is told that known outcome and TPE is asked again (up to
    ``max_attempts`` times, then a uniform draw), so the engine never evaluates a schedule twice; a decode to
    a pending schedule becomes a twin trial that receives the same result.

    Multi-objective (``objectives=["feature_error", "flops_ratio"]``): a multi-objective study (MOTPE), each
    value read from ``TrialResult.values``, so one search traces the quality/FLOPs front for every budget.
    Single-objective mode minimises ``TrialResult.value``. Failed trials are told as ``TrialState.FAIL``.

    Seeding: one generator (``self.rng``) draws the uniform start-up schedules and a fresh seed for the
    sampler at every ask, so the same seed and the same results give the same proposals.

    Resuming: a fresh strategy told the same results continues the search from an equivalent study;
    :meth:`state_dict` (JSON) holds the exact study (raw parameters, twins, pending trials) and the
    generator, so restoring it continues exactly where the original left off.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> space = ScheduleSpace(20, num_full=6, v_min=1, v_max=4, monotone=None)
        >>> strategy = TPEStrategy(space, seed=0, n_startup_trials=2)
        >>> batch = strategy.ask(3)
        >>> len(batch), all(space.contains(s) for s in batch)
        (3, True)

    Args:
        space: The feasible schedules.
        seed: Seeds the strategy's generator, from which the sampler's seed is drawn.
        n_startup_trials: Uniform proposals before TPE models the results.
        multivariate: Multivariate TPE (one joint density over all parameters) rather than one per parameter.
        constant_liar: Treat pending trials as bad so parallel proposals differ.
        objectives: Names in ``TrialResult.values`` to optimise jointly; ``None``: ``TrialResult.value``.
        directions: ``"minimize"``/``"maximize"`` per objective (default: minimise all).
        max_attempts: TPE asks per proposal before falling back to a uniform draw.
    """

    name = "tpe"

    def __init__(self, space: ScheduleSpace, seed: int = 0, n_startup_trials: int = 10, multivariate: bool = True,
                 constant_liar: bool = True, objectives: Sequence[str] | None = None,
                 directions: Sequence[str] | None = None, max_attempts: int = 16) -> None:
        super().__init__(space, seed)
        if n_startup_trials < 0 or max_attempts < 1:
            raise ValueError(f"n_startup_trials={n_startup_trials!r} must be >= 0 and max_attempts="
                             f"{max_attempts!r} >= 1")
        self.objectives = ObjectiveSpec.of(objectives, directions)
        self.n_startup_trials = n_startup_trials
        self.max_attempts = max_attempts
        self._sampler_options = {"n_startup_trials": n_startup_trials, "multivariate": multivariate,
                                 "constant_liar": constant_liar}
        self._coding = OptunaCoding(space)
        self._history = ProposalHistory(self.rng)  # proposed or told: never proposed (again)
        self._fallback = UniformFallback(space, self._history, self.name)
        self._restore([], {}, {})

    @classmethod
    def options_for_budget(cls, n_trials: int) -> dict[str, Any]:
        """The default 10 random start-up trials are sized for 30+ evaluations; with fewer TPE would hardly
        model, so it starts modelling after a third of the budget."""
        return {"n_startup_trials": max(2, n_trials // 3)}

    def _restore(self, trials: list[FrozenTrial], outcomes: dict[Pattern, Outcome],
                 pending: dict[Pattern, list[int]]) -> None:
        """A fresh in-memory study holding ``trials`` (numbered in order) and the strategy's bookkeeping."""
        with _quiet_optuna():
            self.study = optuna.create_study(directions=self.objectives.optuna_directions)
            self.study.add_trials(trials)
        self._outcomes = outcomes  # told members
        self._pending = pending  # proposed, not yet told: the Optuna trials waiting for the result

    def _ask_trial(self) -> optuna.Trial:
        # A sampler seeded from the strategy's generator at every ask: all randomness lives in ``self.rng``,
        # so the state is that generator's state plus the trials (no private sampler state to save).
        self.study.sampler = optuna.samplers.TPESampler(seed=int(self.rng.integers(2**31)), **self._sampler_options)
        return self.study.ask()

    # -- proposing ------------------------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Schedule]:
        out: list[Schedule] = []
        for _ in range(n):
            schedule = self._propose()
            if schedule is None:
                break
            self._history.add(schedule)
            out.append(schedule)
        return out

    def _propose(self) -> Schedule | None:
        if len(self._history) >= self.space.count():  # every member is told or pending
            return None
        if len(self._outcomes) < self.n_startup_trials:
            return self._enqueue(self._fallback.sample("start-up"))
        for _ in range(self.max_attempts):
            trial = self._ask_trial()
            schedule = self._coding.suggest(trial)
            key = schedule.pattern
            if key in self._outcomes:  # TPE learns the known outcome; the engine is not asked to repeat it
                self._finish(trial.number, self._outcomes[key])
                continue
            twins = self._pending.setdefault(key, [])
            twins.append(trial.number)
            if len(twins) == 1:
                return schedule
        return self._enqueue(self._fallback.sample(f"TPE repeated schedules {self.max_attempts} times"))

    def _enqueue(self, schedule: Schedule | None) -> Schedule | None:
        """Register a schedule chosen outside TPE as a pending trial, so TPE learns from its result."""
        if schedule is not None:
            with _quiet_optuna():
                self.study.enqueue_trial(self._coding.params(self.space.intervals(schedule)))
            trial = self._ask_trial()
            self._pending[self._coding.suggest(trial).pattern] = [trial.number]
        return schedule

    # -- learning -------------------------------------------------------------------------------------------
    def tell(self, results: Sequence[TrialResult]) -> None:
        """Finish the matching Optuna trials; results of schedules this strategy did not propose are added
        as finished trials (non-members are ignored: the decoder could not have produced them)."""
        for result in results:
            key = result.schedule.pattern
            if key in self._outcomes or (result.schedule not in self._history
                                         and not self.space.contains(result.schedule)):
                continue
            outcome = self.objectives.values(result)
            self._outcomes[key] = outcome
            self._history.add(result.schedule)
            numbers = self._pending.pop(key, None)
            if numbers is None:
                self._add(result.schedule, outcome)
            for number in numbers or ():
                self._finish(number, outcome)

    def _finish(self, number: int, outcome: Outcome) -> None:
        with _quiet_optuna():
            if outcome is None:
                self.study.tell(number, state=TrialState.FAIL)
            else:
                self.study.tell(number, list(outcome))

    def _add(self, schedule: Schedule, outcome: Outcome) -> None:
        state = TrialState.FAIL if outcome is None else TrialState.COMPLETE
        params = self._coding.params(self.space.intervals(schedule))
        trial = self._frozen(state, params, None if outcome is None else list(outcome))
        with _quiet_optuna():
            self.study.add_trial(trial)

    def _frozen(self, state: TrialState, params: dict[str, int], values: list[float] | None) -> FrozenTrial:
        return optuna.trial.create_trial(params=params, distributions=self._coding.distributions(params),
                                         state=state, values=values)

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator and history, every Optuna trial (state, parameters, values), the bookkeeping."""
        return {
            "history": self._history.state_dict(),
            "trials": [[t.state.name, t.params, t.values] for t in self.study.get_trials(deepcopy=False)],
            "outcomes": [[list(key), None if v is None else list(v)] for key, v in self._outcomes.items()],
            "pending": [[list(key), numbers] for key, numbers in self._pending.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the study and bookkeeping with ``state`` (results told before are part of it)."""
        self._history.load_state_dict(state["history"])
        self._restore(
            [self._frozen(TrialState[name], params, values) for name, params, values in state["trials"]],
            {tuple(key): None if v is None else tuple(v) for key, v in state["outcomes"]},
            {tuple(key): list(numbers) for key, numbers in state["pending"]},
        )

    @property
    def is_finished(self) -> bool:
        """True once every member of the space has been told."""
        return len(self._outcomes) >= self.space.count()

"""``ObjectiveConformance``: the checks every objective, built-in or third-party, should pass.

Subclass it in a test module and implement :meth:`ObjectiveConformance.create_objective`; pytest collects
the inherited tests (as ``optuna/testing/pytest_samplers.py`` does for samplers)::

    from procache_opt.conformance.objectives import ObjectiveConformance

    class TestMyObjective(ObjectiveConformance):
        registered_name = "my_objective"

        def create_objective(self):
            return MyObjective()

An objective only ever sees :class:`~procache_opt.objective.RunOutputs`, so the checks use synthetic ones:
the reference itself (what an all-FULL schedule reproduces) and runs "with more reuse", whose outputs carry
more noise and whose cost (seconds, FLOPs ratio) is lower. Quality objectives must score the reference
best and get worse with more reuse; cost objectives (``measures_cost = True``) must score the reference
1 and get better with more reuse.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import ClassVar

import pytest
import torch

from procache_opt.objective import NEEDS, OBJECTIVES, Objective, RunOutputs

__all__ = ["ObjectiveConformance"]

#: Noise amplitudes (relative to each tensor's spread) of the synthetic runs, from less to more reuse.
_REUSE_LEVELS = (0.05, 0.3)


class ObjectiveConformance:
    """Base class of conformance tests for one objective; see the module docstring."""

    #: Samples in the synthetic runs.
    num_samples: ClassVar[int] = 3
    #: Name the objective is registered under, if it is (checked against ``OBJECTIVES``).
    registered_name: ClassVar[str | None] = None
    #: ``True`` for objectives that measure cost (time, FLOPs), not quality.
    measures_cost: ClassVar[bool] = False
    #: ``True`` when the score holds one value per run rather than one per sample (latency, FLOPs).
    per_run: ClassVar[bool] = False

    def create_objective(self) -> Objective:
        raise NotImplementedError("subclasses return the objective under test")

    @pytest.fixture
    def objective(self) -> Objective:
        return self.create_objective()

    # -- synthetic runs -----------------------------------------------------------------------------------
    def make_reference(self, objective: Objective) -> RunOutputs:
        """Random outputs with everything ``objective`` may need (images smaller than 64 px on purpose)."""
        g = torch.Generator().manual_seed(0)
        n = self.num_samples
        return RunOutputs(
            latents=torch.randn(n, 4, 8, 8, generator=g),
            images=torch.rand(n, 3, 24, 24, generator=g),
            features={name: torch.randn(n, 2, 16, 8, generator=g) for name in getattr(objective, "features", ())},
            seconds=[1.0, 1.2, 0.9],
            flops_ratio=1.0,
        )

    def with_reuse(self, reference: RunOutputs, level: float) -> RunOutputs:
        """A run with more reuse: noisier outputs (same noise direction at every level) and lower cost."""

        def noisy(t: torch.Tensor, seed: int) -> torch.Tensor:
            noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))
            return t + level * t.std() * noise

        return replace(
            reference,
            latents=noisy(reference.latents, 1),
            images=(reference.images + level * torch.randn(
                reference.images.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1),
            features={k: noisy(v, 3 + i) for i, (k, v) in enumerate(reference.features.items())},
            seconds=[s / (1 + level) for s in reference.seconds],
            flops_ratio=reference.flops_ratio / (1 + level),
        )

    def _better(self, objective: Objective, a: float, b: float) -> bool:
        return a < b if objective.direction == "minimize" else a > b

    # -- tests --------------------------------------------------------------------------------------------
    def test_declares_interface(self, objective: Objective) -> None:
        assert isinstance(objective.name, str) and objective.name
        assert objective.direction in ("minimize", "maximize")
        assert isinstance(objective.needs, frozenset) and objective.needs <= NEEDS
        if "features" in objective.needs:
            features = getattr(objective, "features", ())
            assert features and all(isinstance(f, str) for f in features)

    def test_registered(self, objective: Objective) -> None:
        if self.registered_name is None:
            pytest.skip("not registered")
        assert isinstance(objective, OBJECTIVES.get(self.registered_name))

    def test_per_sample_values(self, objective: Objective) -> None:
        reference = self.make_reference(objective)
        for run in (reference, self.with_reuse(reference, _REUSE_LEVELS[0])):
            score = objective.score(run, reference)
            assert len(score.per_sample) == (1 if self.per_run else self.num_samples)
            assert all(math.isfinite(v) for v in score.per_sample)
            assert math.isfinite(score.mean)

    def test_full_computation_scores_best(self, objective: Objective) -> None:
        reference = self.make_reference(objective)
        full = objective.score(reference, reference)
        if self.measures_cost:
            assert full.per_sample == pytest.approx([1.0] * len(full.per_sample))
            return
        for level in _REUSE_LEVELS:
            reused = objective.score(self.with_reuse(reference, level), reference)
            assert all(self._better(objective, f, r) for f, r in zip(full.per_sample, reused.per_sample, strict=True))

    def test_more_reuse_moves_the_score(self, objective: Objective) -> None:
        """Quality gets worse, cost gets better, as reuse grows."""
        reference = self.make_reference(objective)
        less, more = (objective.score(self.with_reuse(reference, lv), reference).mean for lv in _REUSE_LEVELS)
        assert self._better(objective, more, less) if self.measures_cost else self._better(objective, less, more)

    def test_leaves_inputs_unchanged_and_is_deterministic(self, objective: Objective) -> None:
        reference = self.make_reference(objective)
        run = self.with_reuse(reference, _REUSE_LEVELS[1])
        before = (run.latents.clone(), run.images.clone(), reference.images.clone())
        first = objective.score(run, reference)
        assert objective.score(run, reference) == first
        assert all(torch.equal(a, b) for a, b in zip(before, (run.latents, run.images, reference.images), strict=True))

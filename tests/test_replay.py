"""Prefix replay: a schedule's leading FULL steps come from the reference's tape, with identical results."""

from __future__ import annotations

import pytest
import torch
from procache_opt.objectives.feature_error import FeatureError

from procache_opt import Calibration, Schedule
from procache_opt._replay import replayable_calls
from procache_opt.evaluate import Evaluator

STEPS = 8
SCHEDULES = {
    "one reuse late": Schedule.from_pattern([1] * 5 + [0] + [1] * 2),
    "forecast": Schedule.from_pattern([1] * 5 + [0, 0, 1], forecast_order=1),
    "selective": Schedule.from_pattern([1] * 4 + [0, 1, 2, 1]).inject_selective(),
    "per-depth": Schedule.from_pattern([1, 1, 1, 3, 0, 1, 4, 1]),
    "all full": Schedule.full(STEPS),
    "reuse at step 1": Schedule.from_pattern([1, 0] * 4),
}


def _evaluator(pipe, replay: bool) -> Evaluator:
    objective = FeatureError(compare=("latents", "block_3", "model_output"))
    return Evaluator(pipe, Calibration.default(pipe, num_samples=3), num_inference_steps=STEPS,
                     objectives=[objective], batch_size=2, replay=replay)


def _block_calls(pipe) -> list[int]:
    calls = [0]
    pipe.transformer.transformer_blocks[0].register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("model", ["dit", "pixart"])
def test_replayed_runs_equal_computed_ones(name: str, model: str, request: pytest.FixtureRequest) -> None:
    pipe = request.getfixturevalue(f"tiny_{model}_pipeline")
    schedule = SCHEDULES[name]
    runs = {}
    for replay in (False, True):
        evaluator = _evaluator(pipe, replay)
        evaluator.reference()
        runs[replay] = evaluator.run(schedule)
    assert runs[True].latents.equal(runs[False].latents)
    for feature in ("block_3", "model_output"):
        assert runs[True].features[feature].equal(runs[False].features[feature])
    assert runs[True].block_evaluations == runs[False].block_evaluations
    assert "forward" not in pipe.transformer.__dict__


def test_replay_skips_the_blocks_of_the_shared_prefix(tiny_dit_pipeline) -> None:
    evaluator = _evaluator(tiny_dit_pipeline, replay=True)
    evaluator.reference()
    calls = _block_calls(tiny_dit_pipeline)
    evaluator.run(SCHEDULES["one reuse late"])  # steps 0-3 replayed, 4 fills the caches, 5 reuses them
    assert calls[0] == 2 * (STEPS - 4)  # two batches
    evaluator.run(SCHEDULES["reuse at step 1"])
    assert calls[0] == 2 * (STEPS - 4) + 2 * STEPS


def test_nothing_is_replayed_before_the_reference_exists(tiny_dit_pipeline) -> None:
    evaluator = _evaluator(tiny_dit_pipeline, replay=True)
    calls = _block_calls(tiny_dit_pipeline)
    evaluator.run(SCHEDULES["one reuse late"])
    assert calls[0] == 2 * STEPS


@pytest.mark.parametrize(("pattern", "order", "tape", "expected"), [
    ([1, 1, 1, 1, 0, 1], 0, 6, 3),   # step 3 computes to fill the caches reused at step 4
    ([1, 1, 1, 1, 0, 1], 1, 6, 2),   # and step 2 for the forecast's slope
    ([1, 1, 1, 1, 0, 1], 0, 12, 6),  # two transformer calls per step (unbatched guidance)
    ([1, 0, 1, 1, 1, 1], 0, 6, 0),
    ([1] * 6, 0, 6, 5),              # the last step always computes
    ([1, 1, 1, 1, 0, 1], 0, 7, 0),   # a tape that is not whole calls per step: replay nothing
])
def test_replayable_calls(pattern: list[int], order: int, tape: int, expected: int) -> None:
    assert replayable_calls(Schedule.from_pattern(pattern, forecast_order=order), tape) == expected


def test_first_timing_alone_warms_up(tiny_dit_pipeline) -> None:
    evaluator = Evaluator(tiny_dit_pipeline, Calibration.default(tiny_dit_pipeline, num_samples=2),
                          num_inference_steps=4, objectives=["latency"], timing_repeats=2)
    calls = [0]
    tiny_dit_pipeline.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    assert len(evaluator.reference().seconds) == 2
    assert calls[0] == 4 * (1 + 1 + 2)  # the reference, a warm-up call, two timed calls
    assert len(evaluator.run(Schedule.from_intervals([2, 2])).seconds) == 2
    assert calls[0] == 4 * (4 + 1 + 2)  # the run and two timed calls, no second warm-up
    assert torch.isfinite(torch.tensor(evaluator.run(Schedule.full(4)).seconds)).all()

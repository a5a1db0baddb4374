"""Prefix replay: skip the transformer calls a schedule shares with the full computation.

A schedule whose first steps are FULL computes on them exactly what the full-computation reference computed
(same noise, conditions and batches): on a FULL step every hook calls the original branch and only stores its
output. So the evaluator records the reference's transformer outputs (a *tape*, one per pipeline call) and,
when it runs such a schedule, hands the recorded outputs back for the leading steps whose caches nothing later
reads. The FULL steps just before the first non-FULL step still compute: the last one fills the block caches
and the token scores, and with ``forecast_order`` n the n before it fill the forecast's slopes. The last step
always computes, so features captured at the last transformer call are real.

Who gains: the probe of ``search(monotone="auto")`` runs schedules that are FULL except one step; on
``dit-digits`` (8 probes over 50 steps) replay computes 208 of their 400 steps. Searched schedules rarely start
with more than one FULL step and run as before. Memory: one model output per step and sample (for 8 samples of
``DiT-XL-2-256`` with guidance, 50 x 16 x 8 x 32 x 32 floats = 26 MB), kept beside the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from procache_opt.schedule import Action, Schedule

__all__ = ["recording", "replayable_calls", "replaying"]

_MISSING = object()


def replayable_calls(schedule: Schedule, tape_length: int) -> int:
    """How many leading transformer calls of ``schedule`` a tape of ``tape_length`` calls can stand in for.

    A tape whose length is not a whole number of calls per step (an unfamiliar loop) replays nothing.
    """
    num_steps = schedule.num_steps
    if tape_length == 0 or tape_length % num_steps:
        return 0
    first = next((i for i, a in enumerate(schedule.actions) if a != Action.FULL), num_steps)
    steps = min(num_steps - 1, max(0, first - 1 - schedule.forecast_order))
    return steps * (tape_length // num_steps)


@contextmanager
def recording(transformer: nn.Module) -> Iterator[list[Any]]:
    """Collect every output of ``transformer`` during the ``with`` block, in call order."""
    tape: list[Any] = []
    handle = transformer.register_forward_hook(lambda module, args, output: tape.append(output))
    try:
        yield tape
    finally:
        handle.remove()


@contextmanager
def replaying(transformer: nn.Module, tape: Sequence[Any], num_calls: int) -> Iterator[None]:
    """Return ``tape[i]`` for the first ``num_calls`` calls of ``transformer``, then compute as usual.

    The instance's ``forward`` (diffusers hooks included) is wrapped for the ``with`` block and restored on exit,
    so the replay sits outside every hook: replayed calls run no hook and no block. Forward hooks registered
    with torch still see each call and its (recorded) output.
    """
    inner = transformer.forward
    previous = transformer.__dict__.get("forward", _MISSING)
    calls = 0

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return tape[calls - 1] if calls <= num_calls else inner(*args, **kwargs)

    transformer.forward = forward
    try:
        yield
    finally:
        if previous is _MISSING:
            del transformer.forward
        else:
            transformer.forward = previous

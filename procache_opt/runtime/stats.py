"""What an applied runtime actually did: transformer calls by action, blocks computed, reused or forecast, time.

Like cache-dit's ``summary()``, but the same report for every runtime (``handle.summary()``). It is gathered by
plain torch forward hooks on the transformer, outside the caching hooks: the counter reads the step each call
ran at from the :class:`~procache_opt.runtime.context.StepState` the step tracker left behind (``last_step``),
and the clock times each call. Neither touches the blocks, so the runtime's hot path is unchanged.

Timing: on the CPU each call is timed with ``time.perf_counter``; on an accelerator with device events recorded
around it, read only when a report is asked for, so nothing waits for the device during generation.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from procache_opt.block_counts import blocks_by_step, outcome_shares
from procache_opt.runtime.context import StepState

__all__ = ["RunStats", "TransformerClock", "attach_step_counter"]

#: Device event pairs kept for timing (older ones are folded into the total when a report is made).
_MAX_EVENTS = 4096


@dataclass
class RunStats:
    """Counts since the runtime was applied.

    Attributes:
        num_blocks: Transformer blocks of the model.
        steps: Transformer calls by what the step did (``"FULL"``, ``"REUSE"``, ...; cache-dit: ``"computed"``,
            ``"cached"``).
        blocks: Block evaluations by :data:`procache_opt.block_counts.BLOCK_OUTCOMES`.
        generations: Generations finished (calls at the last step of the schedule).
        clock: Times the transformer calls, when attached.
    """

    num_blocks: int
    steps: Counter[str] = field(default_factory=Counter)
    blocks: Counter[str] = field(default_factory=Counter)
    generations: int = 0
    clock: TransformerClock | None = None

    @property
    def calls(self) -> int:
        return sum(self.steps.values())

    def summary(self, runtime: str) -> str:
        """A few lines: what ran per generation, and the measured transformer time."""
        if not self.calls:
            return f"{runtime}: no transformer call yet"
        per = max(self.generations, 1)
        lines = [f"{runtime}: {self.calls} transformer calls in {self.generations} generation(s)",
                 "steps per generation: " + ", ".join(f"{n / per:g} {kind}" for kind, n in self.steps.items())]
        lines.append(f"block evaluations: {outcome_shares(self.blocks)}")
        if self.clock is not None and self.clock.calls:
            call = self.clock.seconds() / self.clock.calls
            lines.append(f"transformer time: {call * self.calls / per * 1e3:.1f} ms per generation "
                         f"({call * 1e3:.2f} ms per call, measured over {self.clock.calls} calls)")
        return "\n".join(lines)


class TransformerClock:
    """Seconds spent inside a module's calls (see the module docstring for how accelerators are timed)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self._total = 0.0
        self._start: Any = None
        self._events: list[tuple[Any, Any]] = []
        self._handles = [module.register_forward_pre_hook(self._before), module.register_forward_hook(self._after)]

    @torch.compiler.disable
    def _before(self, module: nn.Module, args: Any) -> None:
        device = next(module.parameters()).device
        if device.type == "cpu":
            self._start = time.perf_counter()
        else:
            self._start = torch.Event(device=device, enable_timing=True)
            self._start.record()

    @torch.compiler.disable
    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        self.calls += 1
        if isinstance(self._start, float):
            self._total += time.perf_counter() - self._start
        elif self._start is not None:
            end = torch.Event(device=self._start.device, enable_timing=True)
            end.record()
            self._events.append((self._start, end))
            if len(self._events) > _MAX_EVENTS:
                self._fold()
        self._start = None

    def _fold(self) -> None:
        for start, end in self._events:
            end.synchronize()
            self._total += start.elapsed_time(end) / 1e3
        self._events.clear()

    def seconds(self) -> float:
        """Total seconds so far (waits for the device once, if events are pending)."""
        self._fold()
        return self._total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def attach_step_counter(transformer: nn.Module, state: StepState, stats: RunStats) -> Any:
    """Count each call of ``transformer`` by the step it ran at; returns the hook handle (``.remove()``)."""
    schedule = state.schedule
    per_step = blocks_by_step(schedule, stats.num_blocks)

    @torch.compiler.disable
    def count(module: nn.Module, args: Any, output: Any) -> None:
        step = state.last_step
        if step is None:
            return
        stats.steps[schedule.actions[step].name] += 1
        stats.blocks.update(per_step[step])
        stats.generations += step == schedule.num_steps - 1

    return transformer.register_forward_hook(count)

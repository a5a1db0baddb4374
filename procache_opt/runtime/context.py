"""Where the denoising loop is: the explicit step context every ProCache hook reads.

Hooks never count their own calls. A hook on the transformer (:class:`StepTrackerHook`) finds the step index
of each call from its ``timestep`` argument in the driving scheduler's ``timesteps`` (or takes it from
``handle.at_step(i)``) and publishes it on a :class:`StepState` for the duration of the call only; each branch
hook reads its block's action for that step from the state (``StepState.action_of``).

Guidance: DiT and PixArt pipelines batch the conditional and unconditional inputs into one call, so one cache
serves both. A loop that calls the transformer twice for one step (unbatched guidance) gets a separate cache
per call within the step: the first call of a step is branch 0, a second call with the same step index is
branch 1, and so on.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from diffusers.hooks import ModelHook
from torch import nn

from procache_opt.schedule import Action, Schedule, ScheduleMismatchError

__all__ = ["MissingStepContextError", "StepState", "StepTrackerHook", "score_steps"]


class MissingStepContextError(RuntimeError):
    """The runtime cannot tell which denoising step a transformer call belongs to."""


class BranchCaches(Protocol):
    """Per-branch tensors a :class:`StepState` clears when a generation starts or ends."""

    def clear(self, branch: int | None = None) -> None: ...


def score_steps(actions: Sequence[Action]) -> tuple[bool, ...]:
    """For each step: is it a FULL step whose following non-FULL run contains a SELECTIVE step?

    Only those FULL steps need token scores (ProCache scores from the attention map of the last full step),
    so scoring is skipped everywhere else.
    """
    needed = [False] * len(actions)
    selective_ahead = False
    for step in range(len(actions) - 1, -1, -1):
        if actions[step] == Action.FULL:
            needed[step] = selective_ahead
            selective_ahead = False
        elif actions[step] == Action.SELECTIVE:
            selective_ahead = True
    return tuple(needed)


class StepState:
    """The step context shared by the hooks of one applied schedule.

    ``step`` is set only while the transformer runs (``begin`` ... ``end``); outside a call it is ``None``
    and branch hooks refuse to run. Caches are cleared when a generation starts (step 0, first branch), after
    each branch's last step, and on :meth:`reset`.

    Attributes:
        schedule: The schedule being followed.
        step: Step index of the running call, else ``None``.
        split_layer: First block of the deep group (the number of blocks when the schedule is not per-depth).
        branch: Index of the running call among calls with the same step (0 for batched guidance).
        token_grid: ``(rows, cols)`` of the running call's token grid, if known.
        forced_step: Step index set by ``handle.at_step``; overrides the timestep lookup.
        last_step: Step index of the previous call, else ``None``.
        skipped_output: ``(layer, weak reference to its output)`` of the last block the running call skipped, if
            only the transformer's loop holds that output (``hooks.BlockReuseHook`` then updates it in place).
    """

    def __init__(self, schedule: Schedule, num_layers: int) -> None:
        self.schedule = schedule
        self.split_layer = schedule.split_layer(num_layers) if schedule.per_depth else num_layers
        self._group_actions = tuple(schedule.group_actions(deep) for deep in (False, True))
        self._score_steps = tuple(score_steps(actions) for actions in self._group_actions)
        self._caches: list[BranchCaches] = []
        self.forced_step: int | None = None
        self.reset()

    def register(self, caches: BranchCaches) -> None:
        self._caches.append(caches)

    def reset(self) -> None:
        """Forget every cached tensor and where the loop was (the next call must be a FULL step 0)."""
        self._clear()
        self.step: int | None = None
        self.branch = 0
        self.token_grid: tuple[int, int] | None = None
        self.last_step: int | None = None
        self.skipped_output: tuple[int, weakref.ref[torch.Tensor]] | None = None

    def begin(self, step: int, token_grid: tuple[int, int] | None) -> None:
        """Enter a transformer call at ``step``."""
        if not 0 <= step < self.schedule.num_steps:
            raise ScheduleMismatchError(
                f"step {step} is outside the schedule's {self.schedule.num_steps} steps; run "
                f"num_inference_steps={self.schedule.num_steps} or apply a schedule made for this step count"
            )
        self.branch = self.branch + 1 if step == self.last_step else 0
        if step == 0 and self.branch == 0:
            self._clear()
        self.step = step
        self.token_grid = token_grid
        self.skipped_output = None

    def action_of(self, layer: int) -> Action | None:
        """What block ``layer`` does in the running call (FULL, REUSE or SELECTIVE), else ``None``."""
        if self.step is None:
            return None
        return self._group_actions[layer >= self.split_layer][self.step]

    def scores_now(self, layer: int) -> bool:
        """Whether block ``layer`` computes token scores in the running call (see :func:`score_steps`)."""
        return self.step is not None and self._score_steps[layer >= self.split_layer][self.step]

    def end(self) -> None:
        """Leave the transformer call; after a branch's last step its caches are no longer needed."""
        if self.step == self.schedule.num_steps - 1:
            self._clear(self.branch)
        self.last_step = self.step
        self.step = None

    def _clear(self, branch: int | None = None) -> None:
        for caches in self._caches:
            caches.clear(branch)


class ConditioningTables(Protocol):
    """Per-generation conditioning tables the tracker points at the running call (``modulation.ConditioningMemo``)."""

    def prepare(self, call: dict[str, Any], timesteps: torch.Tensor | None) -> None: ...

    def finish(self) -> None: ...


class StepTrackerHook(ModelHook):
    """Transformer hook that publishes the step context for the duration of each call.

    Args:
        state: The shared step state.
        scheduler: Returns the scheduler driving the loop (read per call: a pipeline's scheduler may be
            swapped after ``apply``), or ``None`` when only ``handle.at_step`` can tell the step.
        patch_size: Latent pixels per token side, to derive the token grid from the latent input.
    """

    _is_stateful = True

    def __init__(self, state: StepState, scheduler: Callable[[], Any] | None, patch_size: int | None,
                 memo: ConditioningTables | None = None) -> None:
        super().__init__()
        self.state = state
        self.scheduler = scheduler
        self.patch_size = patch_size
        self.memo = memo
        self._signature: inspect.Signature | None = None

    def initialize_hook(self, module: nn.Module) -> nn.Module:
        self._signature = inspect.signature(module.forward)
        return module

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        call = self._signature.bind_partial(*args, **kwargs).arguments
        if state.forced_step is not None:
            step, timesteps = state.forced_step, None
        else:
            step, timesteps = self._step_from_timestep(call.get("timestep"))
        state.begin(step, self._token_grid(call.get("hidden_states")))
        try:
            if self.memo is not None:
                self.memo.prepare(call, timesteps)
            output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            state.reset()  # a half-updated cache must not be reused: the next call has to start at step 0
            raise
        finally:
            if self.memo is not None:
                self.memo.finish()
        state.end()
        return output

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.state.reset()
        return module

    def _step_from_timestep(self, timestep: Any) -> tuple[int, torch.Tensor]:
        """The call's step index and the scheduler's timesteps it was found in."""
        if self.scheduler is None:
            raise MissingStepContextError(
                "cannot tell the denoising step of this transformer call: pass the scheduler that drives the "
                "loop, apply(transformer, schedule, scheduler=pipe.scheduler), or wrap each call in "
                "`with handle.at_step(i):`"
            )
        timesteps = getattr(self.scheduler(), "timesteps", None)
        if timestep is None or timesteps is None:
            raise MissingStepContextError(
                "the step index is read from the call's `timestep` in scheduler.timesteps, but "
                f"{'the call has no timestep' if timestep is None else 'the scheduler has no timesteps'}; "
                "use `with handle.at_step(i):` around the call"
            )
        self.state.schedule.check_compatible(num_steps=len(timesteps))
        timestep = torch.as_tensor(timestep)
        index = _view_index(timestep, timesteps)
        if index is not None:
            return index, timesteps
        value = timestep.reshape(-1)[0].to(timesteps.device, timesteps.dtype)
        matches = (timesteps == value).nonzero().flatten().tolist()
        if not matches:
            raise MissingStepContextError(
                f"timestep {value.item()} is not in the scheduler's timesteps; if another scheduler drives "
                "the loop pass it with apply(..., scheduler=...), or use `with handle.at_step(i):`"
            )
        last = self.state.last_step
        # Schedulers with repeated timesteps: take the first match not before the previous call's step.
        return next((i for i in matches if last is not None and i >= last), matches[0]), timesteps

    def _token_grid(self, latents: Any) -> tuple[int, int] | None:
        if self.patch_size is None or not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            return None
        return latents.shape[-2] // self.patch_size, latents.shape[-1] // self.patch_size


def _view_index(timestep: torch.Tensor, timesteps: torch.Tensor) -> int | None:
    """Index of the element of ``timesteps`` that ``timestep`` is a view of, else ``None``.

    Pipelines iterate ``scheduler.timesteps`` and pass (an expanded view of) each element to the transformer,
    so the step is where the view points. Reading it from the storage offset needs no device synchronisation,
    which comparing values on a GPU would.
    """
    if (timesteps.ndim != 1 or timestep.numel() == 0 or timestep.device != timesteps.device
            or timestep.untyped_storage().data_ptr() != timesteps.untyped_storage().data_ptr()):
        return None
    offset, stride = timestep.storage_offset() - timesteps.storage_offset(), timesteps.stride(0)
    if stride <= 0 or offset % stride or not 0 <= offset // stride < timesteps.shape[0]:
        return None
    return offset // stride

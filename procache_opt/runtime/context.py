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
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers.hooks import ModelHook
from torch import nn

from procache_opt.schedule import Action, Schedule, ScheduleMismatchError

__all__ = ["MissingStepContextError", "StepKind", "StepState", "StepTrackerHook", "score_steps"]


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


@dataclass(frozen=True)
class StepKind:
    """What each block group does in one transformer call.

    These are the only step-dependent Python values the hooks read inside a ``torch.compile``d graph, so
    dynamo keys its graphs on a handful of kinds (FULL, FULL with scoring, REUSE, per-depth mixes) instead of
    recompiling for every step index. Step-dependent numbers reach the graph as tensors (``StepState.tau``,
    ``StepState.span``); everything else that needs the index runs outside it (``torch.compiler.disable``).

    Attributes:
        actions: The action of the shallow and of the deep block group (equal unless per-depth).
        scores: Whether each group computes token scores (see :func:`score_steps`).
        slopes: Whether each group has a forecast slope (``forecast_order=1`` and two FULL steps so far): a FULL
            step then takes it, other steps extrapolate along it.
    """

    actions: tuple[Action, Action]
    scores: tuple[bool, bool]
    slopes: tuple[bool, bool]

    @property
    def selective(self) -> bool:
        """Whether a group refreshes tokens: the token count changes from step to step, so such calls run
        eagerly even in a compiled transformer (a graph per count would be a graph per step)."""
        return Action.SELECTIVE in self.actions


class StepState:
    """The step context shared by the hooks of one applied schedule.

    ``step`` and ``now`` are set only while the transformer runs (``begin`` ... ``end``); outside a call they
    are ``None`` and branch hooks refuse to run. Caches are cleared when a generation starts (step 0, first
    branch), after each branch's last step, and on :meth:`reset`.

    Attributes:
        schedule: The schedule being followed.
        step: Step index of the running call, else ``None``.
        now: The :class:`StepKind` of the running call, else ``None``.
        split_layer: First block of the deep group (the number of blocks when the schedule is not per-depth).
        branch: Index of the running call among calls with the same step (0 for batched guidance).
        token_grid: ``(rows, cols)`` of the running call's token grid, if known.
        forced_step: Step index set by ``handle.at_step``; overrides the timestep lookup.
        last_step: Step index of the previous call, else ``None``.
        skipped_output: ``(layer, weak reference to its output)`` of the last block the running call skipped, if
            only the transformer's loop holds that output (``skip.BlockReuseHook`` then updates it in place).
        tau: With forecasting, per block group (shallow, deep): steps since the group's last FULL step, as a
            0-d tensor (a Python number would make a compiled graph specialise on it).
        span: Likewise, steps between the group's last two FULL steps (the forecast's slope divides by it).
    """

    def __init__(self, schedule: Schedule, num_layers: int) -> None:
        self.schedule = schedule
        self.split_layer = schedule.split_layer(num_layers) if schedule.per_depth else num_layers
        groups = tuple(schedule.group_actions(deep) for deep in (False, True))
        scores = tuple(score_steps(actions) for actions in groups)
        self._anchors = tuple(_full_anchors(actions) for actions in groups)
        slopes = tuple(tuple(schedule.forecast_order >= 1 and before is not None for _, before in anchors)
                       for anchors in self._anchors)
        interned: dict[StepKind, StepKind] = {}
        self._kinds = tuple(interned.setdefault(kind, kind) for kind in (
            StepKind(*(tuple(group[s] for group in table) for table in (groups, scores, slopes)))
            for s in range(schedule.num_steps)))
        self._caches: list[BranchCaches] = []
        self.forced_step: int | None = None
        self.reset()

    def register(self, caches: BranchCaches) -> None:
        self._caches.append(caches)

    def reset(self) -> None:
        """Forget every cached tensor and where the loop was (the next call must be a FULL step 0)."""
        self._clear()
        self.step: int | None = None
        self.now: StepKind | None = None
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
        self.now = self._kinds[step]
        self.token_grid = token_grid
        self.skipped_output = None
        if self.schedule.forecast_order >= 1:
            anchors = [self._anchors[group][step] for group in (0, 1)]
            self.tau = tuple(torch.tensor(float(step - last)) for last, _ in anchors)
            self.span = tuple(torch.tensor(float(last - (before if before is not None else last - 1)))
                              for last, before in anchors)

    def action_of(self, layer: int) -> Action | None:
        """What block ``layer`` does in the running call (FULL, REUSE or SELECTIVE), else ``None``."""
        now = self.now
        return None if now is None else now.actions[layer >= self.split_layer]

    def scores_now(self, layer: int) -> bool:
        """Whether block ``layer`` computes token scores in the running call (see :func:`score_steps`)."""
        now = self.now
        return now is not None and now.scores[layer >= self.split_layer]

    def group(self, layer: int) -> int:
        """0 for the shallow block group, 1 for the deep one (per-depth schedules; else every block is 0)."""
        return int(layer >= self.split_layer)

    def end(self) -> None:
        """Leave the transformer call; after a branch's last step its caches are no longer needed."""
        if self.step == self.schedule.num_steps - 1:
            self._clear(self.branch)
        self.last_step = self.step
        self.step = None
        self.now = None

    def _clear(self, branch: int | None = None) -> None:
        for caches in self._caches:
            caches.clear(branch)


def _full_anchors(actions: Sequence[Action]) -> tuple[tuple[int | None, int | None], ...]:
    anchors, last, previous = [], None, None
    for step, action in enumerate(actions):
        if action == Action.FULL:
            last, previous = step, last
        anchors.append((last, previous))
    return tuple(anchors)


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
        self._enter(args, kwargs)
        try:
            if self.state.now.selective:
                output = self._eager_forward(args, kwargs)
            else:
                output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            self._abort()
            raise
        self._exit()
        return output

    @torch.compiler.disable
    def _enter(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Find the call's step and publish it (outside any compiled graph: it reads the step index)."""
        state = self.state
        call = self._signature.bind_partial(*args, **kwargs).arguments
        if state.forced_step is not None:
            step, timesteps = state.forced_step, None
        else:
            step, timesteps = self._step_from_timestep(call.get("timestep"))
        state.begin(step, self._token_grid(call.get("hidden_states")))
        if self.memo is not None:
            try:
                self.memo.prepare(call, timesteps)
            except BaseException:
                self._abort()
                raise

    @torch.compiler.disable
    def _eager_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Steps with SELECTIVE blocks, outside any compiled graph (see ``StepKind.selective``)."""
        return self.fn_ref.original_forward(*args, **kwargs)

    @torch.compiler.disable
    def _abort(self) -> None:
        # A half-updated cache must not be reused: the next call has to start at step 0.
        if self.memo is not None:
            self.memo.finish()
        self.state.reset()

    @torch.compiler.disable
    def _exit(self) -> None:
        if self.memo is not None:
            self.memo.finish()
        self.state.end()

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

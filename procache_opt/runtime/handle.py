"""``apply(target, schedule)``: make a diffusers pipeline or transformer follow a caching schedule.

(The module is not called ``apply``: a submodule named like the function it exports would shadow it as an
attribute of the package.)

Everything is installed as diffusers ``ModelHook``s on ``HookRegistry``s, under the module-level names below,
and removed by :meth:`CacheHandle.remove`, which restores every module exactly: unlike diffusers' own
``remove_hook``, it also drops the ``forward`` left in the module's ``__dict__`` and the empty registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from procache_opt.fingerprint import model_signature
from procache_opt.runtime.blocks import BlockAdapter, adapter_for, transformer_blocks
from procache_opt.runtime.cache import BlockCache
from procache_opt.runtime.context import StepState, StepTrackerHook
from procache_opt.runtime.hooks import (
    BranchCacheHook,
    CaptureHook,
    ScoredSelfAttentionHook,
    SelectiveFeedForwardHook,
    UnusedNormHook,
)
from procache_opt.runtime.modulation import ConditioningMemo, memo_for
from procache_opt.runtime.skip import BlockReuseHook
from procache_opt.runtime.stats import RunStats, TransformerClock, attach_step_counter
from procache_opt.schedule import Action, Schedule

__all__ = ["CacheHandle", "apply", "STEP_HOOK", "BRANCH_HOOK", "BLOCK_HOOK", "CAPTURE_HOOK", "NORM_HOOK",
           "TABLE_HOOK"]

STEP_HOOK = "procache_step"
"""Hook on the transformer that publishes the step context."""
BRANCH_HOOK = "procache_branch"
"""Hook on each branch submodule (``attn1``, ``attn2``, ``ff``) that caches its output."""
CAPTURE_HOOK = "procache_capture"
"""Hook on deep blocks' ``to_q`` / ``to_k`` that keeps the projections for token scoring."""
NORM_HOOK = "procache_norm"
"""Hook on the norms feeding a single branch, skipping their work while that branch is reused."""
BLOCK_HOOK = "procache_block"
"""Hook on each block that skips it on steps where it reuses every branch (``fast=True``)."""
TABLE_HOOK = "procache_table"
"""Hook on the conditioning modules whose outputs are computed once per generation (``fast=True``)."""

_MISSING = object()


class CacheHandle:
    """An applied schedule. Use as a context manager, or call :meth:`remove` when done.

    Example:
        >>> from procache_opt import Schedule
        >>> from procache_opt.testing import tiny_dit_pipeline
        >>> pipe = tiny_dit_pipeline()
        >>> with apply(pipe, Schedule.from_intervals([2, 2])) as handle:
        ...     images = pipe(class_labels=[1], num_inference_steps=4, output_type="np").images
        >>> handle.removed
        True
    """

    def __init__(self, transformer: nn.Module, state: StepState) -> None:
        self.transformer = transformer
        self.state = state
        self.caches: list[BlockCache] = []
        self.memo: ConditioningMemo | None = None
        self._attached: list[tuple[nn.Module, str, bool, object]] = []
        #: What the runtime did since it was applied (:meth:`summary`); counted by plain torch hooks on the
        #: transformer (``runtime/stats.py``), outside the caching hooks.
        self.stats = RunStats(num_blocks=0)
        self._stat_hooks: list[Any] = []
        self.removed = False

    @property
    def schedule(self) -> Schedule:
        return self.state.schedule

    @contextmanager
    def at_step(self, step: int) -> Iterator[None]:
        """Run transformer calls as step ``step`` of the schedule, for loops the scheduler lookup can't follow.

        A second call inside the same ``at_step`` (or with the same step) is a separate guidance branch.
        """
        self.state.forced_step = step
        try:
            yield
        finally:
            self.state.forced_step = None

    def reset(self) -> None:
        """Drop all cached tensors; the next transformer call must be step 0."""
        self.state.reset()

    def cache_bytes(self) -> dict[str, int]:
        """Bytes the runtime holds right now: block caches (branch outputs, forecast slopes, token scores) and
        conditioning tables. Caches fill during a generation and are freed after its last step, so call this
        from inside one (e.g. a callback) to see the peak."""
        tables = self.memo.nbytes() if self.memo is not None else 0
        return {"caches": sum(cache.nbytes() for cache in self.caches), "tables": tables}

    def summary(self) -> str:
        """What the runtime did since :func:`apply`: transformer calls by action, block evaluations computed,
        selective, reused and forecast, and the measured transformer time (like cache-dit's ``summary()``)."""
        return self.stats.summary(f"procache runtime, schedule {self.schedule}")

    def remove(self) -> None:
        """Remove every hook and restore each module exactly as it was before :func:`apply` (idempotent)."""
        for hook in self._stat_hooks:
            hook.remove()
        self._stat_hooks.clear()
        for module, name, had_registry, forward in reversed(self._attached):
            registry: HookRegistry = module._diffusers_hook
            registry.remove_hook(name, recurse=False)
            if registry.hooks:
                continue  # someone else's hooks remain; diffusers has re-linked their chain
            if forward is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = forward
            if not had_registry:
                del module._diffusers_hook
        self._attached.clear()
        registry = getattr(self.transformer, "_diffusers_hook", None)
        if registry is not None:
            registry.invalidate_child_registries_cache()
        self.state.reset()
        self.removed = True

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()

    def _attach(self, module: nn.Module, name: str, hook: ModelHook) -> None:
        had_registry = hasattr(module, "_diffusers_hook")
        forward = module.__dict__.get("forward", _MISSING)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        self._attached.append((module, name, had_registry, forward))


def apply(target: Any, schedule: Schedule, *, scheduler: Any = None, fast: bool = True,
          cache_dtype: torch.dtype | None = None) -> CacheHandle:
    """Make ``target`` follow ``schedule`` until the returned handle is removed.

    Args:
        target: A DiT/PixArt-style diffusers pipeline (``DiTPipeline``, ``PixArtAlphaPipeline``,
            ``PixArtSigmaPipeline``) or its transformer.
        schedule: One action per denoising step. Warns if it was searched for another model.
        scheduler: The scheduler driving a bare transformer; the step of each call is found from its
            ``timestep`` in ``scheduler.timesteps``. Defaults to the pipeline's own scheduler. Without one,
            wrap calls in ``handle.at_step(i)``.
        fast: Skip blocks that reuse every branch (their output is computed from the cached outputs and the
            gates alone) and compute the adaLN conditioning of every step once per generation. ``False`` runs
            every block's ``forward`` with its branches returning cached outputs: the reference the fast path
            is tested against (equal up to float rounding, see ``docs/runtime.md``).
        cache_dtype: Store cached branch outputs (and forecast slopes) in this dtype, e.g. ``torch.bfloat16``
            for an fp32 pipeline or ``torch.float8_e4m3fn`` for an fp16 one (half the cache memory); reads are
            cast back to the branch's dtype. Default: the outputs' own dtype.

    Returns:
        A :class:`CacheHandle` (a context manager; ``remove()`` restores the model exactly).

    Raises:
        UnsupportedModelError: the transformer or one of its block classes is not in the block registry.
        RuntimeError: a schedule is already applied to this transformer.
    """
    transformer, scheduler_source = _resolve(target, scheduler)
    blocks = transformer_blocks(transformer)
    adapters = [adapter_for(block) for block in blocks]
    model_class, fingerprint = model_signature(transformer)
    schedule.check_compatible(model_class=model_class, model_fingerprint=fingerprint)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(STEP_HOOK) is not None:
        raise RuntimeError(
            f"a ProCache schedule is already applied to this {model_class}; call remove() on its handle first"
        )

    state = StepState(schedule, len(blocks))
    handle = CacheHandle(transformer, state)
    try:
        handle.memo = memo_for(transformer, state) if fast else None
        if handle.memo is not None:
            state.register(handle.memo)
            for module, hook in handle.memo.hooks():
                handle._attach(module, TABLE_HOOK, hook)
        patch_size = getattr(transformer.config, "patch_size", None)
        handle._attach(transformer, STEP_HOOK, StepTrackerHook(state, scheduler_source, patch_size, handle.memo))
        has_selective = Action.SELECTIVE in schedule.actions
        deep_start = schedule.selective.deep_start(len(blocks)) if has_selective else len(blocks)
        for layer, (block, adapter) in enumerate(zip(blocks, adapters, strict=True)):
            cache = BlockCache(layer, tuple(adapter.branches(block)), cache_dtype)
            state.register(cache)
            handle.caches.append(cache)
            deep = layer >= deep_start
            hooks = _block_hooks(handle, block, adapter, cache, deep=deep, num_layers=len(blocks))
            feed_forward = None
            for name, module in adapter.branches(block).items():
                hook = hooks(name)
                handle._attach(module, BRANCH_HOOK, hook)
                if isinstance(hook, SelectiveFeedForwardHook):
                    feed_forward = hook
            for name, norm in adapter.branch_input_norms(block).items():
                refreshed = deep and name == adapter.feed_forward
                handle._attach(norm, NORM_HOOK, UnusedNormHook(state, layer, refreshed_on_selective=refreshed))
            if fast:
                handle._attach(block, BLOCK_HOOK, BlockReuseHook(state, cache, adapter, handle.memo, feed_forward))
        transformer._diffusers_hook.invalidate_child_registries_cache()
        clock = TransformerClock(transformer)
        handle.stats = RunStats(num_blocks=len(blocks), clock=clock)
        handle._stat_hooks += [clock, attach_step_counter(transformer, state, handle.stats)]
    except BaseException:
        handle.remove()
        raise
    return handle


def _block_hooks(handle: CacheHandle, block: nn.Module, adapter: BlockAdapter, cache: BlockCache, *,
                 deep: bool, num_layers: int) -> Callable[[str], ModelHook]:
    """Hook factory for one block's branches: plain caching, or scoring and selective refresh if deep."""
    state = handle.state
    if not deep:
        return lambda name: BranchCacheHook(name, state, cache)
    query, key = CaptureHook(), CaptureHook()
    for projection, capture in zip(adapter.query_key_projections(block), (query, key), strict=True):
        handle._attach(projection, CAPTURE_HOOK, capture)

    def make(name: str) -> ModelHook:
        if name == adapter.self_attention:
            return ScoredSelfAttentionHook(name, state, cache, block=block, adapter=adapter, query=query, key=key)
        if name == adapter.feed_forward:
            return SelectiveFeedForwardHook(name, state, cache, num_layers)
        return BranchCacheHook(name, state, cache)

    return make


def _resolve(target: Any, scheduler: Any) -> tuple[nn.Module, Callable[[], Any] | None]:
    """The transformer to hook and a getter for the scheduler that drives it.

    A ``torch.compile(transformer)`` wrapper is looked through: the hooks go on the module it compiles, whose
    ``forward`` the compiled call reads at run time.
    """
    if isinstance(target, nn.Module):
        return _uncompiled(target), (None if scheduler is None else lambda: scheduler)
    transformer = getattr(target, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise TypeError(
            f"apply() needs a diffusers pipeline with a `transformer` (DiTPipeline, PixArtAlphaPipeline, "
            f"PixArtSigmaPipeline) or a transformer module; got {type(target).__name__}"
        )
    if scheduler is not None:
        return _uncompiled(transformer), lambda: scheduler
    return _uncompiled(transformer), lambda: target.scheduler


def _uncompiled(module: nn.Module) -> nn.Module:
    return module._orig_mod if isinstance(module, torch._dynamo.eval_frame.OptimizedModule) else module

"""diffusers' own caches, applied to a DiT pipeline whose transformer is not a ``CacheMixin``.

diffusers 0.42 ships five training-free caches as hooks (``diffusers.hooks``): First-Block-Cache
(ParaAttention; a TeaCache-style residual test on the first block), TaylorSeer (Liu et al. 2025,
arXiv 2503.06923), MagCache (Ma et al. 2025, arXiv 2506.09045), FasterCache (Lv et al. 2024, arXiv 2410.19355)
and Pyramid Attention Broadcast (PAB; Zhao et al. 2024, arXiv 2408.12588). Pipelines that support them wrap
every transformer call in ``transformer.cache_context(name)`` and take the current timestep from
``pipe.current_timestep``. ``DiTTransformer2DModel`` has no ``CacheMixin`` (no ``enable_cache``) and
``DiTPipeline`` sets no cache context, so :func:`apply_diffusers_cache` does both itself: it applies the hooks
with diffusers' ``apply_*`` functions and adds one outer hook on the transformer that, for every call,

* finds the step index from the call's ``timestep`` in the scheduler's ``timesteps`` (never by counting),
* resets every stateful cache hook at step 0, so each generation starts from an empty cache,
* publishes the step through ``CacheMixin.cache_context`` (the same code path a ``CacheMixin`` model uses)
  and keeps the timestep for the ``current_timestep_callback`` that PAB and FasterCache need.

DiT batches the conditional and unconditional halves of classifier-free guidance into one call, so one
context name serves both, as in the project's own runtime.

:class:`DiffusersCache` is the ``"diffusers"`` runtime plugin (:mod:`procache_opt.runtimes`): applied with no
schedule, since each cache decides at run time what to skip.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    ModelHook,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_faster_cache,
    apply_first_block_cache,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.models.cache_utils import CacheMixin

from procache_opt.runtimes._base import ContextHandle, Runtime, RuntimeHandle
from procache_opt.schedule import Schedule

__all__ = ["CACHES", "DiffusersCache", "apply_diffusers_cache", "mag_ratios"]

CONTEXT_HOOK = "procache_compare_cache_context"
"""Name of the outer hook that sets the cache context on the transformer."""

#: Every hook name the ``apply_*`` functions below register (removed again by :func:`apply_diffusers_cache`).
_DIFFUSERS_HOOK_NAMES = (
    "fbc_leader_block_hook", "fbc_block_hook", "taylorseer_cache", "mag_cache_leader_block_hook",
    "mag_cache_block_hook", "faster_cache_denoiser", "faster_cache_block", "pyramid_attention_broadcast",
)


class _CacheContextHook(ModelHook):
    """Outer transformer hook: step from the scheduler, reset at step 0, ``cache_context`` around the call."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.timestep: float = 1000.0

    def current_timestep(self) -> float:
        return self.timestep

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timestep") is None:
            raise RuntimeError("the transformer was called without a `timestep` keyword; the step is read from it "
                               "(DiTPipeline passes one)")
        timestep = torch.as_tensor(kwargs["timestep"]).reshape(-1)[0]
        timesteps = self.scheduler.timesteps
        matches = (timesteps == timestep.to(timesteps.device, timesteps.dtype)).nonzero().flatten().tolist()
        if not matches:
            raise RuntimeError(f"timestep {timestep.item()} is not in the scheduler's timesteps; cannot find the step")
        step = matches[0]
        if step == 0:
            HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks(recurse=True)
        self.timestep = float(timestep)
        with CacheMixin.cache_context(module, "dit", step_index=step, num_inference_steps=len(timesteps),
                                      timestep=self.timestep):
            return self.fn_ref.original_forward(*args, **kwargs)


@dataclass(frozen=True)
class DiffusersCache(Runtime):
    """One diffusers cache with one setting of its main knob, as a runtime (applied with ``schedule=None``).

    Attributes:
        method: A key of :data:`CACHES`.
        knob: The value of the method's main knob (see :data:`CACHES`).
        ratios: MagCache's per-step magnitude ratios for this model (:func:`mag_ratios`); unused otherwise.
    """

    name: ClassVar[str] = "diffusers"
    follows_schedules: ClassVar[bool] = False
    runs_without_schedule: ClassVar[bool] = True

    method: str
    knob: float
    ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in CACHES:
            raise ValueError(f"unknown diffusers cache {self.method!r}; known: {sorted(CACHES)}")
        if self.ratios is not None:
            object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))

    @property
    def label(self) -> str:
        return f"{CACHES[self.method].title} ({CACHES[self.method].knob}={self.knob:g})"

    def apply(self, pipe: Any, schedule: Schedule | None) -> RuntimeHandle:
        self.check(schedule)
        return ContextHandle(apply_diffusers_cache(pipe, self), self.label)


@dataclass(frozen=True)
class CacheKind:
    """How to build one diffusers cache's config from its knob (``timestep`` is the current-timestep callback)."""

    title: str
    knob: str
    grid: tuple[float, ...]
    build: Callable[[float, Callable[[], float], int, tuple[float, ...] | None], Any]
    apply: Callable[[torch.nn.Module, Any], None]


def _fbc(knob: float, timestep: Callable[[], float], steps: int, ratios: Any) -> Any:
    return FirstBlockCacheConfig(threshold=knob)


def _taylorseer(knob: float, timestep: Callable[[], float], steps: int, ratios: Any) -> Any:
    # The default identifiers (``^transformer_blocks.*attn``, matched with ``re.fullmatch``) miss DiT's ``attn1``,
    # so nothing would be cached: name both branches, as TaylorSeer forecasts attention and MLP features alike.
    # float32 factors: bfloat16 (the default) is emulated, slowly, on most CPUs.
    return TaylorSeerCacheConfig(cache_interval=int(knob), taylor_factors_dtype=torch.float32,
                                 cache_identifiers=[r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"])


def _magcache(knob: float, timestep: Callable[[], float], steps: int, ratios: Any) -> Any:
    if ratios is None:
        raise ValueError("MagCache needs magnitude ratios calibrated for this model: pass mag_ratios(pipe, ...)")
    return MagCacheConfig(threshold=knob, num_inference_steps=steps, mag_ratios=list(ratios))


def _fastercache(knob: float, timestep: Callable[[], float], steps: int, ratios: Any) -> Any:
    # DiT keeps the full timestep range of attention reuse open; the unconditional-branch skip of FasterCache is
    # part of the config too (every ``knob``-th step, as its attention reuse).
    return FasterCacheConfig(
        spatial_attention_block_skip_range=int(knob), spatial_attention_timestep_skip_range=(-1, 1000),
        unconditional_batch_skip_range=int(knob), unconditional_batch_timestep_skip_range=(-1, 1000),
        current_timestep_callback=timestep, tensor_format="BCHW",
        _unconditional_conditional_input_kwargs_identifiers=("hidden_states", "timestep", "class_labels"),
    )


def _pab(knob: float, timestep: Callable[[], float], steps: int, ratios: Any) -> Any:
    return PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=int(knob), spatial_attention_timestep_skip_range=(-1, 1000),
        current_timestep_callback=timestep,
    )


#: The diffusers caches and the grid over each one's main knob that the comparison tunes.
CACHES: dict[str, CacheKind] = {
    "first_block_cache": CacheKind("First-Block-Cache", "threshold", (0.02, 0.05, 0.1, 0.2, 0.4), _fbc,
                                   apply_first_block_cache),
    "taylorseer": CacheKind("TaylorSeer", "cache_interval", (2, 3, 4, 5), _taylorseer, apply_taylorseer_cache),
    "magcache": CacheKind("MagCache", "threshold", (0.02, 0.06, 0.12, 0.24, 0.5), _magcache, apply_mag_cache),
    "fastercache": CacheKind("FasterCache", "skip_range", (2, 3, 4), _fastercache, apply_faster_cache),
    "pab": CacheKind("PAB", "skip_range", (2, 3, 4, 6), _pab, apply_pyramid_attention_broadcast),
}


@contextlib.contextmanager
def apply_diffusers_cache(pipe: Any, cache: DiffusersCache) -> Iterator[None]:
    """Apply ``cache`` to ``pipe.transformer`` for the ``with`` block; every hook is removed afterwards.

    Args:
        pipe: A DiT pipeline (its ``scheduler`` drives the loop).
        cache: The method, knob and (MagCache) magnitude ratios.
    """
    ratios = cache.ratios
    transformer = pipe.transformer
    untouched = [m for m in transformer.modules() if not hasattr(m, "_diffusers_hook") and "forward" not in vars(m)]
    outer = _CacheContextHook(pipe.scheduler)
    kind = CACHES[cache.method]
    steps = len(ratios) if ratios is not None else 0
    # FasterCache warns that it is experimental on every application: once per comparison is enough.
    with _quiet("diffusers.hooks.faster_cache"):
        kind.apply(transformer, kind.build(cache.knob, outer.current_timestep, steps, ratios))
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(outer, CONTEXT_HOOK)  # registered last: outermost, so the context wraps every hook
    registry.invalidate_child_registries_cache()
    try:
        yield
    finally:
        registry.remove_hook(CONTEXT_HOOK, recurse=False)
        for name in _DIFFUSERS_HOOK_NAMES:
            registry.remove_hook(name, recurse=True)
        # diffusers leaves the bound ``forward`` and the empty registry behind; restore the modules exactly.
        for module in untouched:
            vars(module).pop("forward", None)
            vars(module).pop("_diffusers_hook", None)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def mag_ratios(pipe: Any, call_kwargs: dict[str, Any]) -> tuple[float, ...]:
    """MagCache's calibration for this model: per step, mean over tokens of ``|r_t| / |r_{t-1}|``.

    ``r_t`` is the residual the transformer blocks add at step ``t`` (last block's output minus first block's
    input), the quantity MagCache (arXiv 2506.09045, Sec. 3) models; step 0 has ratio 1. This is what
    ``MagCacheConfig(calibrate=True)`` computes, which only prints the result.
    """
    blocks = pipe.transformer.transformer_blocks
    inputs: list[torch.Tensor] = []
    residuals: list[torch.Tensor] = []
    first = blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    last = blocks[-1].register_forward_hook(lambda module, args, output: residuals.append(output - inputs[-1]))
    try:
        with torch.no_grad():
            pipe(**call_kwargs)
    finally:
        first.remove()
        last.remove()
    ratios = [1.0]
    for previous, current in zip(residuals, residuals[1:], strict=False):
        ratio = torch.linalg.norm(current.float(), dim=-1) / (torch.linalg.norm(previous.float(), dim=-1) + 1e-8)
        ratios.append(float(ratio.mean()))
    return tuple(ratios)

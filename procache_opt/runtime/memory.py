"""How much memory an applied schedule holds: cached branch outputs, forecast slopes, token scores, tables.

Caching trades compute for memory. Per block and guidance branch the runtime keeps every branch output of the
last FULL step (``B x N x D`` values each: self-attention, cross-attention where present, feed-forward), with
``forecast_order=1`` a slope of the same size for each, for deep blocks of a schedule with SELECTIVE steps the
attention-received scores (``B x N`` float32) and token staleness (``B x N`` int32), and with ``fast=True`` the
conditioning tables of ``runtime.modulation`` (DiT: ``T x B x 7D`` per block, PixArt: ``T x B x 7D`` once plus the
projected caption). :func:`cache_memory` counts this from the model's config without running it;
``CacheHandle.cache_bytes()`` measures what is held at a moment (``tests/test_runtime_fast.py`` checks that the
two agree at the peak). ``apply(..., cache_dtype=...)`` stores outputs and slopes in a smaller dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from procache_opt.runtime.blocks import transformer_blocks
from procache_opt.schedule import Action, Schedule

__all__ = ["CacheMemory", "cache_memory"]


@dataclass(frozen=True)
class CacheMemory:
    """Bytes held at the peak of one generation, by kind."""

    outputs: int
    slopes: int
    scores: int
    tables: int

    @property
    def caches(self) -> int:
        """What ``CacheHandle.cache_bytes()["caches"]`` reports: outputs, slopes and scores."""
        return self.outputs + self.slopes + self.scores

    @property
    def total(self) -> int:
        return self.caches + self.tables


def cache_memory(transformer: nn.Module, schedule: Schedule, *, batch: int, num_tokens: int,
                 dtype: torch.dtype = torch.float16, cache_dtype: torch.dtype | None = None,
                 fast: bool = True, caption_tokens: int = 0) -> CacheMemory:
    """Peak bytes the runtime holds while ``transformer`` follows ``schedule`` for one generation.

    Args:
        transformer: The model (only its config and block structure are read; a model built on the ``meta``
            device works, so DiT-XL/2 can be counted without its weights).
        schedule: The schedule (its forecast order and SELECTIVE steps decide what is kept).
        batch: Rows per transformer call (images x 2 with batched classifier-free guidance).
        num_tokens: Image tokens per row (256 for DiT-XL/2 at 256 px, 4096 for PixArt-α at 1024 px).
        dtype: The pipeline's dtype (branch outputs and tables are in it).
        cache_dtype: The dtype ``apply(..., cache_dtype=)`` stores outputs and slopes in; default ``dtype``.
        fast: Whether ``apply(..., fast=True)`` keeps conditioning tables.
        caption_tokens: Text tokens per row (PixArt's projected caption table).

    Example:
        >>> from procache_opt.testing import tiny_dit_transformer
        >>> schedule = Schedule.from_intervals([2, 2])
        >>> cache_memory(tiny_dit_transformer(), schedule, batch=2, num_tokens=64, dtype=torch.float32).outputs
        131072
    """
    blocks = transformer_blocks(transformer)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    stored = (cache_dtype or dtype).itemsize
    branches = sum(1 for name in ("attn1", "attn2", "ff") if getattr(blocks[0], name, None) is not None)
    per_output = batch * num_tokens * width * stored
    outputs = len(blocks) * branches * per_output
    slopes = outputs if schedule.forecast_order >= 1 and _has_two_full_steps(schedule) else 0
    deep = 0
    if Action.SELECTIVE in schedule.actions:
        deep = len(blocks) - schedule.selective.deep_start(len(blocks))
    scores = deep * batch * num_tokens * (4 + 4)  # float32 attention received + int32 staleness
    return CacheMemory(outputs, slopes, scores, _table_bytes(transformer, schedule.num_steps, batch, width,
                                                            dtype.itemsize, caption_tokens) if fast else 0)


def _has_two_full_steps(schedule: Schedule) -> bool:
    return sum(1 for action in schedule.actions if action == Action.FULL) >= 2


def _table_bytes(transformer: nn.Module, steps: int, batch: int, width: int, itemsize: int,
                 caption_tokens: int) -> int:
    blocks = transformer_blocks(transformer)
    if getattr(blocks[0], "norm_type", None) == "ada_norm_zero":
        # per block: embedding (D) and modulation (6D) at every step; the output layer's shift and scale (2D)
        return (len(blocks) * 7 + 2) * steps * batch * width * itemsize
    if getattr(blocks[0], "norm_type", None) == "ada_norm_single":
        return (7 * steps * batch + batch * caption_tokens) * width * itemsize
    return 0

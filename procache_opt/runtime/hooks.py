"""Branch hooks: cache, reuse and selectively refresh the branch outputs of a transformer block.

Each hook wraps one branch submodule (self-attention, cross-attention or feed-forward) through diffusers'
``ModelHook.new_forward``. On FULL steps a branch computes and stores its output; on REUSE steps it returns
the stored output without computing. The block's own ``forward`` then applies the current step's adaLN
modulation (gates, shifts, scales) and residual adds to the cached outputs: exactly the reuse of FORA
(Selvaraju et al. 2024) and ProCache (Cao et al. 2026, Section 3.3). With ``apply(..., fast=True)`` a block that
reuses everything is skipped before it gets here (``skip.BlockReuseHook``); these hooks are then what FULL
steps and the ``fast=False`` reference path run.

On SELECTIVE steps deep blocks refresh their feed-forward output for the highest-scoring tokens only, ToCa
style (Zou et al. 2024); scores come from the self-attention's queries and keys captured at the last FULL step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from procache_opt.runtime.blocks import BlockAdapter
from procache_opt.runtime.cache import BlockCache
from procache_opt.runtime.context import StepState
from procache_opt.runtime.selection import attention_received, importance, top_tokens
from procache_opt.schedule import Action

__all__ = [
    "BranchCacheHook",
    "CaptureHook",
    "ScoredSelfAttentionHook",
    "SelectiveFeedForwardHook",
    "UnusedNormHook",
]


class BranchCacheHook(ModelHook):
    """Compute and store on FULL steps; return the stored output on every other step."""

    _is_stateful = True

    def __init__(self, name: str, state: StepState, cache: BlockCache) -> None:
        super().__init__()
        self.name = name
        self.state = state
        self.cache = cache

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if state.action_of(self.cache.layer) is Action.FULL:
            output = self.fn_ref.original_forward(*args, **kwargs)
            self.cache.store(state, self.name, output)
            return output
        return self.cache.cached(state, self.name)

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.cache.clear()
        return module


class UnusedNormHook(ModelHook):
    """On steps that reuse its branch, a norm feeding only that branch normalises one token instead of N.

    The block still modulates and passes the result to the branch, which returns its cached output without
    reading its input; the ``(B, 1, D)`` slice keeps that wasted elementwise work at one token. This is what
    keeps REUSE steps close to their counted cost (adaLN modulation, gates and residual adds only).

    Args:
        state: The shared step state.
        layer: Index of the block.
        refreshed_on_selective: Whether the branch computes on SELECTIVE steps (a deep block's feed-forward).
    """

    def __init__(self, state: StepState, layer: int, refreshed_on_selective: bool) -> None:
        super().__init__()
        self.state = state
        self.layer = layer
        self.computes = {Action.FULL} | ({Action.SELECTIVE} if refreshed_on_selective else set())

    def new_forward(self, module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        action = self.state.action_of(self.layer)
        if action in self.computes or action is None:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        return hidden_states[:, :1]


class CaptureHook(ModelHook):
    """Keeps the output of a projection (``to_q`` / ``to_k``) while ``active``, so scoring costs no recompute."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.value: torch.Tensor | None = None

    def post_forward(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        if self.active:
            self.value = output
        return output


class ScoredSelfAttentionHook(BranchCacheHook):
    """Self-attention of a deep block: also scores tokens on the FULL steps that precede SELECTIVE ones.

    Args:
        block: The block owning the self-attention (for its head layout and query/key norms).
        adapter: The block's adapter.
        query: Capture hook on the query projection.
        key: Capture hook on the key projection.
    """

    def __init__(self, name: str, state: StepState, cache: BlockCache, *, block: nn.Module,
                 adapter: BlockAdapter, query: CaptureHook, key: CaptureHook) -> None:
        super().__init__(name, state, cache)
        self.block = block
        self.adapter = adapter
        self.query = query
        self.key = key

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        layer = self.cache.layer
        if not (state.scores_now(layer) and state.action_of(layer) is Action.FULL):
            return super().new_forward(module, *args, **kwargs)
        self.query.active = self.key.active = True
        try:
            output = super().new_forward(module, *args, **kwargs)
            if self.query.value is None or self.key.value is None:
                raise RuntimeError(
                    f"block {self.cache.layer}: the self-attention did not call its to_q/to_k projections, so "
                    "tokens cannot be scored (custom attention processor?)"
                )
            query, key, scale = self.adapter.heads_for_scoring(self.block, self.query.value, self.key.value)
            stride = state.schedule.selective.score_query_stride(key.shape[2])
            self.cache.tokens(state).scores = attention_received(query, key, scale, stride)
        finally:
            self.query.active = self.key.active = False
            self.query.value = self.key.value = None
        return output


class SelectiveFeedForwardHook(BranchCacheHook):
    """Feed-forward of a deep block: on SELECTIVE steps, recompute the top tokens and write them into the cache.

    The token count comes from ``SelectiveConfig.num_fresh_tokens`` (ToCa's step/layer schedule), the order
    from ``selection.importance``. As in the authors' ``cache_cutfresh``, tokens are scored with the
    staleness before this step, then every token ages by one and the refreshed ones restart at zero.
    """

    def __init__(self, name: str, state: StepState, cache: BlockCache, num_layers: int) -> None:
        super().__init__(name, state, cache)
        self.num_layers = num_layers

    def new_forward(self, module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        action = self.state.action_of(self.cache.layer)
        if action is Action.SELECTIVE:
            return self._refresh(hidden_states, *args, **kwargs)
        output = super().new_forward(module, hidden_states, *args, **kwargs)
        if action is Action.FULL:
            state = self.state
            self.cache.tokens(state).staleness = torch.zeros(
                hidden_states.shape[:2], dtype=torch.int32, device=hidden_states.device
            )
        return output

    @torch.compiler.disable
    def _refresh(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        def compute(fresh: torch.Tensor) -> torch.Tensor:
            rows = fresh.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
            return self.fn_ref.original_forward(hidden_states.gather(1, rows), *args, **kwargs)

        return self.refresh(compute, hidden_states.shape[1])

    def refresh(self, compute: Callable[[torch.Tensor], torch.Tensor], num_tokens: int) -> torch.Tensor:
        """This SELECTIVE step's feed-forward output: the cached one (forecast if asked) with its most important
        tokens recomputed by ``compute(fresh)`` (``fresh``: ``(B, k)`` token indices, returns the ``(B, k, D)``
        outputs); writes them into the cache and ages every token by one (the refreshed restart at zero)."""
        state, cache, config = self.state, self.cache, self.state.schedule.selective
        output = cache.cached(state, self.name)
        tokens = cache.tokens(state)
        previous = tokens.staleness
        staleness = previous + 1
        count = config.num_fresh_tokens(num_tokens, state.step, state.schedule.num_steps, cache.layer,
                                        self.num_layers)
        if count > 0:
            score = importance(
                tokens.scores, previous, state.token_grid or _square_grid(num_tokens),
                staleness_weight=config.staleness_weight, staleness_threshold=config.staleness_threshold,
                patch=config.spatial_grid, bonus=config.spatial_bonus,
            )
            fresh = top_tokens(score, count)
            refreshed = compute(fresh)
            output = output.scatter(1, fresh.unsqueeze(-1).expand(-1, -1, refreshed.shape[-1]), refreshed)
            cache.update(state, self.name, output)
            staleness = staleness.scatter(1, fresh, 0)
        tokens.staleness = staleness
        return output


def _square_grid(num_tokens: int) -> tuple[int, int]:
    side = round(num_tokens**0.5)
    if side * side != num_tokens:
        raise ValueError(
            f"cannot infer the token grid of {num_tokens} tokens for the spatial bonus: the transformer input "
            "is not a (B, C, H, W) latent and the token count is not a square"
        )
    return side, side

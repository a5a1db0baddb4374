"""Branch hooks: cache, reuse and selectively refresh the branch outputs of a transformer block.

Each hook wraps one branch submodule (self-attention, cross-attention or feed-forward) through diffusers'
``ModelHook.new_forward``. On FULL steps a branch computes and stores its output; on REUSE steps it returns
the stored output without computing. The block's own ``forward`` is untouched, so it still applies the current
step's adaLN modulation (gates, shifts, scales) and residual adds to the cached outputs: exactly the reuse of
FORA (Selvaraju et al. 2024) and ProCache (Cao et al. 2026, Section 3.3).

On SELECTIVE steps deep blocks refresh their feed-forward output for the highest-scoring tokens only, ToCa
style (Zou et al. 2024); scores come from the self-attention's queries and keys captured at the last FULL step.

With ``Schedule.forecast_order == 1`` a reused output is not returned as stored but extrapolated along the
line through the last two FULL steps' outputs, ``o(t) = o(t_k) + (t - t_k) * (o(t_k) - o(t_{k-1})) /
(t_k - t_{k-1})``: the first-order Taylor forecast of TaylorSeer (Liu et al. 2025, arXiv 2503.06923) with
finite differences over step indices. Until two FULL steps have run the forecast is the stored output.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn
from torch.nn.modules.module import _global_forward_hooks

from procache_opt.runtime.blocks import BlockAdapter
from procache_opt.runtime.context import StepState
from procache_opt.runtime.selection import attention_received, importance, top_tokens
from procache_opt.schedule import Action

__all__ = [
    "BlockCache",
    "CachedBranch",
    "TokenState",
    "BlockReuseHook",
    "BranchCacheHook",
    "CaptureHook",
    "ScoredSelfAttentionHook",
    "SelectiveFeedForwardHook",
    "UnusedNormHook",
]


class CachedBranch:
    """What a block keeps of one branch for one guidance branch: its output and forecast slope (in the cache's
    dtype), and the dtype the branch computes in (what a read returns)."""

    __slots__ = ("output", "slope", "dtype")

    def __init__(self) -> None:
        self.output: torch.Tensor | None = None
        self.slope: torch.Tensor | None = None
        self.dtype: torch.dtype | None = None


class TokenState:
    """What a deep block keeps per guidance branch for selective computation."""

    __slots__ = ("scores", "staleness")

    def __init__(self) -> None:
        self.scores: torch.Tensor | None = None
        """``(B, N)`` attention-received scores from the last FULL step."""
        self.staleness: torch.Tensor | None = None
        """``(B, N)`` selective steps since each token's feed-forward output was recomputed."""


class BlockCache:
    """Cached tensors of one block, by guidance branch (see ``context``) and branch name.

    Inside a ``torch.compile``d graph nothing here reads the step index or adds or removes entries (both would
    make dynamo specialise its graphs): what a step does comes from its ``StepKind``, step-dependent numbers from
    0-d tensors, and values live in attributes of objects made in advance for the two guidance branches of
    batched and unbatched guidance. So a compiled step is one graph for every step of its kind.

    Attributes:
        layer: Index of the block.
        dtype: Dtype the branch outputs (and slopes) are stored in; ``None`` keeps each output's own.
    """

    def __init__(self, layer: int, names: tuple[str, ...] = ("attn1", "attn2", "ff"),
                 dtype: torch.dtype | None = None) -> None:
        self.layer = layer
        self.dtype = dtype
        self.names = names
        self._branches: dict[tuple[int, str], CachedBranch] = {}
        self._tokens: dict[int, TokenState] = {}
        for branch in (0, 1):
            self._add(branch)

    def clear(self, branch: int | None = None) -> None:
        for (owner, _), cached in self._branches.items():
            if branch is None or owner == branch:
                cached.output = cached.slope = cached.dtype = None
        for owner, tokens in self._tokens.items():
            if branch is None or owner == branch:
                tokens.scores = tokens.staleness = None

    def store(self, state: StepState, name: str, output: torch.Tensor) -> None:
        """Keep a FULL step's output (and, when forecasting, its slope from the previous FULL step's)."""
        cached, group = self._branch(state, name), state.group(self.layer)
        if state.now.slopes[group] and cached.output is not None:  # None after a replayed prefix (Evaluator)
            cached.slope = self._stored((output - cached.output.to(output.dtype)) / state.span[group])
        cached.output = self._stored(output)
        cached.dtype = output.dtype

    def update(self, state: StepState, name: str, output: torch.Tensor) -> None:
        """Keep an output partly recomputed at a non-FULL step; the forecast keeps its anchor and slope."""
        cached, group = self._branch(state, name), state.group(self.layer)
        if state.now.slopes[group]:
            output = output - state.tau[group] * cached.slope.to(output.dtype)
        cached.output = self._stored(output)

    def cached(self, state: StepState, name: str) -> torch.Tensor:
        """The reused output of branch ``name`` at this step (forecast if asked), or an error saying why not."""
        value, slope, tau = self.parts(state, name)
        return value if slope is None else value + tau * slope

    def parts(self, state: StepState, name: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(value, slope, tau)`` with ``cached() == value + tau * slope`` (``slope`` None: reuse as stored), in the
        branch's dtype; callers that add the output to something fold the forecast into that add."""
        cached = self._branch(state, name)
        if cached.output is None:
            self._missing(state, name)
        group = state.group(self.layer)
        value = cached.output if self.dtype is None else cached.output.to(cached.dtype)
        if not state.now.slopes[group]:
            return value, None, None
        return value, (cached.slope if self.dtype is None else cached.slope.to(cached.dtype)), state.tau[group]

    def tokens(self, state: StepState) -> TokenState:
        """The running guidance branch's token scores and staleness."""
        tokens = self._tokens.get(state.branch)
        return tokens if tokens is not None else self._add(state.branch)[1]

    def nbytes(self) -> int:
        """Bytes held by this block's cached tensors."""
        tensors = [t for c in self._branches.values() for t in (c.output, c.slope)]
        tensors += [t for tokens in self._tokens.values() for t in (tokens.scores, tokens.staleness)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _branch(self, state: StepState, name: str) -> CachedBranch:
        cached = self._branches.get((state.branch, name))
        return cached if cached is not None else self._add(state.branch)[0][name]

    @torch.compiler.disable
    def _add(self, branch: int) -> tuple[dict[str, CachedBranch], TokenState]:
        """Entries for a guidance branch (two exist from the start; a third call per step makes more)."""
        for name in self.names:
            self._branches.setdefault((branch, name), CachedBranch())
        tokens = self._tokens.setdefault(branch, TokenState())
        return {name: self._branches[branch, name] for name in self.names}, tokens

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.dtype is None else tensor.to(self.dtype)

    @torch.compiler.disable
    def _missing(self, state: StepState, name: str) -> None:
        if state.step is None:
            raise RuntimeError(
                f"block {self.layer} {name} ran outside a transformer call; ProCache hooks follow the schedule "
                "only when the whole transformer is called"
            )
        raise RuntimeError(
            f"block {self.layer} {name} has no cached output to reuse at step {state.step} (guidance branch "
            f"{state.branch}); a generation must start at step 0, which is FULL"
        )


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


class BlockReuseHook(ModelHook):
    """Skips a block's ``forward`` on steps where its cached outputs say what it returns.

    With all branch outputs cached, ``BasicTransformerBlock.forward`` reduces to
    ``x + gate_attn * A + C + gate_ff * F`` (``A``, ``C``, ``F``: the self-attention, cross-attention (PixArt,
    ungated) and feed-forward outputs, forecast if the schedule asks; the gates: this step's adaLN modulation).
    On steps where the block reuses every branch this hook computes exactly that, in the block's order, and
    nothing else: no norms, no modulation of the branch inputs, no branch hooks. On SELECTIVE steps a deep
    block (one that refreshes tokens) is computed the same way with ``F`` partly recomputed: only the selected
    tokens are normalised, modulated and sent through the feed-forward (``SelectiveFeedForwardHook.refresh``),
    where the block's own ``forward`` would normalise and modulate all of them. The modulation comes from the
    conditioning tables when they apply (``modulation.ConditioningMemo``), else from the block's own modules.
    Blocks called with positional arguments, or with GLIGEN inputs, run as usual.

    Args:
        state: The shared step state.
        cache: The block's cache.
        adapter: The block's adapter (branch names, modulation, gates, feed-forward input).
        memo: The transformer's conditioning tables, if any.
        feed_forward: The hook of a deep block's feed-forward (which refreshes tokens on SELECTIVE steps), else
            ``None``: the block is then skipped on SELECTIVE steps as on REUSE ones.
    """

    def __init__(self, state: StepState, cache: BlockCache, adapter: BlockAdapter, memo: Any,
                 feed_forward: SelectiveFeedForwardHook | None = None) -> None:
        super().__init__()
        self.state = state
        self.cache = cache
        self.adapter = adapter
        self.memo = memo
        self.feed_forward = feed_forward
        self.skipped = {Action.REUSE} | (set() if feed_forward is not None else {Action.SELECTIVE})
        self.cross_attention: str | None = None

    def initialize_hook(self, module: nn.Module) -> nn.Module:
        cross = self.adapter.cross_attention
        self.cross_attention = cross if cross is not None and getattr(module, cross, None) is not None else None
        return module

    def new_forward(self, module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        action = self.state.action_of(self.cache.layer)
        if not args and not _has_gligen(kwargs):
            output = None
            if action in self.skipped:
                output = self._skip(module, hidden_states, kwargs)
            elif action is Action.SELECTIVE and self.feed_forward is not None:
                output = self._selective(module, hidden_states, kwargs)
            if output is not None:
                return output
        return self.fn_ref.original_forward(hidden_states, *args, **kwargs)

    def _skip(self, module: nn.Module, hidden_states: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor | None:
        """The skipped block's output, or ``None`` if its modulation cannot be had (the block then runs)."""
        gates = self.memo.block_gates(self.cache.layer) if self.memo is not None else None
        if gates is None:
            modulation = self.adapter.modulation(module, hidden_states, kwargs)
            if modulation is None:
                return None
            gates = self.adapter.residual_gates(module, modulation)
        terms = self._attention_terms(gates[0])
        terms.append((gates[1], self.cache.parts(self.state, self.adapter.feed_forward)))
        if torch.compiler.is_compiling():  # the compiler fuses and allocates; keep the graph functional
            output = hidden_states
            for gate, part in terms:
                output = _add_term(output, gate, part, in_place=False)
            return output
        return self._finish(module, self._accumulate(hidden_states, terms))

    @torch.compiler.disable
    def _selective(self, module: nn.Module, hidden_states: torch.Tensor,
                   kwargs: dict[str, Any]) -> torch.Tensor | None:
        """A deep block's output on a SELECTIVE step (eager: such steps never run compiled)."""
        modulation = self.memo.block_modulation(self.cache.layer) if self.memo is not None else None
        if modulation is None:
            modulation = self.adapter.modulation(module, hidden_states, kwargs)
        if modulation is None:
            return None
        gate_attention, gate_feed_forward = self.adapter.residual_gates(module, modulation)
        hidden_states = self._accumulate(hidden_states, self._attention_terms(gate_attention))

        def compute(fresh: torch.Tensor) -> torch.Tensor:
            rows = hidden_states.gather(1, fresh.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
            return self.feed_forward.fn_ref.original_forward(
                self.adapter.feed_forward_input(module, rows, modulation))

        feed_forward = self.feed_forward.refresh(compute, hidden_states.shape[1])
        return self._finish(module, hidden_states.addcmul_(gate_feed_forward, feed_forward))

    def _attention_terms(self, gate: torch.Tensor) -> list[tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]]:
        terms = [(gate, self.cache.parts(self.state, self.adapter.self_attention))]
        if self.cross_attention is not None:
            terms.append((None, self.cache.parts(self.state, self.cross_attention)))
        return terms

    def _accumulate(self, hidden_states: torch.Tensor,
                    terms: list[tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]]) -> torch.Tensor:
        """Eager mode: ``hidden_states`` plus the terms, in a run of skipped blocks allocating only once.

        On the CPU machines measured here a fresh ``(B, N, D)`` tensor costs page faults worth 10 times the add
        itself (0.42 ms vs 0.03 ms for 2 x 256 x 384 floats). The previous block's output is updated in place
        only when nothing but the transformer's loop holds it (:func:`_unobserved`, recorded by :meth:`_finish`).
        """
        previous = self.state.skipped_output
        if previous is not None and previous[0] == self.cache.layer - 1 and previous[1]() is hidden_states:
            output = hidden_states
        else:
            # In the layout of the cached output, not the input's: DiT's patch embedding returns a transposed
            # view, and every later in-place add over mismatched strides ran 6x slower (0.18 vs 0.03 ms).
            # (out= is not differentiable; with autograd recording, speed is not the point.)
            (gate, (value, slope, tau)), terms = terms[0], terms[1:]
            into = None if torch.is_grad_enabled() else torch.empty_like(value)
            output = torch.addcmul(hidden_states, gate, value, out=into)
            if slope is not None:
                output.addcmul_(gate * tau, slope)
        for gate, part in terms:
            output = _add_term(output, gate, part, in_place=True)
        return output

    def _finish(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        state = self.state
        state.skipped_output = (self.cache.layer, weakref.ref(output)) if _unobserved(module, output) else None
        return output


def _add_term(output: torch.Tensor, gate: torch.Tensor | None, part: tuple[torch.Tensor, ...],
              in_place: bool) -> torch.Tensor:
    """``output + gate * (value + tau * slope)`` (``gate`` None: 1; ``slope`` None: no forecast), the forecast
    folded into the add so that no forecast tensor is made."""
    value, slope, tau = part
    if in_place:
        output = output.add_(value) if gate is None else output.addcmul_(gate, value)
        if slope is not None:
            output.addcmul_(tau if gate is None else gate * tau, slope)
        return output
    output = output + value if gate is None else torch.addcmul(output, gate, value)
    return output if slope is None else torch.addcmul(output, tau if gate is None else gate * tau, slope)


def _unobserved(module: nn.Module, output: torch.Tensor) -> bool:
    """Whether only the caller receives ``module``'s ``output``: no forward hook (torch's, global, or another
    diffusers hook) sees it and autograd does not record it, so the next block may modify it in place."""
    if output.requires_grad or module._forward_hooks or _global_forward_hooks:
        return False
    registry = getattr(module, "_diffusers_hook", None)
    return registry is None or len(registry.hooks) == 1


def _has_gligen(kwargs: dict[str, Any]) -> bool:
    extra = kwargs.get("cross_attention_kwargs")
    return bool(extra) and "gligen" in extra


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

"""What a block keeps between steps: branch outputs, forecast slopes and token state, per guidance branch.

Inside a ``torch.compile``d graph nothing here reads the step index or adds or removes entries (both would make
dynamo specialise its graphs): what a step does comes from its ``StepKind``, step-dependent numbers from 0-d
tensors (``StepState.tau``, ``StepState.span``), and values live in attributes of objects made in advance.

With ``Schedule.forecast_order == 1`` a reused output is not returned as stored but extrapolated along the
line through the last two FULL steps' outputs, ``o(t) = o(t_k) + (t - t_k) * (o(t_k) - o(t_{k-1})) /
(t_k - t_{k-1})``: the first-order Taylor forecast of TaylorSeer (Liu et al. 2025, arXiv 2503.06923) with
finite differences over step indices. Until two FULL steps have run the forecast is the stored output.
"""

from __future__ import annotations

import torch

from procache_opt.runtime.context import StepState

__all__ = ["BlockCache", "CachedBranch", "TokenState"]


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

"""Conditioning computed once per generation: every step's adaLN modulation in one batched pass.

A DiT block's modulation (shifts, scales and gates of adaLN-Zero) depends only on the timestep and the class
label, and PixArt's shared ``adaln_single`` output only on the timestep (and the resolution conditions of
PixArt-α 1024): all known when the pipeline starts its loop (the scheduler's ``timesteps``, the labels or prompt
embeddings it passes to every call). Computed per call, DiT's modulation is a timestep MLP, a label embedding and
a ``Linear(D, 6D)`` *per block per step* with only ``B`` rows, which a CPU runs at a fifth of its arithmetic
speed and a GPU launch-bound: on a DiT-S/2 with batch 2 it was most of a REUSE step (5.5% of a FULL step,
``benchmarks/results/runtime_speedup.md``), and every FULL step pays it too.

A :class:`ConditioningMemo` therefore computes each conditioning module's output for *all* ``T`` steps of the
generation at the first call it sees, as one call with ``T x B`` rows, and its :class:`TableHook` on the module
returns row ``step`` on every later call. The tables are valid for one generation: the step tracker checks per
call that the scheduler's ``timesteps`` are the same object (pipelines set them anew for every call) and that the
conditions are the ones the table was built from; otherwise the hooks compute as usual. Memory, per block of a
DiT: ``T x B x 7 D`` values (``T x B x D`` for PixArt's one table): 52 MB for DiT-XL/2, 50 steps, 8 images with
guidance, fp16, in all 28 blocks (see ``docs/runtime.md``).

Outputs equal the per-call computation up to the rounding of a GEMM with more rows (fp32: within 1e-6
relative; ``tests/test_runtime_fast.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from torch import nn

from procache_opt.runtime.blocks import adapter_for
from procache_opt.runtime.context import StepState

__all__ = ["ConditioningMemo", "TableHook", "memo_for"]

Rows = dict[str, Any]
"""Per-module outputs of one generation: a tensor (or tuple of tensors) with a leading step axis, or a tensor
that is the same at every step (``constant`` keys)."""


class ConditioningMemo:
    """Per-generation tables of a transformer's step-only conditioning, one per guidance branch.

    Subclasses say which modules to memoise (:meth:`sites`), which call arguments the tables depend on
    (:meth:`conditions`) and how to compute every step at once (:meth:`build`).
    """

    constant: frozenset[str] = frozenset()
    """Keys whose table has no step axis (the same output at every step)."""

    def __init__(self, transformer: nn.Module, state: StepState) -> None:
        self.transformer = transformer
        self.state = state
        self._tables: dict[int, tuple[torch.Tensor, dict[str, Any], list[Rows]]] = {}
        self.current: Rows = {}
        """The running call's row of every table (empty when no table applies): what the hooks read."""

    # -- what subclasses define -------------------------------------------------------------------------------
    def sites(self) -> dict[str, nn.Module]:
        """Module to memoise, by table key."""
        raise NotImplementedError

    def conditions(self, call: Mapping[str, Any]) -> dict[str, Any] | None:
        """The call's arguments the tables depend on besides the timestep, or ``None`` if it cannot be tabled."""
        raise NotImplementedError

    def build(self, timesteps: torch.Tensor, batch: int, conditions: dict[str, Any]) -> Rows:
        """Every key's output for ``timesteps`` (``T x batch`` rows, step-major), reshaped to ``(T, batch, ...)``."""
        raise NotImplementedError

    # -- used by the step tracker and the hooks -----------------------------------------------------------------
    def hooks(self) -> list[tuple[nn.Module, TableHook]]:
        return [(module, TableHook(self, key)) for key, module in self.sites().items()]

    @torch.compiler.disable
    def prepare(self, call: Mapping[str, Any], timesteps: torch.Tensor | None) -> None:
        """Point :attr:`current` at the running step's rows of its guidance branch's tables, building them on
        first use.

        Called by the step tracker after ``state.begin``; ``timesteps`` is the scheduler's (``None`` when the
        step came from ``handle.at_step``, which tables nothing).
        """
        self.current = {}
        conditions = self.conditions(call) if timesteps is not None else None
        if conditions is None:
            return
        branch = self.state.branch
        stored = self._tables.get(branch)
        if stored is None or stored[0] is not timesteps:
            batch = call["hidden_states"].shape[0]
            rows = self.build(timesteps.to(call["hidden_states"].device), batch, conditions)
            stored = (timesteps, conditions, self._by_step(rows, timesteps.shape[0]))
            self._tables[branch] = stored
        elif not _same(stored[1], conditions):
            return  # another condition than the table's within one generation: compute per call
        self.current = stored[2][self.state.step]

    def finish(self) -> None:
        self.current = {}

    def _by_step(self, rows: Rows, steps: int) -> list[Rows]:
        """Each step's rows as views, made once per generation so that a call only looks its step up."""
        def at(table: Any, step: int) -> Any:
            if isinstance(table, tuple):
                return tuple(t[step] for t in table)
            return table[step]

        return [{key: table if key in self.constant else at(table, step) for key, table in rows.items()}
                for step in range(steps)]

    def clear(self, branch: int | None = None) -> None:
        if branch is None:
            self._tables.clear()
        else:
            self._tables.pop(branch, None)
        self.current = {}

    def block_gates(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Block ``layer``'s residual gates at the running step (``BlockAdapter.residual_gates``), if tabled."""
        return None

    def block_modulation(self, layer: int) -> torch.Tensor | None:
        """Block ``layer``'s own ``(B, 6D)`` modulation at the running step, if tabled."""
        return None

    def nbytes(self) -> int:
        """Bytes held by the tables (the storage behind every step's views, counted once)."""
        storages = {id(t.untyped_storage()): t.untyped_storage().nbytes()
                    for _, _, per_step in self._tables.values() for rows in per_step for t in _tensors(rows)}
        return sum(storages.values())


class TableHook(ModelHook):
    """Returns the memo's row for the running step, or computes as usual when no table applies."""

    def __init__(self, memo: ConditioningMemo, key: str) -> None:
        super().__init__()
        self.memo = memo
        self.key = key

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        row = self.memo.current.get(self.key)
        return self.fn_ref.original_forward(*args, **kwargs) if row is None else row


class AdaLNZeroMemo(ConditioningMemo):
    """DiT (``ada_norm_zero``): each block's ``norm1.emb`` and ``norm1.linear``, and the output layer's ``proj_out_1``.

    ``DiTTransformer2DModel.forward`` computes the output layer's shift and scale from block 0's embedding, so
    that call reads block 0's table too.
    """

    def __init__(self, transformer: nn.Module, state: StepState) -> None:
        super().__init__(transformer, state)
        self._gate_keys = [f"gates.{layer}" for layer in range(len(transformer.transformer_blocks))]

    def sites(self) -> dict[str, nn.Module]:
        sites = {}
        for layer, block in enumerate(self.transformer.transformer_blocks):
            sites[f"emb.{layer}"] = block.norm1.emb
            sites[f"mod.{layer}"] = block.norm1.linear
        sites["final"] = self.transformer.proj_out_1
        return sites

    def conditions(self, call: Mapping[str, Any]) -> dict[str, Any] | None:
        labels, timestep = call.get("class_labels"), call.get("timestep")
        if not isinstance(labels, torch.Tensor) or not isinstance(timestep, torch.Tensor):
            return None
        return {"class_labels": labels, "dtype": call["hidden_states"].dtype, "timestep_dtype": timestep.dtype}

    def build(self, timesteps: torch.Tensor, batch: int, conditions: dict[str, Any]) -> Rows:
        steps = timesteps.shape[0]
        labels = conditions["class_labels"].reshape(-1).expand(batch).repeat(steps)
        flat_t = timesteps.to(conditions["timestep_dtype"]).repeat_interleave(batch)
        rows: Rows = {}
        for layer, block in enumerate(self.transformer.transformer_blocks):
            emb = block.norm1.emb(flat_t, labels, hidden_dtype=conditions["dtype"])
            rows[f"emb.{layer}"] = emb.reshape(steps, batch, -1)
            modulation = block.norm1.linear(block.norm1.silu(emb))
            rows[f"mod.{layer}"] = modulation.reshape(steps, batch, -1)
            # views of the modulation table: what a skipped block needs, without slicing it at every step
            gates = adapter_for(block).residual_gates(block, modulation)
            rows[f"gates.{layer}"] = tuple(gate.reshape(steps, batch, *gate.shape[1:]) for gate in gates)
        rows["final"] = self.transformer.proj_out_1(F.silu(rows["emb.0"].flatten(0, 1))).reshape(steps, batch, -1)
        return rows

    def block_gates(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.current.get(self._gate_keys[layer])

    def block_modulation(self, layer: int) -> torch.Tensor | None:
        return self.current.get(f"mod.{layer}")


class AdaLNSingleMemo(ConditioningMemo):
    """PixArt (``ada_norm_single``): the shared ``adaln_single`` and the caption projection.

    The caption projection (two linears over every text token) depends only on the prompt embeddings, so its
    table is one entry for all steps.
    """

    constant = frozenset({"caption"})

    def sites(self) -> dict[str, nn.Module]:
        sites = {"adaln": self.transformer.adaln_single}
        if self.transformer.caption_projection is not None:
            sites["caption"] = self.transformer.caption_projection
        return sites

    def conditions(self, call: Mapping[str, Any]) -> dict[str, Any] | None:
        timestep, prompt = call.get("timestep"), call.get("encoder_hidden_states")
        if not isinstance(timestep, torch.Tensor) or (
                self.transformer.caption_projection is not None and not isinstance(prompt, torch.Tensor)):
            return None
        return {"added_cond_kwargs": call.get("added_cond_kwargs"), "dtype": call["hidden_states"].dtype,
                "timestep_dtype": timestep.dtype, "encoder_hidden_states": call.get("encoder_hidden_states")}

    def build(self, timesteps: torch.Tensor, batch: int, conditions: dict[str, Any]) -> Rows:
        steps = timesteps.shape[0]
        flat_t = timesteps.to(conditions["timestep_dtype"]).repeat_interleave(batch)
        added = {key: value.repeat(steps, *[1] * (value.ndim - 1)) if isinstance(value, torch.Tensor) else value
                 for key, value in (conditions["added_cond_kwargs"] or {}).items()} or None
        modulation, embedded = self.transformer.adaln_single(flat_t, added, batch_size=steps * batch,
                                                             hidden_dtype=conditions["dtype"])
        rows: Rows = {"adaln": (modulation.reshape(steps, batch, -1), embedded.reshape(steps, batch, -1))}
        if self.transformer.caption_projection is not None:
            rows["caption"] = self.transformer.caption_projection(conditions["encoder_hidden_states"])
        return rows


_MEMOS: dict[type[nn.Module], Callable[[nn.Module, StepState], ConditioningMemo]] = {
    DiTTransformer2DModel: AdaLNZeroMemo,
    PixArtTransformer2DModel: AdaLNSingleMemo,
}


def memo_for(transformer: nn.Module, state: StepState) -> ConditioningMemo | None:
    """The conditioning memo of ``transformer``'s exact class, or ``None`` (its conditioning is computed per call)."""
    make = _MEMOS.get(type(transformer))
    return None if make is None else make(transformer, state)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                          and a.device == b.device and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return a == b


def _tensors(rows: Rows) -> list[torch.Tensor]:
    return [t for value in rows.values() for t in (value if isinstance(value, tuple) else (value,))]

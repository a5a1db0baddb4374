"""Block registry: which submodules of a transformer block are the branches ProCache caches.

FORA and ProCache cache each block's branch outputs (self-attention, cross-attention, feed-forward) before
the gated residual add, then let the block apply the current step's adaLN modulation to them. The runtime
hooks those branch submodules and leaves the block's own ``forward`` untouched, so supporting a block class
only needs its branch names and how to get its self-attention queries and keys for token scoring: a
:class:`BlockAdapter`. New block classes are added with :func:`register_block`, not with ``isinstance``
chains in the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

__all__ = ["BlockAdapter", "UnsupportedModelError", "adapter_for", "register_block", "transformer_blocks"]


class UnsupportedModelError(TypeError):
    """The model or one of its blocks has no registered adapter."""


@dataclass(frozen=True)
class BlockAdapter:
    """How the runtime reads one block class.

    Attributes:
        self_attention: Attribute name of the self-attention branch (a diffusers ``Attention``).
        feed_forward: Attribute name of the feed-forward branch; it must accept any number of tokens.
        cross_attention: Attribute name of the cross-attention branch, if the class may have one (the
            attribute may still be ``None`` on an instance, as on DiT's blocks).
        input_norms: By the block's ``norm_type``: for each branch, the path of the norm whose output feeds
            that branch and nothing else. When the branch is reused, normalising all N tokens is wasted
            work, which the runtime skips (see ``hooks.UnusedNormHook``). Defaults follow
            ``BasicTransformerBlock.forward``: DiT's ``ada_norm_zero`` and PixArt's ``ada_norm_single``.
    """

    self_attention: str = "attn1"
    feed_forward: str = "ff"
    cross_attention: str | None = "attn2"
    input_norms: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: {
        "ada_norm_zero": {"attn1": "norm1.norm", "ff": "norm3"},
        "ada_norm_single": {"attn1": "norm1", "ff": "norm2"},
    })

    def branches(self, block: nn.Module) -> dict[str, nn.Module]:
        """The branch submodules present on ``block``, by attribute name, in call order."""
        names = [self.self_attention, self.cross_attention, self.feed_forward]
        found = {name: getattr(block, name, None) for name in names if name is not None}
        return {name: module for name, module in found.items() if module is not None}

    def branch_input_norms(self, block: nn.Module) -> dict[str, nn.Module]:
        """Norm submodules feeding only one branch, by branch name (none if a position embedding intervenes)."""
        if getattr(block, "pos_embed", None) is not None:
            return {}
        paths = self.input_norms.get(getattr(block, "norm_type", ""), {})
        return {branch: block.get_submodule(path) for branch, path in paths.items()}

    def query_key_projections(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The self-attention's query and key projections, whose outputs scoring captures."""
        attn = getattr(block, self.self_attention)
        if getattr(attn, "to_q", None) is None or getattr(attn, "to_k", None) is None:
            raise UnsupportedModelError(
                f"{type(block).__name__}.{self.self_attention} has no separate to_q/to_k projections (fused?); "
                "selective computation scores tokens from them: call transformer.unfuse_qkv_projections()"
            )
        return attn.to_q, attn.to_k

    def heads_for_scoring(self, block: nn.Module, query: torch.Tensor,
                          key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(B, N, H*d)`` projections -> ``(B, H, N, d)`` queries and keys as the attention processor sees them
        (query/key norms applied), and the softmax scale."""
        attn = getattr(block, self.self_attention)
        batch = query.shape[0]
        query = query.view(batch, query.shape[1], attn.heads, -1).transpose(1, 2)
        key = key.view(batch, key.shape[1], attn.heads, -1).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        return query, key, float(attn.scale)

    def modulation(self, block: nn.Module, hidden_states: torch.Tensor,
                   kwargs: Mapping[str, Any]) -> torch.Tensor | None:
        """The block's ``(B, 6D)`` adaLN modulation for this call, computed as its own ``forward`` would, or
        ``None`` when its norm type has none the runtime knows."""
        norm_type = getattr(block, "norm_type", None)
        if norm_type == "ada_norm_zero" and getattr(block.norm1, "emb", None) is not None:
            norm = block.norm1
            emb = norm.emb(kwargs.get("timestep"), kwargs.get("class_labels"), hidden_dtype=hidden_states.dtype)
            return norm.linear(norm.silu(emb))
        if norm_type == "ada_norm_single":
            return kwargs.get("timestep")
        return None

    def residual_gates(self, block: nn.Module, modulation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gates ``BasicTransformerBlock.forward`` multiplies the self-attention and feed-forward outputs by
        before the residual adds, shaped ``(B, 1, D)``: adaLN-Zero's ``gate_msa``/``gate_mlp`` chunks of the
        modulation (DiT), or those chunks of the block's ``scale_shift_table`` plus the shared modulation
        (PixArt's adaLN-single)."""
        if block.norm_type == "ada_norm_zero":
            chunks = modulation.chunk(6, dim=1)
            return chunks[2].unsqueeze(1), chunks[5].unsqueeze(1)
        chunks = (block.scale_shift_table[None] + modulation.reshape(modulation.shape[0], 6, -1)).chunk(6, dim=1)
        return chunks[2], chunks[5]

    def feed_forward_input(self, block: nn.Module, hidden_states: torch.Tensor,
                           modulation: torch.Tensor) -> torch.Tensor:
        """What ``BasicTransformerBlock.forward`` feeds its feed-forward for these tokens: the feed-forward norm
        (DiT ``norm3``, PixArt ``norm2``: per token, so any subset of tokens can be normalised alone) with the
        ``shift_mlp``/``scale_mlp`` chunks of the modulation applied."""
        if block.norm_type == "ada_norm_zero":
            chunks = modulation.chunk(6, dim=1)
            return block.norm3(hidden_states) * (1 + chunks[4][:, None]) + chunks[3][:, None]
        chunks = (block.scale_shift_table[None] + modulation.reshape(modulation.shape[0], 6, -1)).chunk(6, dim=1)
        return block.norm2(hidden_states) * (1 + chunks[4]) + chunks[3]

    def check(self, block: nn.Module) -> None:
        """Fail early on block settings that would call a branch more than once per forward."""
        if getattr(block, "_chunk_size", None) is not None:
            raise UnsupportedModelError(
                f"{type(block).__name__} runs its feed-forward in chunks, which caching cannot follow; "
                "turn chunking off first: block.set_chunk_feed_forward(None)"
            )


_ADAPTERS: dict[type[nn.Module], BlockAdapter] = {BasicTransformerBlock: BlockAdapter()}


def register_block(block_class: type[nn.Module], adapter: BlockAdapter) -> None:
    """Teach the runtime a new block class (exact class: a subclass may override ``forward``)."""
    _ADAPTERS[block_class] = adapter


def adapter_for(block: nn.Module) -> BlockAdapter:
    """The adapter of ``block``'s exact class, or an error listing the supported classes."""
    adapter = _ADAPTERS.get(type(block))
    if adapter is None:
        supported = ", ".join(sorted(cls.__name__ for cls in _ADAPTERS))
        raise UnsupportedModelError(
            f"ProCache caching does not support block class {type(block).__name__}; supported: {supported} "
            "(add one with procache_opt.runtime.register_block)"
        )
    adapter.check(block)
    return adapter


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a diffusers DiT-style transformer (``model.transformer_blocks``), in depth order."""
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no `transformer_blocks` list; ProCache caching supports diffusers "
            "DiT-style transformers (DiTTransformer2DModel, PixArtTransformer2DModel)"
        )
    return list(blocks)

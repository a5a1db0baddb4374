"""Token importance for ProCache's selective computation: pure tensor functions, no hooks, no state.

On a SELECTIVE step, deep blocks recompute their feed-forward branch only for the most important tokens
(ProCache, Cao et al. AAAI 2026, Section 3.3, built on ToCa, Zou et al. 2024). The score of a token is

* the attention it received at the last FULL step: column sums of the softmaxed self-attention map,
  L2-normalised per sample (``scores.attn_score`` in the authors' DiT code),
* plus ``staleness_weight * staleness / staleness_threshold`` (their ``score_evaluate``; ``staleness``
  counts the selective steps since the token was last recomputed),
* plus a spatial-uniformity bonus: the top token of each ``grid`` x ``grid`` patch gets ``bonus`` times its
  score on top (their ``local_selection_with_bonus``), so refreshed tokens spread over the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_received", "importance", "spatial_bonus", "top_tokens"]

SCORE_CHUNK_ELEMENTS = 1 << 22
"""Largest attention-map slice (batch x heads x queries x keys) materialised at once: 16 MiB in float32."""


def attention_received(query: torch.Tensor, key: torch.Tensor, scale: float, query_stride: int = 1) -> torch.Tensor:
    """Attention each key token receives, summed over heads and (a strided subset of) queries.

    The authors materialise the full ``N x N`` map of every block at every full step; here only the column
    sums are needed, so only every ``query_stride``-th query is used (``SelectiveConfig.score_query_stride``
    keeps at most ``score_max_queries``) and they are processed in chunks of at most
    :data:`SCORE_CHUNK_ELEMENTS` map entries: cost ``O(N / query_stride * N * head_dim)`` per
    head, memory bounded whatever ``N``. Summing over heads instead of averaging changes nothing after the
    L2 normalisation.

    Args:
        query: ``(B, H, N, d)`` queries (after any query norm).
        key: ``(B, H, N, d)`` keys (after any key norm).
        scale: Softmax scale of the attention (``1 / sqrt(d)`` unless the model says otherwise).
        query_stride: Use queries ``0, query_stride, 2 * query_stride, ...``.

    Returns:
        ``(B, N)`` float32 scores, L2-normalised per sample.
    """
    batch, heads, num_tokens, _ = key.shape
    query = query[:, :, ::query_stride] * scale  # scaling Q x d beats Q x N
    chunk = max(1, SCORE_CHUNK_ELEMENTS // (batch * heads * num_tokens))
    received = torch.zeros(batch, heads, num_tokens, dtype=torch.float32, device=key.device)
    key_t = key.transpose(-1, -2)
    for start in range(0, query.shape[2], chunk):
        logits = query[:, :, start : start + chunk] @ key_t
        received += logits.softmax(dim=-1, dtype=torch.float32).sum(dim=2)
    return F.normalize(received.sum(dim=1), p=2, dim=-1)


def spatial_bonus(score: torch.Tensor, grid: tuple[int, int], patch: int, bonus: float) -> torch.Tensor:
    """Add ``bonus`` times its score to the top-scoring token of each ``patch`` x ``patch`` patch.

    Same result as the authors' ``local_selection_with_bonus(score, bonus, patch)``, extended to non-square
    token grids and to grids not divisible by ``patch`` (tokens in the incomplete border patches get no
    bonus, where the authors' code asserts).

    Args:
        score: ``(B, N)`` scores of tokens in row-major order.
        grid: ``(rows, cols)`` of the token grid, ``rows * cols == N``.
        patch: Side of the patches.
        bonus: Relative bonus of each patch's top token.
    """
    rows, cols = grid
    if rows * cols != score.shape[1]:
        raise ValueError(f"token grid {rows}x{cols} does not match {score.shape[1]} tokens")
    if bonus == 0 or patch == 1:
        return score if bonus == 0 else score * (1 + bonus)
    batch = score.shape[0]
    prows, pcols = rows // patch, cols // patch
    image = score.view(batch, rows, cols)
    inner = image[:, : prows * patch, : pcols * patch]
    patches = inner.reshape(batch, prows, patch, pcols, patch).permute(0, 1, 3, 2, 4)
    patches = patches.reshape(batch, prows, pcols, patch * patch)
    top, where = patches.max(dim=-1, keepdim=True)
    extra = torch.zeros_like(patches).scatter_(-1, where, top * bonus)
    extra = extra.view(batch, prows, pcols, patch, patch).permute(0, 1, 3, 2, 4)
    out = image.clone()
    out[:, : prows * patch, : pcols * patch] += extra.reshape(batch, prows * patch, pcols * patch)
    return out.view(batch, rows * cols)


def importance(attention: torch.Tensor, staleness: torch.Tensor, grid: tuple[int, int], *,
               staleness_weight: float, staleness_threshold: int, patch: int, bonus: float) -> torch.Tensor:
    """ProCache's token score: attention received + weighted staleness, then the spatial bonus."""
    score = attention + staleness.to(attention.dtype) * (staleness_weight / staleness_threshold)
    return spatial_bonus(score, grid, patch, bonus)


def top_tokens(score: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` indices of the ``k`` highest-scoring tokens of each sample."""
    return score.topk(k, dim=-1, sorted=False).indices

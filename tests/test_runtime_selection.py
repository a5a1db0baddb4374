"""Token scoring and selection (pure functions) and the choice of steps that need scores."""

from __future__ import annotations

import pytest
import torch

from procache_opt.runtime import selection
from procache_opt.runtime.context import score_steps
from procache_opt.runtime.selection import attention_received, importance, spatial_bonus, top_tokens
from procache_opt.schedule import Action, SelectiveConfig


def _qk(batch: int = 2, heads: int = 3, tokens: int = 36, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch, heads, tokens, dim, generator=generator),
            torch.randn(batch, heads, tokens, dim, generator=generator))


def _dense_received(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """The authors' score: column sums of the full softmaxed map (head mean), L2-normalised."""
    attn_map = ((query @ key.transpose(-1, -2)) * scale).softmax(dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(attn_map.sum(dim=1), p=2, dim=1)


def _authors_local_selection_with_bonus(score: torch.Tensor, bonus_ratio: float, grid_size: int) -> torch.Tensor:
    """Oracle: ``local_selection_with_bonus`` from ProCache's DiT-ProCache/cache_functions/cache_cutfresh.py."""
    batch_size, num_tokens = score.shape
    image_size = int(num_tokens**0.5)
    block_size = grid_size * grid_size
    s = score.view(batch_size, image_size // grid_size, grid_size, image_size // grid_size, grid_size)
    s = s.permute(0, 1, 3, 2, 4).contiguous().view(batch_size, -1, block_size)
    max_scores, max_indices = s.max(dim=-1, keepdim=True)
    mask = torch.zeros_like(s)
    mask.scatter_(-1, max_indices, 1)
    s = s + (mask * max_scores * bonus_ratio)
    s = s.view(batch_size, image_size // grid_size, image_size // grid_size, grid_size, grid_size)
    return s.permute(0, 1, 3, 2, 4).contiguous().view(batch_size, num_tokens)


def test_attention_received_matches_dense_column_sums() -> None:
    query, key = _qk()
    torch.testing.assert_close(attention_received(query, key, 0.3, query_stride=1), _dense_received(query, key, 0.3))


def test_attention_received_chunks_without_changing_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key = _qk()
    expected = attention_received(query, key, 0.3, query_stride=1)
    monkeypatch.setattr(selection, "SCORE_CHUNK_ELEMENTS", 2 * 3 * 36 * 5)  # 5 queries per chunk
    torch.testing.assert_close(attention_received(query, key, 0.3, query_stride=1), expected)


def test_attention_received_uses_at_most_max_queries_strided() -> None:
    query, key = _qk()
    stride = SelectiveConfig(score_max_queries=10).score_query_stride(36)
    assert stride == 4 and len(range(0, 36, stride)) <= 10
    assert SelectiveConfig(score_max_queries=1024).score_query_stride(36) == 1
    expected = _dense_received(query[:, :, ::stride], key, 0.3)
    torch.testing.assert_close(attention_received(query, key, 0.3, query_stride=stride), expected)


def test_spatial_bonus_matches_authors_code() -> None:
    score = torch.rand(3, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(spatial_bonus(score, (8, 8), 2, 0.6), _authors_local_selection_with_bonus(score, 0.6, 2))


def test_spatial_bonus_on_rectangular_grid_skips_incomplete_patches() -> None:
    score = torch.arange(15, dtype=torch.float32).view(1, 15)  # 3 x 5 grid: one row and column left over
    out = spatial_bonus(score, (3, 5), 2, 0.5).view(3, 5)
    bonus = out - score.view(3, 5)
    # full patches cover rows 0-1, cols 0-3; their maxima are at (1, 1) and (1, 3)
    expected = torch.zeros(3, 5)
    expected[1, 1], expected[1, 3] = 0.5 * 6, 0.5 * 8
    torch.testing.assert_close(bonus, expected)


def test_spatial_bonus_rejects_a_wrong_grid() -> None:
    with pytest.raises(ValueError, match="does not match 10 tokens"):
        spatial_bonus(torch.zeros(1, 10), (3, 3), 2, 0.6)


def test_importance_adds_weighted_staleness_before_the_bonus() -> None:
    attention = torch.zeros(1, 4)
    staleness = torch.tensor([[0, 1, 2, 4]], dtype=torch.int32)
    out = importance(attention, staleness, (2, 2), staleness_weight=0.25, staleness_threshold=4, patch=2, bonus=0.6)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0625, 0.125, 0.25 * 1.6]]))


def test_top_tokens_returns_the_k_best_of_each_sample() -> None:
    score = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.1, 0.7]])
    assert [sorted(row) for row in top_tokens(score, 2).tolist()] == [[1, 2], [0, 3]]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ([1, 0, 2, 1, 0, 0, 1, 2], [1, 0, 0, 0, 0, 0, 1, 0]),
        ([1, 1, 0, 1], [0, 0, 0, 0]),
        ([1, 2, 1, 2], [1, 0, 1, 0]),
    ],
)
def test_scores_are_needed_only_before_selective_steps(pattern: list[int], expected: list[int]) -> None:
    assert score_steps([Action(a) for a in pattern]) == tuple(bool(e) for e in expected)

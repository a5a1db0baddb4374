"""Where the multiply-accumulates of a DiT / PixArt-α forward go, and what each schedule action keeps of them.

Each term mirrors a computation in diffusers 0.42: ``BasicTransformerBlock`` and ``FeedForward``
(``models/attention.py``), ``DiTTransformer2DModel.forward``, ``PixArtTransformer2DModel.forward``,
``AdaLayerNormZero`` and ``AdaLayerNormSingle`` (``models/normalization.py``), ``PatchEmbed``,
``TimestepEmbedding`` and ``PixArtAlphaTextProjection`` (``models/embeddings.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from procache_opt.costs import StepCosts
from procache_opt.flops._spec import FF_IN_FACTOR, ModelSpec, resolve_spec
from procache_opt.schedule import Action, SelectiveConfig, split_layer

__all__ = ["ACTIONS", "MODULE_KINDS", "costs_from_tables", "forward_batch", "forward_macs", "residual_cache_costs",
           "step_costs", "step_tables"]

MODULE_KINDS = ("attn", "cross_attn", "ff", "adaln", "norm", "embed", "final", "scoring", "selective_ff")
_ALWAYS = ("adaln", "norm", "embed", "final")  # what a REUSE step still computes
_TIMESTEP_FEATURES = 256  # sinusoidal features fed to every TimestepEmbedding (embeddings.py, ``Timesteps(256)``)
# Per-token work of ProCache's O(N) selection score in a block that refreshes tokens on a SELECTIVE step: age
# the staleness counter, add the weighted staleness, the 2x2 patch maximum and its bonus (Section 3.3).
_SCORE_OPS_PER_TOKEN = 4
_DEFAULT_SELECTIVE = SelectiveConfig()
ACTIONS = (Action.FULL, Action.REUSE, Action.SELECTIVE, Action.DEEP, Action.SHALLOW)  # StepCosts' field order
_BLOCK_KINDS = ("attn", "cross_attn", "ff")  # per-block work, the same in every block


def _matmul(rows: int, *widths: int) -> int:
    """MACs of ``rows`` vectors through a chain of linear layers ``widths[0] -> widths[1] -> ...``."""
    return sum(rows * a * b for a, b in zip(widths, widths[1:], strict=False))


def _attention(queries: int, keys: int, width: int, kv_in: int) -> int:
    """Q and output projections, K and V projections, then the ``Q K^T`` and ``A V`` products."""
    return 2 * _matmul(queries, width, width) + 2 * _matmul(keys, kv_in, width) + 2 * queries * keys * width


def _ff_per_token(spec: ModelSpec) -> int:
    inner = 4 * spec.width  # FeedForward's mult=4; DiT and PixArt pass no ff_inner_dim
    return spec.width * inner * FF_IN_FACTOR[spec.activation_fn] + inner * spec.width


def forward_macs(spec: ModelSpec) -> dict[str, int]:
    """MACs of one FULL transformer forward of one sample, by module kind."""
    n, d, layers = spec.num_tokens, spec.width, spec.num_layers
    timestep_mlp = _matmul(1, _TIMESTEP_FEATURES, d, d)  # TimestepEmbedding: linear_1, SiLU, linear_2
    # LayerNorm at fvcore's 4 MACs per element, 5 with an affine; the adaLN and output norms have none.
    layer_norm, configured_norm = 4 * n * d, (5 if spec.norm_affine else 4) * n * d
    macs = dict.fromkeys(MODULE_KINDS, 0)
    macs["embed"] = n * spec.in_channels * spec.patch_size**2 * d  # PatchEmbed's strided conv
    macs["attn"] = layers * _attention(n, n, d, d)
    macs["ff"] = layers * n * _ff_per_token(spec)
    proj_out = _matmul(n, d, spec.patch_size**2 * spec.out_channels)
    if spec.family == "dit":
        # Each block's AdaLayerNormZero embeds timestep + label itself (the label is a table lookup), then
        # D -> 6D; the output layer re-runs block 0's embedding and a D -> 2D linear (dit_transformer_2d.py).
        macs["adaln"] = layers * (timestep_mlp + _matmul(1, d, 6 * d))
        macs["final"] = timestep_mlp + _matmul(1, d, 2 * d) + proj_out
        # norm1 (adaLN-Zero: LayerNorm + modulate), gated attention add, norm3 + modulate, gated ff add.
        macs["norm"] = layers * (layer_norm + configured_norm + 4 * n * d) + layer_norm + n * d
    else:
        assert spec.cross_attention_dim is not None  # checked by ModelSpec
        size_mlp = _matmul(3, _TIMESTEP_FEATURES, d // 3, d // 3) if spec.use_additional_conditions else 0
        # AdaLayerNormSingle, shared by all blocks: timestep (+ resolution x2, aspect ratio) MLPs, D -> 6D.
        macs["adaln"] = timestep_mlp + size_mlp + _matmul(1, d, 6 * d)
        t = spec.text_length
        macs["embed"] += _matmul(t, spec.caption_channels, d, d) if spec.caption_channels else 0
        macs["cross_attn"] = layers * _attention(n, t, d, spec.cross_attention_dim)
        macs["final"] = proj_out
        # Per block: scale_shift_table + timestep (6D), norm1 + modulate, gated attn add, cross-attn add,
        # norm2 + modulate, gated ff add; then the output table add (2D), norm_out and its modulation.
        macs["norm"] = layers * (6 * d + 2 * configured_norm + 5 * n * d) + 2 * d + layer_norm + n * d
    return macs


def _selective_extra(spec: ModelSpec, step: int, num_steps: int, selective: SelectiveConfig) -> dict[str, int]:
    """What a SELECTIVE step adds to REUSE for one sample: deep blocks' token subset and scoring.

    Mirrors ``procache_opt.runtime``: the fresh-token counts are ``SelectiveConfig.num_fresh_tokens``; the
    O(N) score is computed only in blocks that refresh tokens. The attention-received score is taken at the
    preceding FULL step from ``q`` and ``k``, over every ``stride``-th query (``SelectiveConfig.score_query_stride``)
    against all keys, then summed over queries. It is charged here, to each SELECTIVE step it serves, so that
    costs stay additive per step (``StepCosts``); a segment with ``k`` SELECTIVE steps is thus charged ``k - 1``
    times too often (see ``docs/flops.md`` for how little that is).
    """
    n, layers = spec.num_tokens, spec.num_layers
    queries = -(-n // selective.score_query_stride(n))
    fresh = [selective.num_fresh_tokens(n, step, num_steps, layer, layers)
             for layer in range(selective.deep_start(layers), layers)]
    attention_received = queries * n * spec.width + spec.num_heads * queries * n
    scoring = len(fresh) * attention_received + _SCORE_OPS_PER_TOKEN * n * sum(k > 0 for k in fresh)
    return {"selective_ff": sum(fresh) * _ff_per_token(spec), "scoring": scoring}


def step_tables(
    spec: ModelSpec, num_steps: int, selective: SelectiveConfig, forward_batch: int, depth_split: float = 0.5
) -> dict[Action, list[dict[str, int]]]:
    """MACs by module kind of one whole denoising step, for every action and step index.

    REUSE keeps the work of :data:`_ALWAYS` (embeddings, modulation, norms, gated adds, output layer) and
    drops attention, cross-attention and feed-forward; SELECTIVE is REUSE plus :func:`_selective_extra`;
    DEEP and SHALLOW are REUSE plus the attention, cross-attention and feed-forward of their block group
    (blocks are identical, so a group of ``k`` blocks costs ``k / num_layers`` of them); a one-block model has
    neither.
    """
    if num_steps < 1:
        raise ValueError(f"num_inference_steps={num_steps!r} is out of range; allowed: >= 1")
    full = {k: forward_batch * v for k, v in forward_macs(spec).items()}
    reuse = {k: v if k in _ALWAYS else 0 for k, v in full.items()}
    tables: dict[Action, list[dict[str, int]]] = {Action.FULL: [full] * num_steps, Action.REUSE: [reuse] * num_steps}
    tables[Action.SELECTIVE] = [
        {**reuse, **{k: forward_batch * v for k, v in _selective_extra(spec, t, num_steps, selective).items()}}
        for t in range(num_steps)
    ]
    layers = spec.num_layers
    if layers < 2:  # one block forms no depth groups: no DEEP or SHALLOW steps to count
        return tables
    split = split_layer(depth_split, layers)
    for action, group in ((Action.SHALLOW, split), (Action.DEEP, layers - split)):
        row = {**reuse, **{k: full[k] // layers * group for k in _BLOCK_KINDS}}
        tables[action] = [row] * num_steps
    return tables


def step_costs(
    model_or_config: Any,
    num_inference_steps: int,
    selective: SelectiveConfig = _DEFAULT_SELECTIVE,
    guidance: bool = True,
    batch_size: int = 1,
    depth_split: float = 0.5,
) -> StepCosts:
    """MACs of one whole denoising step for FULL, REUSE and SELECTIVE at each step index.

    The schedule space and the strategies take FLOPs ratios from this table (``StepCosts.ratio``), and
    :func:`~procache_opt.flops.count_flops` totals a schedule with it, so both agree by construction.

    Args:
        model_or_config: A diffusers DiT / PixArt transformer, a pipeline (its ``.transformer``), a config
            mapping, a :class:`ModelSpec` or a preset name (``procache_opt.flops.PRESETS``).
        num_inference_steps: Denoising steps of one generation.
        selective: Settings of SELECTIVE steps.
        guidance: Batched classifier-free guidance: every forward runs 2 samples per image.
        batch_size: Images per generation.
        depth_split: ``Schedule.depth_split`` of the per-depth schedules to count (DEEP and SHALLOW steps).

    Example:
        >>> costs = step_costs("dit-xl-2-256", 50)
        >>> round(costs.ratio([1, 0] * 25), 3)
        0.502
    """
    spec = resolve_spec(model_or_config)
    tables = step_tables(spec, num_inference_steps, selective, forward_batch(guidance, batch_size), depth_split)
    return costs_from_tables(tables, depth_split)


def costs_from_tables(tables: Mapping[Action, list[dict[str, int]]], depth_split: float = 0.5) -> StepCosts:
    """Sum :func:`step_tables` over module kinds: the one place per-kind counts become per-step costs."""
    full, reuse, selective, deep, shallow = (tuple(sum(row.values()) for row in tables[a]) if a in tables else None
                                             for a in ACTIONS)
    return StepCosts(full=full, reuse=reuse, selective=selective, deep=deep, shallow=shallow, depth_split=depth_split)


def forward_batch(guidance: bool, batch_size: int) -> int:
    """Samples per transformer forward: diffusers' DiT and PixArt pipelines batch the unconditional branch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is out of range; allowed: >= 1")
    return batch_size * (2 if guidance else 1)


def residual_cache_costs(model_or_config: Any, num_inference_steps: int, computed_blocks: int, guidance: bool = True,
                         batch_size: int = 1) -> StepCosts:
    """MACs per step when a cached step runs only ``computed_blocks`` blocks and adds the others' cached residual.

    That is how cache-dit's DBCache executes a cached step (its ``Fn_compute_blocks`` first and
    ``Bn_compute_blocks`` last blocks run; the middle ones are skipped whole, adaLN included): a REUSE step keeps
    the patch embedding and the output layer, plus ``computed_blocks / num_layers`` of the per-block work. PixArt's
    adaLN-single runs once per forward, so it is kept whole. SELECTIVE, DEEP and SHALLOW have no cache-dit
    equivalent; SELECTIVE is charged as FULL (never cheaper than what it stands for), the others are absent.

    Example:
        >>> costs = residual_cache_costs("dit-xl-2-256", 50, computed_blocks=1)
        >>> round(costs.reuse[0] / costs.full[0], 3)
        0.036
    """
    spec = resolve_spec(model_or_config)
    if not 0 <= computed_blocks <= spec.num_layers:
        raise ValueError(f"computed_blocks={computed_blocks!r} is out of range; allowed: 0 <= computed_blocks <= "
                         f"{spec.num_layers} (the model's blocks)")
    full = {k: forward_batch(guidance, batch_size) * v for k, v in forward_macs(spec).items()}
    whole = ("embed", "final") + (("adaln",) if spec.family == "pixart" else ())
    cached = sum(v if k in whole else v * computed_blocks / spec.num_layers for k, v in full.items())
    steps = num_inference_steps
    whole_step = sum(full.values())
    return StepCosts(full=(whole_step,) * steps, reuse=(cached,) * steps, selective=(whole_step,) * steps)

"""What REUSE and SELECTIVE steps compute, checked against unpatched twin models.

The reference for a cached step is the unpatched model with plain PyTorch forward hooks that replace branch
outputs by the ones recorded at the FULL step: the block's own forward then applies the *current* step's
modulation, which is FORA's and ProCache's reuse rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from procache_opt import Schedule, SelectiveConfig
from procache_opt.runtime import apply, hooks
from procache_opt.runtime.selection import attention_received, importance, top_tokens
from procache_opt.testing import TINY_CAPTION_CHANNELS, tiny_dit_transformer, tiny_pixart_transformer

ALL_TOKENS = SelectiveConfig(fresh_ratio=1.0, mlp_factor=1.0, step_weight=0.0, layer_weight=0.0)
NO_TOKENS = SelectiveConfig(fresh_ratio=0.0)


def _dit_call(seed: int, t: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 4, 16, 16, generator=generator),
            "timestep": torch.tensor([t, t]), "class_labels": torch.tensor([5, 1000])}


def _pixart_call(seed: int, t: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 4, 32, 32, generator=generator), "timestep": torch.tensor([t, t]),
            "encoder_hidden_states": torch.randn(2, 8, TINY_CAPTION_CHANNELS, generator=generator),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


FAMILIES = {"dit": (tiny_dit_transformer, _dit_call), "pixart": (tiny_pixart_transformer, _pixart_call)}


def _branches(model: nn.Module) -> Iterator[tuple[int, str, nn.Module]]:
    for layer, block in enumerate(model.transformer_blocks):
        for name in ("attn1", "attn2", "ff"):
            if getattr(block, name, None) is not None:
                yield layer, name, getattr(block, name)


@contextmanager
def _forward_hooks(model: nn.Module, hook: Callable[[int, str], Callable | None]) -> Iterator[None]:
    handles = []
    for layer, name, module in _branches(model):
        fn = hook(layer, name)
        if fn is not None:
            handles.append(module.register_forward_hook(fn))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _record(model: nn.Module, call: dict[str, Any]) -> dict[tuple[int, str], torch.Tensor]:
    """Branch outputs of an unpatched forward."""
    recorded: dict[tuple[int, str], torch.Tensor] = {}

    def hook(layer: int, name: str) -> Callable:
        return lambda module, args, output: recorded.__setitem__((layer, name), output)

    with _forward_hooks(model, hook):
        model(**call)
    return recorded


def _replaced(model: nn.Module, call: dict[str, Any], outputs: dict, keep: Callable[[int, str], bool]) -> torch.Tensor:
    """Unpatched forward where every branch not kept returns its recorded output."""
    def hook(layer: int, name: str) -> Callable | None:
        return None if keep(layer, name) else (lambda module, args, output: outputs[layer, name])

    with _forward_hooks(model, hook):
        return model(**call).sample


def _cached_run(model: nn.Module, schedule: Schedule, calls: list[dict[str, Any]], fast: bool = True) -> torch.Tensor:
    with apply(model, schedule, fast=fast) as handle:
        for step, call in enumerate(calls):
            with handle.at_step(step):
                out = model(**call).sample
    return out


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_reuse_applies_the_current_modulation_to_cached_branches(family: str, fast: bool) -> None:
    """Through the branch hooks (fast=False) bit for bit; skipping the block (fast=True) adds the same gated
    outputs with fused multiply-adds, so within float rounding."""
    build, make_call = FAMILIES[family]
    calls = [make_call(0, 900), make_call(1, 500)]
    out = _cached_run(build(), Schedule.from_pattern([1, 0]), calls, fast=fast)
    twin = build()
    expected = _replaced(twin, calls[1], _record(twin, calls[0]), keep=lambda layer, name: False)
    torch.testing.assert_close(out, expected, rtol=1e-6 if fast else 0, atol=1e-6 if fast else 0)
    assert not torch.allclose(out, twin(**calls[1]).sample)  # the step really was reused


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_selective_with_all_tokens_recomputes_deep_feed_forward_only(family: str) -> None:
    build, make_call = FAMILIES[family]
    calls = [make_call(0, 900), make_call(1, 500)]
    out = _cached_run(build(), Schedule.from_pattern([1, 2], selective=ALL_TOKENS), calls)
    twin = build()
    deep = ALL_TOKENS.deep_start(len(twin.transformer_blocks))
    expected = _replaced(twin, calls[1], _record(twin, calls[0]),
                         keep=lambda layer, name: layer >= deep and name == "ff")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("fast", [False, True])
def test_selective_with_no_tokens_equals_reuse(fast: bool) -> None:
    """Equal bit for bit through the branch hooks; with fast=True the REUSE step skips the deep blocks that
    the SELECTIVE step runs, so within float rounding."""
    calls = [_dit_call(0, 900), _dit_call(1, 500)]
    reuse = _cached_run(tiny_dit_transformer(), Schedule.from_pattern([1, 0]), calls, fast=fast)
    selective = _cached_run(tiny_dit_transformer(), Schedule.from_pattern([1, 2], selective=NO_TOKENS), calls,
                            fast=fast)
    torch.testing.assert_close(selective, reuse, rtol=1e-6 if fast else 0, atol=1e-6 if fast else 0)


@torch.no_grad()
def test_selective_refreshes_the_most_important_tokens() -> None:
    """Deep feed-forward rows change for exactly the top-scored tokens, to their freshly computed values."""
    config = SelectiveConfig()
    model, twin = tiny_dit_transformer(), tiny_dit_transformer()
    num_layers, deep = len(model.transformer_blocks), config.deep_start(4)
    calls = [_dit_call(0, 900), _dit_call(1, 500)]
    ff_io: list[tuple[torch.Tensor, torch.Tensor]] = []
    model.transformer_blocks[deep].ff.register_forward_hook(lambda m, args, out: ff_io.append((args[0], out.clone())))
    # fast=False: the feed-forward module sees every token here; the fast path sends it the selected ones only
    # (tests/test_runtime_fast.py checks that both agree)
    _cached_run(model, Schedule.from_pattern([1, 2], selective=config), calls, fast=False)
    (_, full_out), (selective_in, selective_out) = ff_io

    # expected scores: attention received at the FULL step, no staleness yet, spatial bonus on the 8x8 grid
    qk = {}
    attn = twin.transformer_blocks[deep].attn1
    for name in ("to_q", "to_k"):
        getattr(attn, name).register_forward_hook(lambda m, a, out, name=name: qk.__setitem__(name, out))
    twin(**calls[0])
    query, key = (qk[name].view(2, 64, attn.heads, -1).transpose(1, 2) for name in ("to_q", "to_k"))
    score = importance(attention_received(query, key, attn.scale), torch.zeros(2, 64), (8, 8),
                       staleness_weight=0.25, staleness_threshold=4, patch=2, bonus=0.6)
    count = config.num_fresh_tokens(64, 1, 2, deep, num_layers)
    assert count > 0
    expected_rows = top_tokens(score, count).sort().values

    changed = (selective_out != full_out).any(dim=-1)
    assert changed.sum(dim=1).tolist() == [count, count]
    assert torch.equal(changed.nonzero()[:, 1].view(2, count), expected_rows)
    fresh = twin.transformer_blocks[deep].ff(selective_in)
    torch.testing.assert_close(selective_out[changed], fresh[changed], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_scores_are_computed_only_in_deep_blocks_before_selective_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = hooks.attention_received

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(hooks, "attention_received", counting)
    model = tiny_dit_transformer(num_layers=8)
    pattern = [1, 0, 2, 1, 0, 0, 1, 2]  # FULL steps 0 and 6 precede SELECTIVE steps, step 3 does not
    _cached_run(model, Schedule.from_pattern(pattern), [_dit_call(s, 900 - 100 * s) for s in range(8)])
    deep_blocks = 8 - SelectiveConfig().deep_start(8)
    assert len(calls) == 2 * deep_blocks


@torch.no_grad()
def test_staleness_counts_selective_steps_since_refresh() -> None:
    """A refreshed token restarts at 0; others age by one per selective step (the authors' cache_index)."""
    model = tiny_dit_transformer()
    config = SelectiveConfig(step_weight=0.0)  # ToCa's step factor would refresh nothing this early
    schedule = Schedule.from_pattern([1, 2, 2, 1], selective=config)
    with apply(model, schedule) as handle:
        ff_hook = model.transformer_blocks[3].ff._diffusers_hook.get_hook("procache_branch")
        seen = []
        for step in range(3):
            with handle.at_step(step):
                model(**_dit_call(step, 900 - 100 * step))
            seen.append(ff_hook.cache.tokens(handle.state).staleness.clone())
    assert torch.equal(seen[0], torch.zeros(2, 64, dtype=torch.int32))
    count = config.num_fresh_tokens(64, 1, 4, 3, 4)
    assert (seen[1] == 0).sum(dim=1).tolist() == [count, count] and set(seen[1].unique().tolist()) == {0, 1}
    assert set(seen[2].unique().tolist()) <= {0, 1, 2} and (seen[2] == 2).any()


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_forecast_extrapolates_branch_outputs_through_the_last_two_full_steps(family: str) -> None:
    """forecast_order=1: at step 3 after FULL steps 0 and 1, each branch returns o1 + 2 * (o1 - o0)."""
    build, make_call = FAMILIES[family]
    calls = [make_call(s, 900 - 200 * s) for s in range(3)] + [make_call(3, 300)]
    out = _cached_run(build(), Schedule.from_pattern([1, 1, 0, 0], forecast_order=1), calls)
    twin = build()
    first, second = _record(twin, calls[0]), _record(twin, calls[1])
    forecast = {key: second[key] + 2 * (second[key] - first[key]) for key in second}
    expected = _replaced(twin, calls[3], forecast, keep=lambda layer, name: False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    plain = _cached_run(build(), Schedule.from_pattern([1, 1, 0, 0]), calls)
    assert not torch.allclose(out, plain)  # the forecast is not the cached output


@torch.no_grad()
def test_forecast_needs_two_full_steps_and_moves_refreshed_tokens_along_the_slope() -> None:
    """Before a second FULL step the forecast is the cache. A SELECTIVE step's refreshed tokens are kept: the
    next step forecasts them from their fresh values along the slope of the last two FULL steps."""
    calls = [_dit_call(s, 900 - 100 * s) for s in range(4)]
    forecast, plain = (Schedule.from_pattern([1, 0, 0], forecast_order=order) for order in (1, 0))
    assert torch.equal(_cached_run(tiny_dit_transformer(), forecast, calls[:3]),
                       _cached_run(tiny_dit_transformer(), plain, calls[:3]))

    model = tiny_dit_transformer()
    deep = ALL_TOKENS.deep_start(len(model.transformer_blocks))
    outs: list[torch.Tensor] = []
    model.transformer_blocks[deep].ff.register_forward_hook(lambda m, args, out: outs.append(out.clone()))
    # fast=False: the branch returns its forecast on the REUSE step, where the fast path skips the block.
    _cached_run(model, Schedule.from_pattern([1, 1, 2, 0], selective=ALL_TOKENS, forecast_order=1), calls, fast=False)
    slope = outs[1] - outs[0]
    assert not torch.allclose(outs[2], outs[1] + slope)  # step 2 recomputed every token
    torch.testing.assert_close(outs[3], outs[2] + slope, rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize(("action", "deep_computes"), [(3, True), (4, False)])
def test_per_depth_steps_compute_one_block_group_and_reuse_the_other(action: int, deep_computes: bool) -> None:
    """DEEP (3): blocks from ``split_layer`` on compute, the others reuse; SHALLOW (4): the reverse."""
    calls = [_dit_call(0, 900), _dit_call(1, 500)]
    schedule = Schedule.from_pattern([1, action], depth_split=0.5)
    out = _cached_run(tiny_dit_transformer(), schedule, calls)
    twin = tiny_dit_transformer()
    split = schedule.split_layer(len(twin.transformer_blocks))
    expected = _replaced(twin, calls[1], _record(twin, calls[0]),
                         keep=lambda layer, name: (layer >= split) == deep_computes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    reuse = _cached_run(tiny_dit_transformer(), Schedule.from_pattern([1, 0]), calls)
    assert not torch.allclose(out, reuse)

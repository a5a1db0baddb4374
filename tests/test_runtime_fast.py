"""The fast path of ``apply(..., fast=True)``: conditioning tables, skipped blocks, memory, lookups.

The reference is the branch-hook path (``fast=False``), which ``tests/test_runtime_semantics.py`` checks against
unpatched twin models bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo.testing
from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
from torch import nn

from procache_opt import Schedule, SelectiveConfig
from procache_opt.runtime import apply, context
from procache_opt.runtime.context import StepState
from procache_opt.runtime.memory import cache_memory
from procache_opt.runtime.modulation import memo_for
from procache_opt.testing import TINY_CAPTION_CHANNELS, guided_ddim_loop, tiny_prompt_embeds

STEPS = 10
SCHEDULES = {
    "FORA": Schedule.from_intervals([3, 3, 2, 2]),
    "forecast": Schedule.from_pattern([1, 1, 0, 0, 1, 0, 0, 1, 0, 0], forecast_order=1),
    "selective": Schedule.from_intervals([3, 3, 2, 2]).inject_selective(),
    "selective + forecast": Schedule.from_pattern([1, 1, 0, 2, 0, 1, 0, 2, 1, 0], forecast_order=1),
    "per-depth": Schedule.from_pattern([1, 0, 3, 0, 1, 4, 0, 3, 1, 0]),
}


def _dit(pipe: Any) -> torch.Tensor:
    return pipe(class_labels=[1, 7], generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                output_type="pt").images


def _pixart(pipe: Any) -> torch.Tensor:
    return pipe(**tiny_prompt_embeds(2), generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                output_type="latent").images


def _both_paths(pipe: Any, schedule: Schedule, run: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor, ...]:
    outputs = []
    for fast in (False, True):
        with apply(pipe, schedule, fast=fast):
            outputs.append(run(pipe))
    return tuple(outputs)


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@torch.no_grad()
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_fast_path_equals_the_branch_hook_path_on_dit(name: str, tiny_dit_pipeline: Any) -> None:
    reference, fast = _both_paths(tiny_dit_pipeline, SCHEDULES[name], _dit)
    assert _relative(fast, reference) < 1e-5
    with apply(tiny_dit_pipeline, Schedule.full(STEPS)):
        assert _relative(_dit(tiny_dit_pipeline), reference) > 1e-3  # the schedule really reused


@torch.no_grad()
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_fast_path_equals_the_branch_hook_path_on_pixart(name: str, tiny_pixart_pipeline: Any) -> None:
    reference, fast = _both_paths(tiny_pixart_pipeline, SCHEDULES[name], _pixart)
    assert _relative(fast, reference) < 1e-5


@torch.no_grad()
def test_fast_path_equals_the_branch_hook_path_on_pixart_sigma(tiny_pixart_pipeline: Any) -> None:
    sigma = PixArtSigmaPipeline(**tiny_pixart_pipeline.components)
    reference, fast = _both_paths(sigma, SCHEDULES["selective + forecast"], _pixart)
    assert _relative(fast, reference) < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("unbatched", [False, True])
def test_fast_path_with_unbatched_guidance_keeps_a_table_per_branch(unbatched: bool,
                                                                    tiny_dit_transformer: nn.Module) -> None:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    runs = {}
    for fast in (False, True):
        with apply(tiny_dit_transformer, SCHEDULES["selective + forecast"], scheduler=scheduler, fast=fast) as handle:
            runs[fast] = guided_ddim_loop(tiny_dit_transformer, scheduler, unbatched=unbatched)
            assert handle.memo is None or handle.memo.nbytes() == 0  # freed after the last step
    assert _relative(runs[True], runs[False]) < 1e-5


def _counting(modules: dict[str, nn.Module]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda *_, name=name: counts.update([name]))
    return counts


@torch.no_grad()
def test_reused_blocks_are_skipped_and_modulation_is_computed_once_per_generation(tiny_dit_pipeline: Any) -> None:
    transformer = tiny_dit_pipeline.transformer
    block = transformer.transformer_blocks[1]
    # the branches' inner layers run only when they compute; the branch modules are called on every step of
    # the branch-hook path (and return their cache)
    counts = _counting({"norm": block.norm1.norm, "attn": block.attn1.to_q, "ff": block.ff.net[0],
                        "attn branch": block.attn1, "emb": block.norm1.emb.timestep_embedder})
    schedule = Schedule.from_intervals([3, 3, 2, 2])
    for fast in (False, True):
        counts.clear()
        with apply(tiny_dit_pipeline, schedule, fast=fast):
            _dit(tiny_dit_pipeline)
        full = schedule.pattern.count(1)
        assert counts["attn"] == counts["ff"] == full
        assert counts["attn branch"] == (full if fast else STEPS)
        # the block's norm runs on reused steps only through the branch hooks (there on one token)
        assert counts["norm"] == (full if fast else STEPS)
        # the timestep MLP: once for the whole generation (T x B rows) instead of once per step
        assert counts["emb"] == (1 if fast else STEPS)


def _table_call(transformer: nn.Module, family: str, batch: int = 2) -> dict[str, Any]:
    timestep = torch.tensor(0).expand(batch)  # only its dtype matters: the tables use the scheduler's timesteps
    if family == "dit":
        return {"hidden_states": torch.randn(batch, 4, 16, 16), "class_labels": torch.tensor([5, 1000]),
                "timestep": timestep}
    return {"hidden_states": torch.randn(batch, 4, 32, 32), "encoder_hidden_states": torch.randn(batch, 8, 32),
            "timestep": timestep, "added_cond_kwargs": {"resolution": torch.tensor([[256.0, 256.0]] * batch),
                                  "aspect_ratio": torch.tensor([[1.0]] * batch)}}


@torch.no_grad()
@pytest.mark.parametrize("family", ["dit", "pixart"])
def test_conditioning_tables_equal_the_per_call_computation(family: str, tiny_dit_transformer: nn.Module) -> None:
    """Every row within 1e-6 relative of what the module computes for that step alone (fp32)."""
    if family == "dit":
        transformer = tiny_dit_transformer
    else:  # PixArt-α 1024 conditions on resolution and aspect ratio too
        torch.manual_seed(0)
        transformer = PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=48, sample_size=32, patch_size=4, caption_channels=TINY_CAPTION_CHANNELS,
            norm_num_groups=1, use_additional_conditions=True).eval()
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    state = StepState(Schedule.full(STEPS), len(transformer.transformer_blocks))
    memo = memo_for(transformer, state)
    call = _table_call(transformer, family)
    for step in (0, 4, STEPS - 1):
        state.begin(step, None)
        memo.prepare(call, scheduler.timesteps)
        timestep = scheduler.timesteps[step].expand(2)
        for key, module in memo.sites().items():
            expected = _per_call(key, module, transformer, timestep, call)
            actual = memo.current.get(key)
            for a, e in zip(actual if isinstance(actual, tuple) else (actual,),
                            expected if isinstance(expected, tuple) else (expected,), strict=True):
                assert a.shape == e.shape
                assert _relative(a, e) < 1e-6, key
        memo.finish()
        state.end()


def _per_call(key: str, module: nn.Module, transformer: nn.Module, timestep: torch.Tensor,
              call: dict[str, Any]) -> Any:
    if key.startswith("emb.") or key == "final":
        emb = transformer.transformer_blocks[0 if key == "final" else int(key[4:])].norm1.emb(
            timestep, call["class_labels"], hidden_dtype=torch.float32)
        return module(torch.nn.functional.silu(emb)) if key == "final" else emb
    if key.startswith("mod."):
        norm = transformer.transformer_blocks[int(key[4:])].norm1
        return module(norm.silu(norm.emb(timestep, call["class_labels"], hidden_dtype=torch.float32)))
    if key == "adaln":
        return module(timestep, call["added_cond_kwargs"], batch_size=2, hidden_dtype=torch.float32)
    return module(call["encoder_hidden_states"])


@torch.no_grad()
def test_tables_are_not_used_for_another_condition_in_the_same_generation(tiny_dit_transformer: nn.Module) -> None:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    state = StepState(Schedule.full(STEPS), len(tiny_dit_transformer.transformer_blocks))
    memo = memo_for(tiny_dit_transformer, state)
    call = _table_call(tiny_dit_transformer, "dit")
    state.begin(0, None)
    memo.prepare(call, scheduler.timesteps)
    assert memo.current.get("mod.0") is not None
    state.end()
    state.begin(1, None)
    memo.prepare({**call, "class_labels": torch.tensor([6, 1000])}, scheduler.timesteps)
    assert memo.current.get("mod.0") is None  # computed per call instead
    memo.prepare({**call, "class_labels": call["class_labels"].clone()}, scheduler.timesteps)
    assert memo.current.get("mod.0") is not None  # equal values, another tensor: still the table
    memo.prepare(call, None)  # handle.at_step: no scheduler, no table
    assert memo.current.get("mod.0") is None


def test_steps_are_read_from_timestep_views_without_comparing_values() -> None:
    timesteps = torch.tensor([900, 600, 300, 0])
    assert context._view_index(timesteps[2], timesteps) == 2
    assert context._view_index(timesteps[1][None].expand(4), timesteps) == 1
    assert context._view_index(timesteps[2].clone(), timesteps) is None
    assert context._view_index(torch.tensor(300), timesteps) is None
    strided = torch.tensor([9, 8, 7, 6, 5, 4])[::2]
    assert context._view_index(strided[2], strided) == 2


@torch.no_grad()
def test_pipelines_need_no_value_lookup(tiny_dit_pipeline: Any, tiny_pixart_pipeline: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    found: list[int | None] = []
    original = context._view_index
    monkeypatch.setattr(context, "_view_index", lambda *args: found.append(original(*args)) or found[-1])
    for pipe, run in ((tiny_dit_pipeline, _dit), (tiny_pixart_pipeline, _pixart)):
        found.clear()
        with apply(pipe, SCHEDULES["FORA"]):
            run(pipe)
        assert found == list(range(STEPS))


@torch.no_grad()
@pytest.mark.parametrize("family", ["dit", "pixart"])
def test_cache_memory_counts_what_the_runtime_holds(family: str, tiny_dit_pipeline: Any,
                                                    tiny_pixart_pipeline: Any) -> None:
    pipe, run = (tiny_dit_pipeline, _dit) if family == "dit" else (tiny_pixart_pipeline, _pixart)
    schedule = SCHEDULES["selective + forecast"]
    with apply(pipe, schedule) as handle:
        peak: Counter[str] = Counter()
        pipe.transformer.register_forward_hook(
            lambda *_: peak.update({k: max(0, v - peak[k]) for k, v in handle.cache_bytes().items()}))
        run(pipe)
    tokens = 64
    counted = cache_memory(pipe.transformer, schedule, batch=4, num_tokens=tokens, dtype=torch.float32,
                           caption_tokens=8 if family == "pixart" else 0)
    assert peak["caches"] == counted.caches
    assert peak["tables"] == counted.tables


@torch.no_grad()
@pytest.mark.parametrize(("dtype", "shrink", "tolerance"), [(torch.bfloat16, 2, 2e-2), (torch.float8_e4m3fn, 4, 2e-1)])
def test_caches_can_be_stored_in_a_smaller_dtype(dtype: torch.dtype, shrink: int, tolerance: float,
                                                 tiny_dit_pipeline: Any) -> None:
    schedule = SCHEDULES["selective + forecast"]
    sizes: dict[torch.dtype | None, int] = {}
    outputs = {}
    for cache_dtype in (None, dtype):
        with apply(tiny_dit_pipeline, schedule, cache_dtype=cache_dtype) as handle:
            hook = tiny_dit_pipeline.transformer.register_forward_hook(
                lambda *_, handle=handle, key=cache_dtype: sizes.__setitem__(
                    key, max(sizes.get(key, 0), handle.cache_bytes()["caches"])))
            outputs[cache_dtype] = _dit(tiny_dit_pipeline)
        hook.remove()
    scores = 4 * 64 * 8  # one deep block's float32 scores and int32 staleness stay as they are
    assert sizes[dtype] - scores == (sizes[None] - scores) // shrink
    assert outputs[dtype].dtype == outputs[None].dtype
    assert 0 < _relative(outputs[dtype], outputs[None]) < tolerance


@torch.no_grad()
def test_a_block_whose_output_is_observed_is_not_updated_in_place(tiny_dit_pipeline: Any) -> None:
    """A hook that keeps block outputs sees each step's own values, although later skipped blocks add in place."""
    seen: list[torch.Tensor] = []
    copies: list[torch.Tensor] = []

    def keep(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        seen.append(output)
        copies.append(output.clone())

    tiny_dit_pipeline.transformer.transformer_blocks[1].register_forward_hook(keep)
    with apply(tiny_dit_pipeline, Schedule.from_pattern([1] + [0] * (STEPS - 1))):
        _dit(tiny_dit_pipeline)
    assert len(seen) == STEPS
    assert all(torch.equal(a, b) for a, b in zip(seen, copies, strict=True))


def test_on_selective_steps_shallow_blocks_are_skipped_and_deep_ones_compute_only_their_fresh_tokens() -> None:
    from procache_opt.testing import tiny_dit_pipeline

    pipe = tiny_dit_pipeline()
    config = SelectiveConfig(step_weight=0.0)  # ToCa's step factor would refresh nothing this early
    blocks = pipe.transformer.transformer_blocks
    deep = config.deep_start(len(blocks))
    rows: dict[str, list[int]] = {"deep": [], "shallow": []}
    for name, layer in (("deep", deep), ("shallow", deep - 1)):
        blocks[layer].ff.net[0].register_forward_pre_hook(
            lambda m, args, name=name: rows[name].append(args[0].shape[1]))
    schedule = Schedule.from_pattern([1, 2] * (STEPS // 2), selective=config)
    with torch.no_grad(), apply(pipe, schedule):
        _dit(pipe)
    fresh = [config.num_fresh_tokens(64, step, STEPS, deep, len(blocks)) for step in range(1, STEPS, 2)]
    assert rows["shallow"] == [64] * (STEPS // 2)  # FULL steps only
    assert rows["deep"] == [n for pair in zip([64] * (STEPS // 2), fresh, strict=True) for n in pair if n > 0]
    assert 0 < fresh[-1] < 64


@torch.no_grad()
def test_a_compiled_transformer_follows_the_schedule_without_a_graph_per_step(tiny_dit_pipeline: Any) -> None:
    """torch.compile(pipe.transformer) with a schedule applied: outputs as in eager mode, and once two
    generations have run, a generation twice as long compiles nothing new (graphs per kind of step, not per
    step or per generation)."""
    pattern = [1, 0, 2, 0, 1, 0, 2, 1, 0, 0]
    short, long = (Schedule.from_pattern(pattern * repeat, forecast_order=1) for repeat in (2, 4))

    def run(schedule: Schedule) -> torch.Tensor:
        with apply(tiny_dit_pipeline, schedule):
            return tiny_dit_pipeline(class_labels=[1, 7], generator=torch.Generator().manual_seed(0),
                                     num_inference_steps=schedule.num_steps, output_type="pt").images

    eager = {schedule.num_steps: run(schedule) for schedule in (short, long)}
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    tiny_dit_pipeline.transformer = torch.compile(tiny_dit_pipeline.transformer, backend=counter)
    try:
        # a graph per step would exceed dynamo's recompile limit: fail instead of falling back to eager
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            compiled = {short.num_steps: [run(short), run(short)]}
            graphs = counter.frame_count
            compiled[long.num_steps] = [run(long)]
        assert counter.frame_count == graphs > 0
        for steps, outputs in compiled.items():
            for output in outputs:
                assert _relative(output, eager[steps]) < 1e-5
    finally:
        torch._dynamo.reset()

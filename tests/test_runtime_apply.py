"""``apply(target, schedule)`` on real diffusers pipelines: equality, removal, step tracking and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import DDIMScheduler, DiTPipeline, PixArtAlphaPipeline, PixArtSigmaPipeline
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from procache_opt import Schedule, ScheduleMismatchError, SelectiveConfig
from procache_opt.fingerprint import config_fingerprint, model_signature
from procache_opt.runtime import MissingStepContextError, UnsupportedModelError, apply
from procache_opt.testing import guided_ddim_loop, tiny_dit_transformer

STEPS = 8
CACHED = Schedule.from_pattern([1, 0, 2, 0, 1, 0, 2, 1])


def _dit(pipe: DiTPipeline, steps: int = STEPS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(class_labels=[1, 7], generator=generator, num_inference_steps=steps, output_type="pt").images


def _pixart(pipe: PixArtAlphaPipeline | PixArtSigmaPipeline, embeds: dict, steps: int = STEPS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(**embeds, generator=generator, num_inference_steps=steps, output_type="latent").images


def _hooked_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if hasattr(module, "_diffusers_hook") or "forward" in module.__dict__]


def _assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    assert ((actual - expected).norm() / expected.norm()).item() <= rtol


def test_all_full_schedule_equals_the_unpatched_dit_pipeline(tiny_dit_pipeline: DiTPipeline) -> None:
    reference = _dit(tiny_dit_pipeline)
    with apply(tiny_dit_pipeline, Schedule.full(STEPS)):
        _assert_relative_close(_dit(tiny_dit_pipeline), reference)


def test_all_full_schedule_equals_the_unpatched_pixart_pipeline(tiny_pixart_pipeline: PixArtAlphaPipeline,
                                                                tiny_prompt_embeds: dict) -> None:
    reference = _pixart(tiny_pixart_pipeline, tiny_prompt_embeds)
    with apply(tiny_pixart_pipeline, Schedule.full(STEPS)):
        _assert_relative_close(_pixart(tiny_pixart_pipeline, tiny_prompt_embeds), reference)


def test_pixart_sigma_pipeline_is_supported(tiny_pixart_pipeline: PixArtAlphaPipeline,
                                            tiny_prompt_embeds: dict) -> None:
    sigma = PixArtSigmaPipeline(**tiny_pixart_pipeline.components)
    sigma.set_progress_bar_config(disable=True)
    reference = _pixart(sigma, tiny_prompt_embeds)
    with apply(sigma, Schedule.full(STEPS)):
        _assert_relative_close(_pixart(sigma, tiny_prompt_embeds), reference)
    with apply(sigma, CACHED):
        assert not torch.allclose(_pixart(sigma, tiny_prompt_embeds), reference)


def test_caching_schedules_change_the_output_and_repeat_exactly(tiny_pixart_pipeline: PixArtAlphaPipeline,
                                                                tiny_prompt_embeds: dict) -> None:
    reference = _pixart(tiny_pixart_pipeline, tiny_prompt_embeds)
    with apply(tiny_pixart_pipeline, CACHED):
        first = _pixart(tiny_pixart_pipeline, tiny_prompt_embeds)
        second = _pixart(tiny_pixart_pipeline, tiny_prompt_embeds)
    assert not torch.allclose(first, reference)
    assert torch.equal(first, second)


def test_selective_differs_from_plain_reuse(tiny_dit_pipeline: DiTPipeline) -> None:
    reuse = Schedule.from_pattern([1, 0, 0, 0, 1, 0, 0, 1])
    outputs = []
    for schedule in (reuse, reuse.inject_selective()):
        with apply(tiny_dit_pipeline, schedule):
            outputs.append(_dit(tiny_dit_pipeline))
    assert not torch.allclose(*outputs)


@pytest.mark.parametrize("schedule", [Schedule.full(STEPS), CACHED])
def test_remove_restores_the_model_exactly(tiny_dit_pipeline: DiTPipeline, schedule: Schedule) -> None:
    transformer = tiny_dit_pipeline.transformer
    before = {name: tensor.clone() for name, tensor in transformer.state_dict().items()}
    reference = _dit(tiny_dit_pipeline)
    handle = apply(tiny_dit_pipeline, schedule)
    assert _hooked_modules(transformer)
    _dit(tiny_dit_pipeline)
    handle.remove()
    handle.remove()  # idempotent
    assert _hooked_modules(transformer) == []
    after = transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(_dit(tiny_dit_pipeline), reference)


def test_remove_keeps_hooks_registered_by_others(tiny_dit_transformer: nn.Module) -> None:
    class Double(ModelHook):
        def post_forward(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
            return output * 2

    ff = tiny_dit_transformer.transformer_blocks[0].ff
    registry = HookRegistry.check_if_exists_or_initialize(ff)
    registry.register_hook(Double(), "double")
    x = torch.randn(1, 3, ff.net[0].proj.in_features)
    expected = ff(x)
    with apply(tiny_dit_transformer, CACHED, scheduler=DDIMScheduler()):
        pass
    assert ff._diffusers_hook is registry and list(registry.hooks) == ["double"]
    torch.testing.assert_close(ff(x), expected, rtol=0, atol=0)


def test_context_manager_removes_on_error(tiny_dit_pipeline: DiTPipeline) -> None:
    with pytest.raises(ScheduleMismatchError, match="num_inference_steps=8"), apply(tiny_dit_pipeline, CACHED):
        _dit(tiny_dit_pipeline, steps=5)
    assert _hooked_modules(tiny_dit_pipeline.transformer) == []


def test_bare_transformer_needs_a_step_source(tiny_dit_transformer: nn.Module) -> None:
    latents = torch.randn(1, 4, 16, 16)
    with apply(tiny_dit_transformer, CACHED), pytest.raises(MissingStepContextError, match="scheduler=pipe.scheduler"):
        tiny_dit_transformer(latents, timestep=torch.tensor([10]), class_labels=torch.tensor([1]))


def test_timestep_not_in_the_scheduler_is_explained(tiny_dit_transformer: nn.Module) -> None:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    latents = torch.randn(1, 4, 16, 16)
    handle = apply(tiny_dit_transformer, CACHED, scheduler=scheduler)
    with handle, pytest.raises(MissingStepContextError, match="at_step"):
        tiny_dit_transformer(latents, timestep=torch.tensor([3]), class_labels=torch.tensor([1]))


@torch.no_grad()
def test_custom_loops_find_steps_from_the_scheduler_or_at_step(tiny_dit_transformer: nn.Module) -> None:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    with apply(tiny_dit_transformer, CACHED, scheduler=scheduler):
        by_timestep = guided_ddim_loop(tiny_dit_transformer, scheduler, unbatched=False)
    with apply(tiny_dit_transformer, CACHED) as handle:
        by_index = guided_ddim_loop(tiny_dit_transformer, scheduler, unbatched=False, handle=handle)
    # Only the scheduler lookup knows every step's timestep, so only it reads conditioning tables: equal up to
    # the rounding of their batched GEMMs.
    torch.testing.assert_close(by_timestep, by_index, rtol=0, atol=1e-4)


@torch.no_grad()
def test_unbatched_guidance_keeps_a_cache_per_branch(tiny_dit_transformer: nn.Module) -> None:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    with apply(tiny_dit_transformer, CACHED, scheduler=scheduler):
        batched = guided_ddim_loop(tiny_dit_transformer, scheduler, unbatched=False)
        unbatched = guided_ddim_loop(tiny_dit_transformer, scheduler, unbatched=True)
    torch.testing.assert_close(unbatched, batched, rtol=1e-4, atol=1e-4)


def test_branch_hooks_refuse_to_run_outside_a_transformer_call(tiny_dit_transformer: nn.Module) -> None:
    attn = tiny_dit_transformer.transformer_blocks[0].attn1
    with apply(tiny_dit_transformer, CACHED), pytest.raises(RuntimeError, match="outside a transformer call"):
        attn(torch.randn(1, 64, 32))


def test_applying_twice_is_refused(tiny_dit_pipeline: DiTPipeline) -> None:
    with apply(tiny_dit_pipeline, CACHED), pytest.raises(RuntimeError, match="already applied"):
        apply(tiny_dit_pipeline, CACHED)


def test_unsupported_block_is_named_with_the_supported_ones(tiny_dit_transformer: nn.Module) -> None:
    class MyBlock(nn.Module):
        pass

    tiny_dit_transformer.transformer_blocks[2] = MyBlock()
    with pytest.raises(UnsupportedModelError, match="MyBlock; supported: BasicTransformerBlock"):
        apply(tiny_dit_transformer, CACHED)
    assert _hooked_modules(tiny_dit_transformer) == []


def test_model_without_blocks_and_non_pipelines_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="Linear has no `transformer_blocks`"):
        apply(nn.Linear(2, 2), CACHED)
    with pytest.raises(TypeError, match="needs a diffusers pipeline"):
        apply("dit", CACHED)


def test_chunked_feed_forward_is_refused(tiny_dit_transformer: nn.Module) -> None:
    tiny_dit_transformer.transformer_blocks[1].set_chunk_feed_forward(8, dim=1)
    with pytest.raises(UnsupportedModelError, match=r"set_chunk_feed_forward\(None\)"):
        apply(tiny_dit_transformer, CACHED)


def test_schedule_for_another_model_warns(tiny_dit_pipeline: DiTPipeline) -> None:
    own = CACHED.with_model(*model_signature(tiny_dit_pipeline.transformer))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply(tiny_dit_pipeline, own).remove()
    other = CACHED.with_model(*model_signature(tiny_dit_transformer(num_layers=6)))
    with pytest.warns(UserWarning, match="config fingerprint"):
        apply(tiny_dit_pipeline, other).remove()


def test_fingerprint_hashes_the_architecture_only() -> None:
    name, fingerprint = model_signature(tiny_dit_transformer())
    assert name == "DiTTransformer2DModel" and len(fingerprint) == 16
    assert model_signature(tiny_dit_transformer(seed=5)) == (name, fingerprint)
    assert config_fingerprint({"a": 1, "_name_or_path": "x"}) == config_fingerprint({"a": 1})
    assert config_fingerprint({"a": 1, "b": 2}) == config_fingerprint({"b": 2, "a": 1})
    with pytest.raises(TypeError, match="config"):
        model_signature(nn.Linear(1, 1))


def test_selective_config_is_not_mutated(tiny_dit_pipeline: DiTPipeline) -> None:
    schedule = CACHED.inject_selective()
    with apply(tiny_dit_pipeline, schedule):
        _dit(tiny_dit_pipeline)
    assert schedule.selective == SelectiveConfig()


def test_caches_are_freed_after_each_generation(tiny_dit_pipeline: DiTPipeline) -> None:
    blocks = tiny_dit_pipeline.transformer.transformer_blocks
    with apply(tiny_dit_pipeline, CACHED):
        _dit(tiny_dit_pipeline)
        caches = [block.ff._diffusers_hook.get_hook("procache_branch").cache for block in blocks]
        assert all(c.nbytes() == 0 for c in caches)


def test_swapping_the_pipeline_scheduler_after_apply_is_followed(tiny_dit_pipeline: DiTPipeline) -> None:
    with apply(tiny_dit_pipeline, CACHED):
        tiny_dit_pipeline.scheduler = DDIMScheduler(timestep_spacing="trailing")
        first = _dit(tiny_dit_pipeline)
        assert torch.equal(_dit(tiny_dit_pipeline), first)


def test_a_failed_call_drops_the_caches(tiny_dit_transformer: nn.Module) -> None:
    def boom(*_: object) -> None:
        raise ValueError("boom")

    call = {"hidden_states": torch.randn(1, 4, 16, 16), "timestep": torch.tensor([5]),
            "class_labels": torch.tensor([1])}
    with apply(tiny_dit_transformer, Schedule.from_pattern([1, 0, 0])) as handle:
        with handle.at_step(0):
            tiny_dit_transformer(**call)
        failing = tiny_dit_transformer.transformer_blocks[2].register_forward_hook(boom)
        with handle.at_step(1), pytest.raises(ValueError, match="boom"):
            tiny_dit_transformer(**call)
        failing.remove()
        with handle.at_step(2), pytest.raises(RuntimeError, match="must start at step 0"):
            tiny_dit_transformer(**call)

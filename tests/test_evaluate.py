"""The evaluator: references computed once, only what objectives need, clean captures, clear failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import DiTPipeline
from procache_opt.objectives.feature_error import FeatureError

from procache_opt import Calibration, Schedule, ScheduleMismatchError, testing
from procache_opt.evaluate import Evaluator, NonFiniteOutputError

STEPS = 4


def _evaluator(pipe, num_samples: int = 2, **kwargs) -> Evaluator:
    return Evaluator(pipe, Calibration.default(pipe, num_samples=num_samples), num_inference_steps=STEPS, **kwargs)


@contextmanager
def _count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    calls = [0]
    handle = module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def test_reference_is_computed_once(tiny_dit_pipeline: DiTPipeline) -> None:
    evaluator = _evaluator(tiny_dit_pipeline)
    with _count_calls(tiny_dit_pipeline.transformer) as calls:
        first = evaluator.reference()
        evaluator.evaluate(Schedule.full(STEPS))
        evaluator.evaluate(Schedule.from_intervals([2, 2]))
    assert evaluator.reference() is first
    assert calls[0] == 3 * STEPS  # the reference and two runs, one batch each


def test_results_do_not_depend_on_batch_size(tiny_dit_pipeline: DiTPipeline) -> None:
    schedule = Schedule.from_intervals([2, 2])
    runs = [_evaluator(tiny_dit_pipeline, 3, batch_size=b).run(schedule) for b in (1, 2, None)]
    for run in runs[1:]:
        torch.testing.assert_close(run.latents, runs[0].latents, atol=1e-4, rtol=1e-4)


def test_reference_is_cached_on_disk(tmp_path: Path, tiny_dit_pipeline: DiTPipeline) -> None:
    first = _evaluator(tiny_dit_pipeline, cache_dir=tmp_path).reference()
    with _count_calls(tiny_dit_pipeline.transformer) as calls:
        loaded = _evaluator(tiny_dit_pipeline, cache_dir=tmp_path).reference()
    assert calls[0] == 0
    assert loaded.latents.equal(first.latents)
    assert loaded.block_evaluations == first.block_evaluations
    # Another guidance scale, or a model with other weights and the same config, has its own reference.
    _evaluator(tiny_dit_pipeline, cache_dir=tmp_path, guidance_scale=1.0).reference()
    _evaluator(testing.tiny_dit_pipeline(seed=1), cache_dir=tmp_path).reference()
    assert len(list(tmp_path.glob("reference-*.safetensors"))) == 3


def test_disk_cache_recomputes_what_it_lacks(tmp_path: Path, tiny_dit_pipeline: DiTPipeline) -> None:
    _evaluator(tiny_dit_pipeline, cache_dir=tmp_path).reference()
    with _count_calls(tiny_dit_pipeline.transformer) as calls:
        reference = _evaluator(tiny_dit_pipeline, cache_dir=tmp_path, objectives=["psnr"]).reference()
    assert calls[0] == STEPS and reference.images is not None


def test_images_are_decoded_only_when_needed(tiny_dit_pipeline: DiTPipeline) -> None:
    with _count_calls(tiny_dit_pipeline.vae.decoder) as decodes:
        latents_only = _evaluator(tiny_dit_pipeline).reference()
    assert decodes[0] == 0 and latents_only.images is None
    with _count_calls(tiny_dit_pipeline.vae.decoder) as decodes:
        with_images = _evaluator(tiny_dit_pipeline, objectives=["ssim"]).reference()
    assert decodes[0] == 1
    assert with_images.images.shape == (2, 3, 16, 16)
    assert with_images.images.min() >= 0 and with_images.images.max() <= 1
    torch.testing.assert_close(with_images.latents, latents_only.latents)


def test_captures_leave_the_pipeline_as_it_was(tiny_dit_pipeline: DiTPipeline) -> None:
    pipe = tiny_dit_pipeline
    evaluator = _evaluator(pipe, objectives=[FeatureError(compare=("latents", "block_2", "model_output"))])
    evaluator.evaluate(Schedule.from_intervals([2, 2]).inject_selective())
    assert "decode" not in pipe.vae.__dict__
    for module in pipe.transformer.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert "forward" not in module.__dict__ and not hasattr(module, "_diffusers_hook")


def test_features_keep_both_guidance_halves(tiny_pixart_pipeline) -> None:
    objective = FeatureError(compare=("block_0", "model_output"))
    for guidance, halves in ((4.5, 2), (1.0, 1)):
        reference = _evaluator(tiny_pixart_pipeline, objectives=[objective], guidance_scale=guidance).reference()
        assert reference.features["block_0"].shape[:2] == (2, halves)
        assert reference.features["model_output"].shape == (2, halves, 8, 32, 32)


def test_block_evaluations_count_computed_branches(tiny_dit_pipeline: DiTPipeline) -> None:
    evaluator = _evaluator(tiny_dit_pipeline)
    blocks = len(tiny_dit_pipeline.transformer.transformer_blocks)
    assert evaluator.reference().block_evaluations == {"attention": STEPS * blocks, "feed_forward": STEPS * blocks}
    half = evaluator.run(Schedule.from_intervals([2, 2])).block_evaluations
    assert half == {"attention": STEPS * blocks // 2, "feed_forward": STEPS * blocks // 2}


def test_non_finite_outputs_raise(tiny_dit_pipeline: DiTPipeline) -> None:
    with torch.no_grad():
        tiny_dit_pipeline.transformer.proj_out_2.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match=r"NaN or infinite latents for samples \[0, 1\] \(seeds \[0, 1\]\)"):
        _evaluator(tiny_dit_pipeline).reference()


def test_invalid_setups_fail_early(tiny_dit_pipeline: DiTPipeline) -> None:
    with pytest.raises(ValueError, match="'block_0' .. 'block_3'"):
        _evaluator(tiny_dit_pipeline, objectives=[FeatureError(compare=("block_4",))])
    with pytest.raises(ValueError, match="distinct names"):
        _evaluator(tiny_dit_pipeline, objectives=["psnr", "psnr"])
    with pytest.raises(ValueError, match="class labels"):
        Evaluator(tiny_dit_pipeline, Calibration((0,), (1000,)), num_inference_steps=STEPS)
    with pytest.raises(ScheduleMismatchError, match="4 steps"):
        _evaluator(tiny_dit_pipeline).run(Schedule.full(5))


def test_a_call_that_never_decodes_is_reported(tiny_pixart_pipeline) -> None:
    from procache_opt._capture import capture

    kwargs = testing.tiny_prompt_embeds(batch=1)
    with pytest.raises(RuntimeError, match="did not call vae.decode"), capture(tiny_pixart_pipeline, 1, decode=False):
        tiny_pixart_pipeline(**kwargs, num_inference_steps=2, output_type="latent")
    assert "decode" not in tiny_pixart_pipeline.vae.__dict__

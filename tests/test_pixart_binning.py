"""PixArt transformers whose sample_size has no diffusers resolution bin (regression: "Invalid sample size")."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline

import procache_opt
from procache_opt.cli import main
from procache_opt.pipelines import resolution_binning_kwargs
from procache_opt.runtime import apply
from procache_opt.testing import tiny_pixart_transformer, tiny_vae

FAST = {"num_inference_steps": 6, "calibration": 2, "heldout": None, "monotone": None, "progress": False}


def _pixart(sample_size: int, cls: type = PixArtAlphaPipeline) -> PixArtAlphaPipeline:
    pipe = cls(tokenizer=None, text_encoder=None, vae=tiny_vae(num_levels=4),
               transformer=tiny_pixart_transformer(num_layers=2, sample_size=sample_size),
               scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(("cls", "sample_size", "expected"), [
    (PixArtAlphaPipeline, 32, {}),
    (PixArtAlphaPipeline, 16, {"use_resolution_binning": False}),
    (PixArtAlphaPipeline, 256, {"use_resolution_binning": False}),  # only Sigma has the 2048-pixel bin
    (PixArtSigmaPipeline, 256, {}),
    (PixArtSigmaPipeline, 16, {"use_resolution_binning": False}),
])
def test_binning_is_switched_off_only_without_a_bin(cls: type, sample_size: int, expected: dict) -> None:
    transformer = tiny_pixart_transformer(num_layers=1, sample_size=sample_size)
    pipe = cls(tokenizer=None, text_encoder=None, vae=tiny_vae(), transformer=transformer,
               scheduler=DPMSolverMultistepScheduler())
    assert resolution_binning_kwargs(pipe) == expected


def test_unbinned_pixart_fails_in_diffusers_without_the_helper() -> None:
    """Guards the premise: if diffusers ever bins 16 x 16 latents, the helper is no longer needed."""
    pipe = _pixart(16)
    with pytest.raises(ValueError, match="Invalid sample size"):
        pipe(prompt_embeds=torch.zeros(1, 4, 32), prompt_attention_mask=torch.ones(1, 4), negative_prompt=None,
             negative_prompt_embeds=torch.zeros(1, 4, 32), negative_prompt_attention_mask=torch.ones(1, 4),
             num_inference_steps=2)


def test_search_and_apply_run_a_pixart_without_resolution_bin() -> None:
    pipe = _pixart(16)
    result = procache_opt.search(pipe, budget_flops=0.6, strategy="random", n_trials=2, **FAST)
    assert all(t.ok for t in result.trials)
    kwargs = {"prompt_embeds": torch.randn(1, 4, 32), "prompt_attention_mask": torch.ones(1, 4),
              "negative_prompt": None, "negative_prompt_embeds": torch.randn(1, 4, 32),
              "negative_prompt_attention_mask": torch.ones(1, 4), "num_inference_steps": 6, "output_type": "pt",
              "generator": torch.Generator().manual_seed(0), **resolution_binning_kwargs(pipe)}
    with apply(pipe, result.best):
        images = pipe(**kwargs).images
    assert images.shape == (1, 3, 128, 128) and torch.isfinite(images).all()


def test_cli_search_runs_a_pixart_without_resolution_bin(tmp_path) -> None:
    folder = tmp_path / "pipe"
    _pixart(16).save_pretrained(folder)
    code = main(["search", "--model", str(folder), "--budget", "0.6", "--strategy", "random", "--trials", "2",
                 "--steps", "6", "--samples", "2", "--monotone", "none", "--no-progress",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    assert procache_opt.Schedule.load(tmp_path / "out" / "schedule.json").num_steps == 6

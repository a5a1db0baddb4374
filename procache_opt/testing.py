"""Tiny, seeded, random-weight diffusers models and pipelines for tests and examples.

Real DiT-XL/2 and PixArt checkpoints take gigabytes and minutes on a CPU; these builders use the same
diffusers classes (``DiTTransformer2DModel`` with ``ada_norm_zero``, ``PixArtTransformer2DModel`` with
``ada_norm_single`` and cross-attention) at a size where a 10-step generation takes well under a second.
They keep 64 tokens and 4 blocks by default, so a deep quarter exists (block 3) and selective computation
has tokens to choose from. Weights depend only on ``seed``: two calls with the same seed give equal models.

Example:
    >>> from procache_opt.testing import tiny_dit_pipeline
    >>> pipe = tiny_dit_pipeline(seed=0)
    >>> pipe(class_labels=[1], num_inference_steps=2, output_type="np").images.shape
    (1, 16, 16, 3)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)

__all__ = [
    "TINY_CAPTION_CHANNELS",
    "guided_ddim_loop",
    "TINY_PROMPT_LENGTH",
    "tiny_dit_pipeline",
    "tiny_dit_transformer",
    "tiny_pixart_pipeline",
    "tiny_pixart_transformer",
    "tiny_prompt_embeds",
    "tiny_vae",
]

TINY_CAPTION_CHANNELS = 32
"""Width of the fake text-encoder embeddings the tiny PixArt transformer expects."""

TINY_PROMPT_LENGTH = 8
"""Number of text tokens returned by :func:`tiny_prompt_embeds`."""


def _seeded(seed: int) -> None:
    # diffusers initialises weights from torch's global generator; seeding it is the only way in.
    torch.manual_seed(seed)


def tiny_dit_transformer(num_layers: int = 4, sample_size: int = 16, patch_size: int = 2,
                         num_attention_heads: int = 2, attention_head_dim: int = 16,
                         seed: int = 0) -> DiTTransformer2DModel:
    """A DiT (``ada_norm_zero``, class-conditional) with ``(sample_size / patch_size) ** 2`` tokens (64).

    ``num_embeds_ada_norm=1000`` gives 1001 label embeddings: label 1000 is the null class the DiT pipeline
    uses for classifier-free guidance. ``out_channels=8`` mirrors DiT's learned-sigma output.
    """
    _seeded(seed)
    return DiTTransformer2DModel(
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=patch_size,
        num_embeds_ada_norm=1000,
    ).eval()


def tiny_pixart_transformer(num_layers: int = 4, sample_size: int = 32, patch_size: int = 4,
                            num_attention_heads: int = 2, attention_head_dim: int = 16,
                            seed: int = 0) -> PixArtTransformer2DModel:
    """A PixArt-α transformer (``ada_norm_single``, self- and cross-attention) with 64 tokens.

    ``sample_size=32`` is one of the sizes PixArt's resolution binning knows, so the pipeline runs with its
    default arguments.
    """
    _seeded(seed)
    hidden = num_attention_heads * attention_head_dim
    return PixArtTransformer2DModel(
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        cross_attention_dim=hidden,
        sample_size=sample_size,
        patch_size=patch_size,
        caption_channels=TINY_CAPTION_CHANNELS,
        norm_num_groups=1,
    ).eval()


def tiny_vae(num_levels: int = 1, seed: int = 0) -> AutoencoderKL:
    """A tiny AutoencoderKL (4 latent channels); a latent covers ``2 ** (num_levels - 1)`` pixels a side."""
    _seeded(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * num_levels,
        up_block_types=("UpDecoderBlock2D",) * num_levels,
        block_out_channels=(4,) * num_levels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
    ).eval()


def tiny_dit_pipeline(seed: int = 0, num_layers: int = 4) -> DiTPipeline:
    """A :class:`~diffusers.DiTPipeline` (tiny DiT, tiny VAE, DDIM) on CPU; images are 16 x 16 pixels."""
    pipe = DiTPipeline(
        transformer=tiny_dit_transformer(num_layers=num_layers, seed=seed),
        vae=tiny_vae(seed=seed),
        scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_pipeline(seed: int = 0, num_layers: int = 4) -> PixArtAlphaPipeline:
    """A :class:`~diffusers.PixArtAlphaPipeline` without text encoder (pass :func:`tiny_prompt_embeds`).

    The VAE has 4 levels so that ``vae_scale_factor == 8`` as in PixArt: with ``sample_size=32`` the default
    height and width (256 px) survive resolution binning and map back to 32 x 32 latents.
    """
    pipe = PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny_vae(num_levels=4, seed=seed),
        transformer=tiny_pixart_transformer(num_layers=num_layers, seed=seed),
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_prompt_embeds(batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Random text conditioning for :func:`tiny_pixart_pipeline`, as pipeline keyword arguments.

    Returns ``prompt_embeds``, ``prompt_attention_mask``, ``negative_prompt_embeds`` and
    ``negative_prompt_attention_mask`` (masks all ones), plus ``negative_prompt=None`` because the pipeline
    refuses its default ``negative_prompt=""`` next to ``negative_prompt_embeds``; so
    ``pipe(**tiny_prompt_embeds(2))`` works.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, TINY_PROMPT_LENGTH, TINY_CAPTION_CHANNELS)
    mask = torch.ones(batch, TINY_PROMPT_LENGTH, dtype=torch.long)
    return {
        "prompt_embeds": torch.randn(shape, generator=generator),
        "prompt_attention_mask": mask,
        "negative_prompt_embeds": torch.randn(shape, generator=generator),
        "negative_prompt_attention_mask": mask.clone(),
        "negative_prompt": None,
    }


def guided_ddim_loop(model: torch.nn.Module, scheduler: DDIMScheduler, *, unbatched: bool,
                     handle: Any = None) -> torch.Tensor:
    """A hand-written DDIM loop with classifier-free guidance (scale 4) for a tiny DiT: the custom loops users
    write around a bare transformer.

    Args:
        model: A tiny DiT transformer (16 x 16 latents).
        scheduler: A DDIM scheduler with its timesteps set.
        unbatched: Call the transformer once per guidance branch (two calls per step) instead of once.
        handle: If given, each step runs inside ``handle.at_step(i)`` instead of being found from the timestep.
    """
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 1000])
    for step, t in enumerate(scheduler.timesteps):
        with handle.at_step(step) if handle is not None else nullcontext():
            if unbatched:
                cond, uncond = (model(latents, timestep=t[None], class_labels=label[None]).sample for label in labels)
            else:
                both = model(torch.cat([latents] * 2), timestep=t[None].expand(2), class_labels=labels).sample
                cond, uncond = both.chunk(2)
        eps = uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4])
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents

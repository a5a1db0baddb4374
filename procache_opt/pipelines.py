"""Pipeline adapters: what differs between diffusers pipelines when they run a calibration set.

DiT is class-conditional (``pipe(class_labels=[...])``); PixArt is text-conditional (``pipe(prompt=...)`` or
``pipe(prompt_embeds=...)``). Everything else the evaluator needs is common to both: per-sample generators
(``generator=[...]``), ``num_inference_steps``, ``guidance_scale``, ``output_type="pt"`` (images in ``[0, 1]``)
and a ``vae.decode`` call at the end. An adapter is found by pipeline class (subclasses included); register
one for another pipeline with :func:`register_adapter`.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiTPipeline, PixArtAlphaPipeline, PixArtSigmaPipeline
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

from procache_opt.calibration import SPLIT_SEED_OFFSET, Condition, RandomPromptEmbedding, Split

__all__ = ["PipelineAdapter", "DiTAdapter", "PixArtAdapter", "adapter_for", "register_adapter",
           "resolution_binning_kwargs", "spread"]


class PipelineAdapter(abc.ABC):
    """How to build default conditions for, check conditions against, and call one kind of pipeline."""

    @abc.abstractmethod
    def default_conditions(self, pipe: Any, num_samples: int, split: Split) -> tuple[Condition, ...]:
        """``num_samples`` conditions valid for ``pipe``; the two splits must differ."""

    @abc.abstractmethod
    def validate(self, pipe: Any, conditions: Sequence[Condition]) -> None:
        """Raise ``ValueError`` naming the offending condition and what ``pipe`` accepts."""

    @abc.abstractmethod
    def call_kwargs(self, pipe: Any, conditions: Sequence[Condition]) -> dict[str, Any]:
        """Keyword arguments that make ``pipe`` generate one sample per condition."""


def spread(values: Sequence[Any], num_samples: int, split: Split) -> tuple[Any, ...]:
    """``num_samples`` of ``values`` spread evenly over them (each used ``n / k`` times when there are more samples).

    The held-out split shifts the spread by half a stride (other values when there are at least twice as
    many values as samples) and shuffles the order, so seeds meet different conditions than in search.
    """
    k = len(values)
    shift = k // (2 * num_samples) if split == "heldout" else 0
    chosen = [values[(i * k // num_samples + shift) % k] for i in range(num_samples)]
    if split == "heldout":
        random.Random(SPLIT_SEED_OFFSET).shuffle(chosen)
    return tuple(chosen)


class DiTAdapter(PipelineAdapter):
    """Class-conditional DiT (Peebles & Xie 2023): conditions are class labels."""

    @staticmethod
    def valid_labels(pipe: Any) -> list[int]:
        """The pipeline's named labels (``id2label``) if it has any, else ``0 .. num_embeds_ada_norm - 1``."""
        named = getattr(pipe, "labels", None)
        if named:
            return sorted(set(named.values()))
        return list(range(int(pipe.transformer.config.num_embeds_ada_norm)))

    def default_conditions(self, pipe: Any, num_samples: int, split: Split) -> tuple[int, ...]:
        """Labels spread evenly over the valid ones (see :func:`spread`)."""
        return spread(self.valid_labels(pipe), num_samples, split)

    def validate(self, pipe: Any, conditions: Sequence[Condition]) -> None:
        valid = set(self.valid_labels(pipe))
        for c in conditions:
            if not isinstance(c, int) or c not in valid:
                raise ValueError(
                    f"{type(pipe).__name__} takes class labels in {min(valid)}..{max(valid)}"
                    f"{' (its id2label keys)' if getattr(pipe, 'labels', None) else ''}; got {c!r}"
                )

    def call_kwargs(self, pipe: Any, conditions: Sequence[Condition]) -> dict[str, Any]:
        return {"class_labels": list(conditions)}


#: Short, varied prompts in the spirit of the proxy prompts ProCache scores PixArt-α with (CLIP score).
_SEARCH_PROMPTS = (
    "a red fox sitting in fresh snow, morning light",
    "a bowl of ramen on a wooden table, steam rising",
    "a lighthouse on a rocky cliff during a storm",
    "portrait of an old fisherman, oil painting",
    "a futuristic city street at night with neon signs",
    "a field of sunflowers under a blue sky",
    "a cat wearing a tiny wizard hat, studio photo",
    "an isometric illustration of a cozy library",
)
_HELDOUT_PROMPTS = (
    "a sailboat on a calm lake at sunset",
    "a plate of colorful macarons, close-up",
    "a snowy mountain village with warm windows at dusk",
    "a watercolor painting of a hummingbird and flowers",
    "an astronaut riding a horse on the moon",
    "a vintage car parked in front of a diner",
    "a dense rainforest with a waterfall, mist",
    "a robot reading a newspaper in a cafe",
)


class PixArtAdapter(PipelineAdapter):
    """Text-conditional PixArt-α/Σ (Chen et al. 2023/2024): prompts, or random embeddings without encoder."""

    def default_conditions(self, pipe: Any, num_samples: int, split: Split) -> tuple[Condition, ...]:
        """The pipeline's own ``calibration_prompts[split]`` where it has them (spread evenly, see :func:`spread`;
        the zoo's ``pixart-digits`` does), else general scene prompts, else random embeddings without encoder."""
        offset = 0 if split == "search" else SPLIT_SEED_OFFSET
        own = getattr(pipe, "calibration_prompts", None)
        if own and getattr(pipe, "text_encoder", None) is not None:
            return spread(own[split], num_samples, split)
        if getattr(pipe, "text_encoder", None) is None:
            return tuple(RandomPromptEmbedding(seed=offset + i) for i in range(num_samples))
        prompts = _SEARCH_PROMPTS if split == "search" else _HELDOUT_PROMPTS
        return tuple(prompts[i % len(prompts)] for i in range(num_samples))

    def validate(self, pipe: Any, conditions: Sequence[Condition]) -> None:
        for c in conditions:
            if isinstance(c, str) and getattr(pipe, "text_encoder", None) is None:
                raise ValueError(
                    f"{type(pipe).__name__} has no text encoder, so it cannot encode the prompt {c!r}; load the "
                    "pipeline with its text encoder or use RandomPromptEmbedding conditions"
                )
            if not isinstance(c, (str, RandomPromptEmbedding)):
                raise ValueError(f"{type(pipe).__name__} takes prompts or RandomPromptEmbedding, got {c!r}")
        lengths = {c.num_tokens for c in conditions if isinstance(c, RandomPromptEmbedding)}
        if len(lengths) > 1:
            raise ValueError(f"RandomPromptEmbedding conditions must share num_tokens, got {sorted(lengths)}")

    def call_kwargs(self, pipe: Any, conditions: Sequence[Condition]) -> dict[str, Any]:
        if isinstance(conditions[0], str):
            # clean_caption needs bs4 and ftfy; calibration prompts are already clean.
            return {"prompt": list(conditions), "clean_caption": False, **resolution_binning_kwargs(pipe)}
        channels = int(pipe.transformer.config.caption_channels)
        positive, negative = [], []
        for c in conditions:
            generator = torch.Generator().manual_seed(c.seed)
            positive.append(torch.randn(c.num_tokens, channels, generator=generator))
            negative.append(torch.randn(c.num_tokens, channels, generator=generator))
        to = {"device": pipe.device, "dtype": pipe.transformer.dtype}
        embeds, negative_embeds = torch.stack(positive).to(**to), torch.stack(negative).to(**to)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=pipe.device)
        return {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": negative_embeds,
            "negative_prompt_attention_mask": mask.clone(),
            "negative_prompt": None,  # the pipeline refuses its default "" next to negative_prompt_embeds
            **resolution_binning_kwargs(pipe),
        }


def _binned_sample_sizes(*bins: dict[str, list[float]]) -> frozenset[int]:
    """Latent sizes with a resolution bin: a bin's square entry is its resolution, 8 pixels per latent."""
    return frozenset(int(table["1.0"][0]) // 8 for table in bins)


#: The transformer ``sample_size`` values each pipeline's resolution binning accepts (any other raises
#: diffusers' "Invalid sample size"); Sigma adds the 2048-pixel bin.
_BINNED_SIZES: dict[type, frozenset[int]] = {
    PixArtSigmaPipeline: _binned_sample_sizes(
        ASPECT_RATIO_256_BIN, ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN, ASPECT_RATIO_2048_BIN),
    PixArtAlphaPipeline: _binned_sample_sizes(ASPECT_RATIO_256_BIN, ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN),
}


def resolution_binning_kwargs(pipe: Any) -> dict[str, Any]:
    """``{"use_resolution_binning": False}`` when ``pipe``'s transformer size has no diffusers bin, else ``{}``.

    PixArt pipelines bin the requested height and width by default and raise "Invalid sample size" for a
    transformer ``sample_size`` outside their tables (small models such as 16 x 16 latents). Switching binning
    off there generates at the transformer's native size, the only size such a model has; pipelines with a bin
    keep diffusers' default behaviour. Every place that calls a pipeline with generated arguments uses this.
    """
    for cls, sizes in _BINNED_SIZES.items():
        if isinstance(pipe, cls):
            if int(pipe.transformer.config.sample_size) in sizes:
                return {}
            return {"use_resolution_binning": False}
    return {}


_ADAPTERS: dict[type, PipelineAdapter] = {
    DiTPipeline: DiTAdapter(),
    PixArtAlphaPipeline: PixArtAdapter(),
    PixArtSigmaPipeline: PixArtAdapter(),
}


def register_adapter(pipeline_class: type, adapter: PipelineAdapter) -> None:
    """Make the evaluator and :meth:`Calibration.default` support ``pipeline_class`` and its subclasses."""
    _ADAPTERS[pipeline_class] = adapter


def adapter_for(pipe: Any) -> PipelineAdapter:
    """The adapter registered for ``type(pipe)`` or its nearest registered base class."""
    for cls in type(pipe).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    known = ", ".join(sorted(c.__name__ for c in _ADAPTERS))
    raise TypeError(
        f"no pipeline adapter for {type(pipe).__name__}; supported: {known}. Register one with "
        "procache_opt.pipelines.register_adapter(PipelineClass, adapter)"
    )

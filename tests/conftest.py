"""Shared pytest fixtures: tiny seeded diffusers models and pipelines (see ``procache_opt.testing``)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTPipeline, PixArtAlphaPipeline

from procache_opt import testing

# On a shared 2-core machine, torch's default of one thread per core makes the tiny models up to 50x slower
# (threads spin waiting for each other under contention); one thread keeps every generation well under 1 s.
torch.set_num_threads(1)


@pytest.fixture
def tiny_dit_transformer() -> torch.nn.Module:
    """A fresh 4-block, 64-token DiT transformer (seed 0)."""
    return testing.tiny_dit_transformer()


@pytest.fixture
def tiny_pixart_transformer() -> torch.nn.Module:
    """A fresh 4-block, 64-token PixArt-α transformer (seed 0)."""
    return testing.tiny_pixart_transformer()


@pytest.fixture
def tiny_dit_pipeline() -> DiTPipeline:
    """A fresh tiny :class:`~diffusers.DiTPipeline` (seed 0); call with ``class_labels=[...]``."""
    return testing.tiny_dit_pipeline(seed=0)


@pytest.fixture
def tiny_pixart_pipeline() -> PixArtAlphaPipeline:
    """A fresh tiny :class:`~diffusers.PixArtAlphaPipeline` (seed 0); call with ``**tiny_prompt_embeds``."""
    return testing.tiny_pixart_pipeline(seed=0)


@pytest.fixture
def tiny_prompt_embeds() -> dict[str, torch.Tensor | None]:
    """Pipeline keyword arguments with random text conditioning for a batch of 2 prompts (seed 0)."""
    return testing.tiny_prompt_embeds(batch=2, seed=0)

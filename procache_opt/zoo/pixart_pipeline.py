"""`DigitsPixArtPipeline`: diffusers' `PixArtAlphaPipeline` with the defaults a 32-pixel digits model needs.

It changes nothing but two defaults of `__call__`, so a plain ``pipe("a handwritten 7")`` works:

- ``use_resolution_binning=False``: diffusers' bins start at 256 pixels and raise "Invalid sample size" for a
  16 x 16 latent; without binning the pipeline generates at the transformer's native 32 x 32.
- ``clean_caption=False``: PixArt's caption cleaning needs bs4 and ftfy and is meant for web captions; the
  digits vocabulary has nothing to clean.

Loaded through `procache_opt.zoo.load("pixart-digits")`. The folder's `model_index.json` names diffusers'
`PixArtAlphaPipeline`, so ``PixArtAlphaPipeline.from_pretrained(zoo.path("pixart-digits"))`` loads the same
model; pass the two arguments above yourself there.
"""

from __future__ import annotations

from typing import Any

from diffusers import PixArtAlphaPipeline

from procache_opt.zoo.captions import DIGIT_WORDS, NUM_DIGITS, digit_prompt


class DigitsPixArtPipeline(PixArtAlphaPipeline):
    """`PixArtAlphaPipeline` for `pixart-digits`; see the module docstring for the two changed defaults."""

    #: Prompts that `procache_opt`'s PixArt adapter calibrates a search with (per split), instead of its general
    #: scene prompts, which this vocabulary does not know. Held-out samples use another phrasing.
    calibration_prompts: dict[str, tuple[str, ...]] = {
        "search": tuple(digit_prompt(d) for d in range(NUM_DIGITS)),
        "heldout": tuple(f"the digit {DIGIT_WORDS[d]}" for d in range(NUM_DIGITS)),
    }

    def __call__(self, *args: Any, use_resolution_binning: bool = False, clean_caption: bool = False,
                 **kwargs: Any) -> Any:
        return super().__call__(
            *args, use_resolution_binning=use_resolution_binning, clean_caption=clean_caption, **kwargs
        )

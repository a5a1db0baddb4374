"""``feature_error``: how far the cached computation's outputs drift from the full computation's.

Needs no downloaded weights and no VAE decoding, so it is the cheap default; ``benchmarks/proxy_fidelity.py``
measures how well it ranks schedules like PSNR and SSIM on held-out samples do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from procache_opt.objectives._common import paired

from procache_opt._capture import is_feature_name
from procache_opt.objective import Objective, RunOutputs, Score

__all__ = ["FeatureError"]

_EPS = 1e-12


class FeatureError(Objective):
    """Relative error of the cached run against full computation, per sample.

    For each compared tensor, with ``x`` the cached run's and ``r`` the reference's values of one sample
    (flattened): ``||x - r||_p / ||r||_p`` with ``p = 2`` (``norm="l2"``) or ``p = 1`` (``norm="l1"``). A
    sample's value is the mean of that over the compared tensors, each weighted equally. Scale-free, so
    latents, noise predictions and block outputs of any magnitude are comparable; ``0`` means identical.

    What can be compared (``compare``):

    * ``"latents"``: the final denoised latents, what the VAE decodes (the default);
    * ``"model_output"``: the transformer's output at the last denoising step;
    * ``"block_<i>"``: the output of ``transformer.transformer_blocks[i]`` at the last step.

    The last two are taken with classifier-free guidance on both halves of the batch (conditional and
    unconditional), so a sample's tensor covers both.

    Example:
        >>> FeatureError(compare=("latents", "block_11")).needs == {"latents", "features"}
        True
    """

    name = "feature_error"
    direction = "minimize"

    def __init__(self, norm: Literal["l2", "l1"] = "l2", compare: Sequence[str] = ("latents",)) -> None:
        if norm not in ("l2", "l1"):
            raise ValueError(f"FeatureError norm={norm!r}; allowed: 'l2', 'l1'")
        compare = tuple(compare)
        bad = [c for c in compare if c != "latents" and not is_feature_name(c)]
        if not compare or bad:
            raise ValueError(
                f"FeatureError compare={compare!r}; allowed: 'latents', 'model_output', 'block_<index>'"
            )
        self.norm = norm
        self.compare = compare
        #: Intermediate tensors the evaluator must capture (everything compared except the latents).
        self.features = tuple(c for c in compare if c != "latents")
        self.needs = frozenset({"latents"} | ({"features"} if self.features else set()))

    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        p = 2 if self.norm == "l2" else 1
        errors = []
        for what in self.compare:
            x, r = paired(run, reference, what, self.name)
            diff = torch.linalg.vector_norm((x - r).flatten(1), ord=p, dim=1)
            errors.append(diff / torch.linalg.vector_norm(r.flatten(1), ord=p, dim=1).clamp_min(_EPS))
        return Score.of(torch.stack(errors).mean(dim=0).cpu())

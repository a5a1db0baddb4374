"""Helpers shared by the built-in objectives."""

from __future__ import annotations

from typing import Any

import torch

from procache_opt.objective import RunOutputs

__all__ = ["paired"]


def paired(run: RunOutputs, reference: RunOutputs, what: str, objective: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``run.<what>`` and ``reference.<what>`` as float32 tensors of one shape, or a clear error.

    ``what`` is ``"latents"``, ``"images"`` or a feature name (looked up in ``RunOutputs.features``).
    """

    def get(outputs: RunOutputs, label: str) -> Any:
        value = getattr(outputs, what) if what in ("latents", "images") else outputs.features.get(what)
        if value is None:
            raise ValueError(
                f"{objective} needs {what!r} but the {label} has none; the evaluator computes it only when an "
                "objective declares it in `needs` (and names features in `features`)"
            )
        return torch.as_tensor(value).float()

    a, b = get(run, "run"), get(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(f"{objective}: run {what} {tuple(a.shape)} and reference {tuple(b.shape)} differ in shape")
    return a, b

"""Identify a transformer by its architecture, so a schedule searched for one model warns on another.

A caching schedule is tuned to how one model's features drift over denoising steps (ProCache, Section 3.2);
the same pattern on a different depth, width or patch size has unknown quality. The fingerprint hashes the
transformer's config (architecture hyper-parameters), not its weights: hashing gigabytes of weights on every
``apply`` would cost seconds, and fine-tunes of one architecture usually share a schedule well enough.

Pure Python: works on anything with a diffusers-style ``config`` mapping, no torch import.

Example:
    >>> config_fingerprint({"num_layers": 28, "patch_size": 2})
    '51adb6c1def0e8c1'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["config_fingerprint", "model_signature", "weights_fingerprint", "WEIGHT_SAMPLES"]

FINGERPRINT_LENGTH = 16
"""Hex digits kept from the sha256 digest: 64 bits, ample to tell model configs apart."""

WEIGHT_SAMPLES = 4096
"""Values read from each tensor by :func:`weights_fingerprint`: evenly spaced, every value of smaller tensors."""


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Short sha256 hex digest of the canonical JSON of ``config``.

    Keys starting with ``_`` (diffusers' ``_class_name``, ``_diffusers_version``, ``_name_or_path``,
    ``_use_default_values``) describe where and how a config was saved, not the architecture, so they are left
    out: the same model loaded from a different folder or diffusers release keeps its fingerprint.
    """
    public = {key: value for key, value in config.items() if not str(key).startswith("_")}
    canonical = json.dumps(public, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:FINGERPRINT_LENGTH]


def model_signature(model: Any) -> tuple[str, str]:
    """``(class name, config fingerprint)`` of a diffusers model, as stored in ``Schedule.model_class`` and
    ``Schedule.model_fingerprint``.

    Raises:
        TypeError: ``model`` has no ``config`` mapping (it is not a diffusers ``ModelMixin``).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"model_signature needs a diffusers model with a `config` mapping; got {type(model).__name__}"
        )
    return type(model).__name__, config_fingerprint(config)


def weights_fingerprint(modules: Mapping[str, Any]) -> str:
    """Short sha256 of the weights of named torch modules (a pipeline's transformer, VAE, text encoder).

    What a search's scores depend on beyond the architecture: a fine-tune of the same config scores other losses,
    so a stored search may not be resumed with it. Each tensor contributes its name, shape, dtype and up to
    :data:`WEIGHT_SAMPLES` evenly spaced values (all of them in smaller tensors): fine-tuning changes nearly every
    weight, and a few thousand reads per tensor take milliseconds where reading every weight of a multi-GB model
    would take seconds. The values are read as float64, which holds fp16, bf16 and fp32 exactly.
    """
    import torch

    digest = hashlib.sha256()
    for prefix, module in sorted(modules.items()):
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            if flat.numel() > WEIGHT_SAMPLES:
                flat = flat[torch.linspace(0, flat.numel() - 1, WEIGHT_SAMPLES, device=flat.device).long()]
            digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(flat.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]

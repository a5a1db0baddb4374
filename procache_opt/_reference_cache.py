"""On-disk cache of full-computation references, so a resumed or repeated search does not recompute them.

A reference is only valid for the exact model weights, scheduler, step count, guidance scale, device kind,
dtype and calibration set that produced it; all of them go into the file name's key. Weights are digested
cheaply (per-tensor sums), not hashed byte by byte: hashing gigabytes would cost more than many trials.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from procache_opt.calibration import Calibration
from procache_opt.fingerprint import config_fingerprint, model_signature

__all__ = ["ReferenceCache", "reference_key"]


def weights_digest(module: torch.nn.Module) -> str:
    """Short hash of every parameter's and buffer's name, shape, sum and sum of squares.

    Two models with one config but different weights (a fine-tune, another seed) get different digests; the
    cost is one reduction per tensor, not a pass over the bytes in Python.
    """
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    with torch.no_grad():
        stats = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors.values()])
    text = json.dumps([[name, list(t.shape)] for name, t in tensors.items()]) + repr(stats.cpu().tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_key(pipe: Any, *, num_inference_steps: int, guidance_scale: float, calibration: Calibration) -> str:
    """Hash of everything that determines a full-computation reference."""
    cal = calibration.to_dict()
    payload = {
        "pipeline": type(pipe).__name__,
        "transformer": [*model_signature(pipe.transformer), weights_digest(pipe.transformer)],
        "vae": [*model_signature(pipe.vae), weights_digest(pipe.vae)],
        "scheduler": [type(pipe.scheduler).__name__, config_fingerprint(pipe.scheduler.config)],
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "calibration": [cal["seeds"], cal["conditions"]],  # the set's name does not change its samples
        "device": pipe.device.type,
        "dtype": str(pipe.transformer.dtype),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class ReferenceCache:
    """One reference file, ``<folder>/reference-<key>.safetensors``, holding named tensors and metadata."""

    def __init__(self, folder: str | os.PathLike[str], pipe: Any, **key: Any) -> None:
        self.path = Path(folder) / f"reference-{reference_key(pipe, **key)}.safetensors"
        self.device = str(pipe.device)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """Tensors (on the pipeline's device) and metadata, or ``None`` if nothing is stored yet."""
        if not self.path.exists():
            return None
        with safe_open(str(self.path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(self.path), device=self.device), metadata

    def save(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Write atomically (temporary file, then ``os.replace``) so a crash never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

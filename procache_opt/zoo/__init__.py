"""Trained models bundled with the package, so searches and tests run with no network access.

`dit-digits` is a small class-conditional latent DiT in the exact form of `facebook/DiT-XL-2-256`
(`DiTPipeline` = `AutoencoderKL` + `DiTTransformer2DModel` with ada_norm_zero + `DDIMScheduler`), trained
on scikit-learn's handwritten digits by `procache_opt.zoo.train_digits`. Anything written for DiT-XL/2 in
diffusers runs on it unchanged, in about a second on a CPU.

`pixart-digits` is its text-conditioned sibling in the exact form of `PixArt-alpha/PixArt-XL-2-512x512`
(`PixArtAlphaPipeline` = `PixArtTransformer2DModel` with adaLN-single and cross-attention + a one-layer T5
encoder over an 88-token vocabulary + the same VAE + DPM-Solver++ at 20 steps), trained by
`procache_opt.zoo.train_pixart_digits`; prompts such as "a handwritten 7". See docs/zoo.md.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and diffusers load with a model, not with the list of names (the CLI checks names)
    import torch
    from diffusers import DiffusionPipeline

_HERE = Path(__file__).resolve().parent

#: Bundled model name -> folder (inside this package) holding a diffusers `save_pretrained` layout.
_MODELS: dict[str, Path] = {
    name: _HERE / name for name in ("dit-digits", "pixart-digits") if (_HERE / name / "model_index.json").is_file()
}


class UnknownModelError(ValueError, KeyError):
    """A name that is not a bundled model; catchable as ValueError or KeyError (it is a lookup by name)."""

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message; keep it readable.
        return str(self.args[0])


def list() -> builtins.list[str]:
    """Names of the bundled models, sorted (shadows the builtin here because the API is `zoo.list()`)."""
    return sorted(_MODELS)


def path(name: str) -> Path:
    """Folder of a bundled model, loadable with `DiTPipeline.from_pretrained` directly."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown zoo model {name!r}; known models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def load(
    name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """A ready pipeline for a bundled model, read from the package (never from the network).

    `dit-digits` gives a `DiTPipeline`, `pixart-digits` a `DigitsPixArtPipeline` (a `PixArtAlphaPipeline`
    whose defaults suit its 32-pixel size). The weights are stored in fp16 to keep the package small;
    `dtype=None` loads them as float32 (diffusers' default), because fp16 matmuls on CPU are slow or missing.
    Pass `dtype=torch.float16` on a GPU.
    """
    folder = path(name)
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    if name == "pixart-digits":
        import torch

        from procache_opt.zoo.pixart_pipeline import DigitsPixArtPipeline

        pipe = DigitsPixArtPipeline.from_pretrained(folder, local_files_only=True, **kwargs)
        if dtype is None:  # transformers >= 5 loads the text encoder in its stored fp16 unless told otherwise
            pipe = pipe.to(dtype=torch.float32)
    else:
        from diffusers import DiTPipeline

        # model_index.json stores id2label with string keys (JSON); passed as read, diffusers warns that it
        # expects int keys. Pass them as ints, then record the file's mapping so save_pretrained writes it back.
        id2label = json.loads((folder / "model_index.json").read_text())["id2label"]
        pipe = DiTPipeline.from_pretrained(folder, local_files_only=True,
                                           id2label={int(k): v for k, v in id2label.items()}, **kwargs)
        pipe.register_to_config(id2label=id2label)
    if device is not None:
        pipe = pipe.to(device)
    return pipe

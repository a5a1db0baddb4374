"""Observe one pipeline call: final latents, named intermediate features, and branch evaluations.

Every capture is removed when the ``with`` block ends, also on error, and leaves the modules exactly as
they were (``tests/test_evaluate.py`` checks it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DecoderOutput

__all__ = ["Captured", "MODEL_OUTPUT", "capture", "check_feature_names", "is_feature_name"]

_BLOCK = re.compile(r"block_(\d+)")
MODEL_OUTPUT = "model_output"


def is_feature_name(name: str) -> bool:
    """Whether ``name`` has the form of a feature: ``"model_output"`` or ``"block_<index>"``."""
    return name == MODEL_OUTPUT or _BLOCK.fullmatch(name) is not None


@dataclass
class Captured:
    """What :func:`capture` recorded during one pipeline call.

    Attributes:
        latents: The final latents (the pipeline's input to ``vae.decode``, times the VAE scaling factor).
        features: Named tensors from the last transformer call, ``(batch, branches, ...)``: ``branches`` is 2
            with classifier-free guidance (conditional and unconditional halves, in the pipeline's order), else 1.
        branch_calls: How many times the blocks' self-attention and feed-forward layers ran (their query
            projection ``attn1.to_q`` and first feed-forward layer ``ff.net[0]``).
    """

    latents: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    branch_calls: Counter[str] = field(default_factory=Counter)


def check_feature_names(transformer: Any, names: Sequence[str]) -> None:
    """Fail early on a feature name the transformer cannot provide, listing the valid ones."""
    num_blocks = len(transformer.transformer_blocks)
    for name in names:
        match = _BLOCK.fullmatch(name)
        if name != MODEL_OUTPUT and not (match and int(match.group(1)) < num_blocks):
            raise ValueError(
                f"unknown feature {name!r}; valid: {MODEL_OUTPUT!r} (the transformer's output) and "
                f"'block_0' .. 'block_{num_blocks - 1}' (a block's output)"
            )


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.sample if hasattr(output, "sample") else output[0]


def _per_sample(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == 2 * batch:  # guidance batches [half_a, half_b]; keep both with their sample
        return tensor.reshape(2, batch, *tensor.shape[1:]).transpose(0, 1)
    if tensor.shape[0] == batch:
        return tensor.unsqueeze(1)
    raise RuntimeError(f"feature {name!r} has batch {tensor.shape[0]}; expected {batch} or {2 * batch} samples")


@contextmanager
def _patched_decode(vae: Any, captured: Captured, decode: bool) -> Iterator[None]:
    """Record ``vae.decode``'s input; if ``decode`` is false, return blank images instead of decoding.

    DiT's pipeline always decodes (it has no ``output_type="latent"``), so skipping the VAE is the only way
    to save its cost when no objective needs images. Pipelines call ``vae.decode``, not ``forward``, so a
    forward hook cannot see this call; the patch is an instance attribute, deleted again on exit.
    """
    original = vae.decode
    previous = vae.__dict__.get("decode")
    upscale = 2 ** (len(vae.config.block_out_channels) - 1)

    def decode_and_record(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.latents = z * vae.config.scaling_factor
        if decode:
            return original(z, *args, **kwargs)
        blank = z.new_zeros(z.shape[0], vae.config.out_channels, z.shape[2] * upscale, z.shape[3] * upscale)
        return_dict = kwargs.get("return_dict", args[0] if args else True)
        return DecoderOutput(sample=blank) if return_dict else (blank,)

    vae.decode = decode_and_record
    try:
        yield
    finally:
        if previous is None:
            del vae.decode
        else:
            vae.decode = previous


@contextmanager
def capture(pipe: Any, batch: int, *, decode: bool, features: Sequence[str] = ()) -> Iterator[Captured]:
    """Record the final latents, ``features`` and branch evaluations of one call of ``pipe`` on ``batch`` samples.

    Features come from the *last* transformer call (the last denoising step): each transformer call clears
    what the previous one recorded.
    """
    transformer = pipe.transformer
    check_feature_names(transformer, features)
    captured = Captured()
    current: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            current[name] = _first_tensor(output).detach()
        return hook

    def counter(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            captured.branch_calls[name] += 1
        return hook

    with ExitStack() as stack:
        handles = [transformer.register_forward_pre_hook(lambda module, args: current.clear())]
        for name in features:
            match = _BLOCK.fullmatch(name)
            module = transformer.transformer_blocks[int(match.group(1))] if match else transformer
            handles.append(module.register_forward_hook(recorder(name)))
        # A reused branch returns its cache without running its layers, so count the layers, not the branch.
        for block in transformer.transformer_blocks:
            handles.append(block.attn1.to_q.register_forward_hook(counter("attention")))
            handles.append(block.ff.net[0].register_forward_hook(counter("feed_forward")))
        for handle in handles:
            stack.callback(handle.remove)
        stack.enter_context(_patched_decode(pipe.vae, captured, decode))
        yield captured
        if captured.latents is None:
            raise RuntimeError(
                f"{type(pipe).__name__} did not call vae.decode, so its final latents were not seen; call it with "
                "an output_type that decodes (the evaluator uses 'pt')"
            )
        missing = [name for name in features if name not in current]
        if missing:
            raise RuntimeError(f"features {missing} were not computed at the last transformer call")
        captured.features = {name: _per_sample(current[name], batch, name) for name in features}

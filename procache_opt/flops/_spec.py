"""Model shapes for FLOPs counting, read from a diffusers config: no weights, no torch.

The family is recognised by ``norm_type`` (``ada_norm_zero``: DiT, ``ada_norm_single``: PixArt-α) because the
published ``config.json`` files name the legacy class ``Transformer2DModel`` for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["FF_IN_FACTOR", "PRESETS", "ModelSpec", "resolve_spec"]

# Width of FeedForward's input projection as a multiple of its inner width (GEGLU/SwiGLU project to 2x).
FF_IN_FACTOR = {"gelu": 1, "gelu-approximate": 1, "geglu": 2, "geglu-approximate": 1, "swiglu": 2, "linear-silu": 1}
_FAMILY_BY_NORM = {"ada_norm_zero": "dit", "ada_norm_single": "pixart"}
_FAMILY_BY_CLASS = {"DiTTransformer2DModel": "dit", "PixArtTransformer2DModel": "pixart"}
# Constructor defaults of DiTTransformer2DModel / PixArtTransformer2DModel, used for keys a config leaves out.
_COMMON_DEFAULTS = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "num_layers": 28,
                    "patch_size": 2, "activation_fn": "gelu-approximate", "norm_elementwise_affine": False}
_DEFAULTS = {
    "dit": {**_COMMON_DEFAULTS, "out_channels": None, "sample_size": 32, "cross_attention_dim": None},
    "pixart": {**_COMMON_DEFAULTS, "out_channels": 8, "sample_size": 128, "cross_attention_dim": 1152},
}


def _dit(num_layers: int, heads: int, head_dim: int, sample_size: int = 32) -> Mapping[str, Any]:
    return MappingProxyType({
        "_class_name": "DiTTransformer2DModel", "norm_type": "ada_norm_zero", "num_layers": num_layers,
        "num_attention_heads": heads, "attention_head_dim": head_dim, "in_channels": 4, "out_channels": 8,
        "patch_size": 2, "sample_size": sample_size, "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000, "norm_elementwise_affine": False,
    })


def _pixart(sample_size: int) -> Mapping[str, Any]:
    return MappingProxyType({
        "_class_name": "PixArtTransformer2DModel", "norm_type": "ada_norm_single", "num_layers": 28,
        "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "patch_size": 2,
        "sample_size": sample_size, "activation_fn": "gelu-approximate", "cross_attention_dim": 1152,
        "caption_channels": 4096, "num_embeds_ada_norm": 1000, "norm_elementwise_affine": False,
    })


#: The counting-relevant keys of published transformer configs, under today's diffusers class names.
#: ``dit-xl-2-*`` and ``pixart-alpha-*`` copy facebook/DiT-XL-2-256, facebook/DiT-XL-2-512,
#: PixArt-alpha/PixArt-XL-2-512x512 and PixArt-XL-2-1024-MS (``transformer/config.json``). DiT-S/B/L/2 were
#: never released for diffusers: their depth and width are Table 1 of Peebles & Xie, "Scalable Diffusion
#: Models with Transformers" (ICCV 2023), in the same layout.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "dit-s-2-256": _dit(12, 6, 64),
    "dit-b-2-256": _dit(12, 12, 64),
    "dit-l-2-256": _dit(24, 16, 64),
    "dit-xl-2-256": _dit(28, 16, 72),
    "dit-xl-2-512": _dit(28, 16, 72, sample_size=64),
    "pixart-alpha-512": _pixart(64),
    "pixart-alpha-1024": _pixart(128),
})


@dataclass(frozen=True)
class ModelSpec:
    """The shapes that decide a transformer's cost, read from its diffusers config.

    Attributes:
        family: ``"dit"`` (adaLN-Zero blocks, class labels) or ``"pixart"`` (adaLN-single, cross-attention).
        sample_size: Side of the latent (32 for 256 px images); the transformer sees
            ``(sample_size // patch_size) ** 2`` tokens.
        norm_affine: The config's ``norm_elementwise_affine``; a LayerNorm with an affine is charged 5 MACs per
            element instead of 4.
        text_length: Text tokens the cross-attention attends to: ``PixArtAlphaPipeline``'s default
            ``max_sequence_length=120``. Not part of a config; change it with ``dataclasses.replace``.
        use_additional_conditions: PixArt's resolution / aspect-ratio embeddings; diffusers turns them on by
            default only for ``sample_size == 128`` (the 1024 px model).
    """

    family: str
    num_layers: int
    num_heads: int
    head_dim: int
    in_channels: int
    out_channels: int
    patch_size: int
    sample_size: int
    activation_fn: str = "gelu-approximate"
    norm_affine: bool = False
    cross_attention_dim: int | None = None
    caption_channels: int | None = None
    text_length: int = 120
    use_additional_conditions: bool = False

    def __post_init__(self) -> None:
        if self.family not in _DEFAULTS:
            raise ValueError(f"ModelSpec.family={self.family!r} is not supported; allowed: {sorted(_DEFAULTS)}")
        if self.activation_fn not in FF_IN_FACTOR:
            raise ValueError(f"ModelSpec.activation_fn={self.activation_fn!r}; allowed: {sorted(FF_IN_FACTOR)}")
        for name in ("num_layers", "num_heads", "head_dim", "in_channels", "out_channels", "patch_size",
                     "sample_size", "text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelSpec.{name}={getattr(self, name)!r} is out of range; allowed: >= 1")
        if self.family == "pixart" and self.cross_attention_dim is None:
            raise ValueError("ModelSpec.cross_attention_dim=None; PixArt blocks need it (allowed: >= 1)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], text_length: int = 120) -> ModelSpec:
        """Read a diffusers transformer config (``model.config``, a ``config.json`` dict or a preset)."""
        family = _FAMILY_BY_NORM.get(config.get("norm_type", ""), _FAMILY_BY_CLASS.get(config.get("_class_name", "")))
        if family is None:
            raise ValueError(
                f"cannot count a transformer with norm_type={config.get('norm_type')!r}, "
                f"_class_name={config.get('_class_name')!r}; supported: norm_type in {sorted(_FAMILY_BY_NORM)} "
                f"(classes {sorted(_FAMILY_BY_CLASS)})"
            )
        c = {**_DEFAULTS[family], **config}
        additional = c.get("use_additional_conditions")
        return cls(
            family=family, num_layers=c["num_layers"], num_heads=c["num_attention_heads"],
            head_dim=c["attention_head_dim"], in_channels=c["in_channels"],
            out_channels=c["out_channels"] or c["in_channels"], patch_size=c["patch_size"],
            sample_size=c["sample_size"], activation_fn=c["activation_fn"], norm_affine=c["norm_elementwise_affine"],
            cross_attention_dim=c["cross_attention_dim"], caption_channels=c.get("caption_channels"),
            text_length=text_length,
            use_additional_conditions=c["sample_size"] == 128 if additional is None else bool(additional),
        )

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def num_tokens(self) -> int:
        return (self.sample_size // self.patch_size) ** 2

    def __str__(self) -> str:
        return f"{self.family} ({self.num_layers} blocks x {self.width} wide, {self.num_tokens} tokens)"


def resolve_spec(model_or_config: Any) -> ModelSpec:
    """A ModelSpec from a spec, a preset name, a config mapping, a transformer or a pipeline (its transformer)."""
    if isinstance(model_or_config, ModelSpec):
        return model_or_config
    if isinstance(model_or_config, str):
        if model_or_config not in PRESETS:
            raise ValueError(f"unknown preset {model_or_config!r}; known: {sorted(PRESETS)}")
        return ModelSpec.from_config(PRESETS[model_or_config])
    config = model_or_config
    if not isinstance(config, Mapping):  # a model: read its config; a pipeline: its transformer's
        config = getattr(getattr(model_or_config, "transformer", model_or_config), "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"cannot count {type(model_or_config).__name__}: pass a diffusers transformer, a pipeline with a "
            f"`.transformer`, a config mapping, a ModelSpec or a preset name ({sorted(PRESETS)})"
        )
    return ModelSpec.from_config(config)

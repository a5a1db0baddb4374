"""Calibration sets: the fixed (seed, condition) pairs on which a schedule is compared with full computation.

A schedule chosen on one set of samples can overfit them (ProCache picks among candidates with a proxy
metric; Cao et al., AAAI 2026, Section 3.2), so :meth:`Calibration.default` makes two disjoint splits:
``"search"`` (what a search optimises) and ``"heldout"`` (what a report judges it on): different seeds and,
for class-conditional models, the labels in a different order and pairing.

A condition is a class label (``int``, DiT), a prompt (``str``, PixArt with its text encoder) or a
:class:`RandomPromptEmbedding` (PixArt without a text encoder: tests and untrained models). Sets are plain
data: this module imports neither torch nor diffusers, and a set round-trips through JSON.

Example:
    >>> cal = Calibration(seeds=(0, 1), conditions=(3, 7))
    >>> Calibration.from_json(cal.to_json()) == cal
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from procache_opt._io import atomic_write_text

__all__ = ["Calibration", "Condition", "RandomPromptEmbedding", "Split", "SPLIT_SEED_OFFSET"]

FORMAT_VERSION = 1

Split = Literal["search", "heldout"]

#: Held-out seeds start here, so they never meet search seeds for sets below a million samples.
SPLIT_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class RandomPromptEmbedding:
    """Gaussian text conditioning drawn from ``seed``: for text-conditional pipelines without a text encoder.

    The pipeline adapter turns it into a ``(num_tokens, caption_channels)`` prompt embedding and a negative
    one (for classifier-free guidance) from a generator seeded with ``seed``, so it is reproducible on every
    machine. Real prompts (``str``) are what to use with a trained model.
    """

    seed: int
    num_tokens: int = 8

    def __post_init__(self) -> None:
        if self.seed < 0 or self.num_tokens < 1:
            raise ValueError(f"RandomPromptEmbedding needs seed >= 0 and num_tokens >= 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return {"random_prompt_embedding": {"seed": self.seed, "num_tokens": self.num_tokens}}


#: One sample's conditioning: a class label, a prompt, or a random prompt embedding.
Condition = int | str | RandomPromptEmbedding


def _condition_from_json(value: Any) -> Condition:
    if isinstance(value, dict):
        return RandomPromptEmbedding(**value["random_prompt_embedding"])
    return value


def _condition_to_json(condition: Condition) -> Any:
    return condition.to_dict() if isinstance(condition, RandomPromptEmbedding) else condition


@dataclass(frozen=True)
class Calibration:
    """A fixed list of (seed, condition) pairs; sample ``i`` starts from noise drawn with ``seeds[i]``.

    Attributes:
        seeds: One non-negative generator seed per sample.
        conditions: One condition per sample, all of one kind (see the module docstring).
        name: A label for reports (``"search"``, ``"heldout"`` or anything).
    """

    seeds: tuple[int, ...]
    conditions: tuple[Condition, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if not self.seeds:
            raise ValueError("a calibration set needs at least one sample")
        if len(self.seeds) != len(self.conditions):
            raise ValueError(
                f"Calibration has {len(self.seeds)} seeds but {len(self.conditions)} conditions; give one of each "
                "per sample"
            )
        if min(self.seeds) < 0:
            raise ValueError(f"Calibration seeds must be >= 0, got {min(self.seeds)}")
        kinds = {self._kind(c) for c in self.conditions}
        if len(kinds) > 1:
            raise ValueError(f"Calibration conditions mix kinds {sorted(kinds)}; use one kind for every sample")

    @staticmethod
    def _kind(condition: Condition) -> str:
        # bool is an int subclass; True as a class label is almost surely a mistake.
        if isinstance(condition, bool) or not isinstance(condition, (int, str, RandomPromptEmbedding)):
            raise TypeError(
                f"a condition must be an int (class label), a str (prompt) or a RandomPromptEmbedding, got "
                f"{type(condition).__name__} {condition!r}"
            )
        return type(condition).__name__

    @classmethod
    def default(cls, pipe: Any, num_samples: int = 8, split: Split = "search") -> Calibration:
        """A spread of conditions suited to ``pipe`` (see :mod:`procache_opt.pipelines` for each kind).

        Search seeds are ``0 .. n-1``, held-out seeds ``SPLIT_SEED_OFFSET + (0 .. n-1)``; the conditions come
        from the pipeline's adapter (class labels spread over the model's valid labels, prompts, or random
        prompt embeddings), disjoint from or shuffled against the search split.
        """
        from procache_opt.pipelines import adapter_for  # diffusers only when a pipeline is involved

        if split not in ("search", "heldout"):
            raise ValueError(f"split={split!r}; allowed: 'search', 'heldout'")
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}; need at least 1")
        offset = 0 if split == "search" else SPLIT_SEED_OFFSET
        conditions = adapter_for(pipe).default_conditions(pipe, num_samples, split)
        return cls(tuple(range(offset, offset + num_samples)), conditions, name=split)

    def __len__(self) -> int:
        return len(self.seeds)

    def __iter__(self) -> Iterator[tuple[int, Condition]]:
        return iter(zip(self.seeds, self.conditions, strict=True))

    def batches(self, batch_size: int | None) -> Iterator[Calibration]:
        """Consecutive slices of at most ``batch_size`` samples (one slice if ``None``)."""
        size = batch_size or len(self)
        for start in range(0, len(self), size):
            yield Calibration(self.seeds[start:start + size], self.conditions[start:start + size], self.name)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "seeds": list(self.seeds),
            "conditions": [_condition_to_json(c) for c in self.conditions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported calibration format_version {data.get('format_version')!r}; this procache-opt "
                f"reads {FORMAT_VERSION}"
            )
        conditions = tuple(_condition_from_json(c) for c in data["conditions"])
        return cls(tuple(data["seeds"]), conditions, name=data.get("name", "custom"))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set as JSON atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        return cls.from_json(Path(path).read_text())

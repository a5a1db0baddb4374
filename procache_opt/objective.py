"""The objective interface: score a cached run against the full computation on the same inputs.

An objective declares what it needs from a run (``needs``), so the evaluator computes only that: final
latents are always there; decoded images, intermediate block features and timings cost extra. It returns
per-sample values (a :class:`Score`), not only their mean, so reports can show uncertainty.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from procache_opt.plugins import PluginRegistry

__all__ = ["Objective", "RunOutputs", "Score", "OBJECTIVES", "NEEDS"]

#: What an objective can ask the evaluator for.
NEEDS = frozenset({"latents", "images", "features", "timing"})


@dataclass
class RunOutputs:
    """What one pipeline run over a calibration set produced (tensors stay on their device).

    Attributes:
        latents: Final denoised latents, shape ``(num_samples, C, H, W)``.
        images: Decoded images in ``[0, 1]``, shape ``(num_samples, channels, H, W)``, when asked for.
        features: Named intermediate tensors (e.g. ``"block_11"``: that block's output at the last step),
            each ``(num_samples, ...)``, when asked for.
        seconds: Wall-clock seconds of each repeat of the timed run, when asked for.
        flops_ratio: Counted FLOPs as a fraction of full computation.
    """

    latents: Any
    images: Any | None = None
    features: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    flops_ratio: float = 1.0


@dataclass(frozen=True)
class Score:
    """Per-sample values of one objective, with their mean and a 95% confidence interval."""

    per_sample: tuple[float, ...]

    @classmethod
    def of(cls, values: Any) -> Score:
        return cls(tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)))

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_sample))

    @property
    def ci95(self) -> tuple[float, float]:
        """Normal-approximation 95% interval of the mean (``mean +- 1.96 * sd / sqrt(n)``)."""
        n = len(self.per_sample)
        if n < 2:
            return (self.mean, self.mean)
        half = 1.96 * float(np.std(self.per_sample, ddof=1)) / math.sqrt(n)
        return (self.mean - half, self.mean + half)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": list(self.ci95), "per_sample": list(self.per_sample)}


class Objective(abc.ABC):
    """Scores a cached run against the full-computation reference of the same calibration set.

    Subclasses set ``name``, ``direction`` and ``needs`` and implement :meth:`score`. Values are losses when
    ``direction == "minimize"`` (the default): an all-FULL schedule must score its best value.
    """

    name: str = ""
    direction: Literal["minimize", "maximize"] = "minimize"
    needs: frozenset[str] = frozenset({"latents"})

    @abc.abstractmethod
    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        """Per-sample values for ``run`` compared with ``reference`` (same seeds and conditions)."""


#: Objectives by name (entry-point group ``procache_opt.objectives``).
OBJECTIVES: PluginRegistry[Objective] = PluginRegistry("procache_opt.objectives", "objective")

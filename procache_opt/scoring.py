"""Combine several objectives into what strategies optimise: a weighted sum, or a vector.

Single-objective strategies minimise ``value = sum_i w_i * sign_i * mean_i`` where ``sign_i`` is ``+1`` for
objectives to minimise and ``-1`` for those to maximise. Multi-objective strategies read each mean from
``TrialResult.values`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from procache_opt.objective import OBJECTIVES, Objective, Score
from procache_opt.search_config import objective_weights

__all__ = ["ObjectiveSet"]


@dataclass(frozen=True)
class ObjectiveSet:
    """Named objective instances with their weights.

    Build one with :meth:`from_spec` from what users write: ``"feature_error"``, ``["lpips", "latency"]``
    (equal weights) or ``{"feature_error": 1.0, "latency": 0.1}``.
    """

    objectives: tuple[Objective, ...]
    weights: tuple[float, ...]

    @classmethod
    def from_spec(cls, spec: str | Sequence[str] | Mapping[str, float],
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> ObjectiveSet:
        """Instantiate registered objectives; ``options[name]`` holds keyword arguments for one of them."""
        weights = objective_weights(spec)
        options = options or {}
        unknown_opts = set(options) - set(weights)
        if unknown_opts:
            raise ValueError(f"objective_options names objectives not in use: {sorted(unknown_opts)}")
        objs = tuple(OBJECTIVES.create(name, **dict(options.get(name, {}))) for name in weights)
        return cls(objs, tuple(weights.values()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(o.needs for o in self.objectives))

    def directions(self) -> dict[str, str]:
        return {o.name: o.direction for o in self.objectives}

    def scalarize(self, scores: Mapping[str, Score]) -> float:
        """The weighted loss a single-objective strategy minimises."""
        total = 0.0
        for obj, w in zip(self.objectives, self.weights, strict=True):
            sign = 1.0 if obj.direction == "minimize" else -1.0
            total += w * sign * scores[obj.name].mean
        return total

    def to_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.weights, strict=True))

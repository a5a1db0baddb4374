"""Caching schedules: what the transformer does at each denoising step.

A schedule is ProCache's caching pattern ``s = (s_1, ..., s_T)`` (Cao et al., "ProCache: Constraint-Aware
Feature Caching with Selective Computation for Diffusion Transformer Acceleration", AAAI 2026,
arXiv 2512.17298, Section 3.2) extended with the selective-computation action of Section 3.3:

* ``FULL`` (1): compute every block and refresh every cache,
* ``REUSE`` (0): every block re-applies its cached branch outputs with the current step's modulation,
* ``SELECTIVE`` (2): shallow blocks reuse; deep blocks recompute the feed-forward branch for their most
  important tokens.

Per-depth schedules (beyond ProCache; block groups with their own pattern, as Delta-DiT, Chen et al. 2024,
arXiv 2406.01125, and ECAD, arXiv 2506.03537, motivate) add two actions that split the blocks at
``Schedule.depth_split``:

* ``DEEP`` (3): the deep blocks compute in full, the shallow blocks reuse,
* ``SHALLOW`` (4): the shallow blocks compute in full, the deep blocks reuse.

Each group's own pattern is :meth:`Schedule.group_actions`.

``forecast_order`` says how reused outputs are formed: 0 reuses them as cached (FORA, ProCache), 1 forecasts
them to first order from the last two FULL steps (TaylorSeer, Liu et al. 2025, arXiv 2503.06923).

Steps are counted in denoising order (step 0 is the noisiest). This module is pure Python: strategies,
which must not import torch, build and exchange schedules freely.
"""

from __future__ import annotations

import enum
import json
import math
import operator
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from procache_opt._io import CorruptFileError, atomic_write_text, read_json

__all__ = ["Action", "Schedule", "SelectiveConfig", "ScheduleMismatchError", "FORMAT_VERSION", "FORECAST_ORDERS",
           "split_layer"]

FORMAT_VERSION = 1
FORECAST_ORDERS = (0, 1)


class Action(enum.IntEnum):
    """What the transformer does at one denoising step (the values are ProCache's pattern digits)."""

    REUSE = 0
    FULL = 1
    SELECTIVE = 2
    DEEP = 3
    SHALLOW = 4


#: What each action does in the shallow and in the deep block group (``DEEP``/``SHALLOW`` split them).
_GROUP_ACTIONS = {
    Action.REUSE: (Action.REUSE, Action.REUSE),
    Action.FULL: (Action.FULL, Action.FULL),
    Action.SELECTIVE: (Action.SELECTIVE, Action.SELECTIVE),
    Action.DEEP: (Action.REUSE, Action.FULL),
    Action.SHALLOW: (Action.FULL, Action.REUSE),
}

def _is_int(value: Any) -> bool:
    """An integer that JSON wrote as one (``True`` and ``1.0`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """``data[key]`` if present and of ``kind`` (bools are not numbers), else ``default`` if absent."""
    if key not in data:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"the schedule's {key!r} must be {names.replace('dict', 'an object')}, got {value!r}"[:300])
    return value


class ScheduleMismatchError(ValueError):
    """A schedule was applied to a model or step count it was not made for."""


def _check_range(name: str, value: float, low: float, high: float) -> None:
    integral = isinstance(low, int) and isinstance(high, int)
    kind = int if integral else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (low <= value <= high):
        raise ValueError(f"SelectiveConfig.{name}={value!r} is out of range; allowed: {low} <= {name} <= {high}")


@dataclass(frozen=True)
class SelectiveConfig:
    """Settings of ProCache's selective computation (Section 3.3); defaults follow the authors' DiT code.

    On a ``SELECTIVE`` step, blocks with index ``>= deep_start(num_layers)`` recompute their feed-forward
    branch for ``num_fresh_tokens(...)`` tokens, chosen by an importance score; all other work is reused.

    Attributes:
        deep_fraction: Share of blocks, counted from the output end, that compute selectively. The authors
            start at layer 21 of DiT-XL/2's 28 (``cal_type.py``, ``threshold = 21``): the last quarter.
        fresh_ratio: Base share of tokens recomputed, ToCa's ``--fresh-ratio`` default 0.07 (ToCa, Zou et al.
            2024; ProCache ``sample.py``).
        mlp_factor: ToCa's module factor for the feed-forward branch in the ``ToCa-ddim50`` ratio schedule:
            ``1 + module_time_weight * module_weight = 1 + 0.6 * 2.5 = 2.5``.
        step_weight: ToCa-ddim50's step factor weight (2.0): more fresh tokens late in denoising, none early.
        layer_weight: ToCa-ddim50's layer factor weight (-0.2): slightly more fresh tokens in deeper layers.
        staleness_weight: Weight of the staleness score (steps since a token was recomputed divided by
            ``staleness_threshold``), ProCache's ``--soft-fresh-weight`` 0.25 (lambda_3 in the paper).
        staleness_threshold: ProCache's ``--fresh-threshold`` 4 (N in the paper).
        spatial_bonus: Within each ``spatial_grid`` x ``spatial_grid`` patch of tokens, the top-scoring token
            gets ``+spatial_bonus`` times its score (``local_selection_with_bonus(score, 0.6, 2)``).
        spatial_grid: Side of the patch used by the spatial-uniformity bonus (2).
        score_max_queries: The attention-received score sums the softmaxed attention map over queries; at
            most this many evenly strided queries are used, which bounds the scoring cost at
            ``score_max_queries * N * D`` multiply-accumulates per deep block for long sequences.
    """

    deep_fraction: float = 0.25
    fresh_ratio: float = 0.07
    mlp_factor: float = 2.5
    step_weight: float = 2.0
    layer_weight: float = -0.2
    staleness_weight: float = 0.25
    staleness_threshold: int = 4
    spatial_bonus: float = 0.6
    spatial_grid: int = 2
    score_max_queries: int = 1024

    def __post_init__(self) -> None:
        _check_range("deep_fraction", self.deep_fraction, 0.0, 1.0)
        _check_range("fresh_ratio", self.fresh_ratio, 0.0, 1.0)
        _check_range("mlp_factor", self.mlp_factor, 0.0, 100.0)
        _check_range("step_weight", self.step_weight, -10.0, 10.0)
        _check_range("layer_weight", self.layer_weight, -1.0, 1.0)
        _check_range("staleness_weight", self.staleness_weight, 0.0, 100.0)
        _check_range("staleness_threshold", self.staleness_threshold, 1, 10_000)
        _check_range("spatial_bonus", self.spatial_bonus, 0.0, 100.0)
        _check_range("spatial_grid", self.spatial_grid, 1, 64)
        _check_range("score_max_queries", self.score_max_queries, 1, 10**9)

    def deep_start(self, num_layers: int) -> int:
        """Index of the first block that computes selectively (21 for 28 blocks with the defaults)."""
        return num_layers - int(round(self.deep_fraction * num_layers))

    def fresh_ratio_at(self, step: int, num_steps: int, layer: int, num_layers: int) -> float:
        """Share of tokens the feed-forward branch recomputes at ``step`` (denoising order) in ``layer``.

        ToCa's ``ToCa-ddim50`` schedule (``fresh_ratio_scheduler.py``), whose step counter counts down; here
        ``progress`` counts up, so ToCa's ``step / num_steps`` is ``1 - progress``.
        """
        progress = step / max(num_steps, 1)
        step_factor = 1 + self.step_weight - 2 * self.step_weight * (1 - progress)
        layer_factor = 1 + self.layer_weight - 2 * self.layer_weight * layer / max(num_layers - 1, 1)
        ratio = self.fresh_ratio * self.mlp_factor * step_factor * layer_factor
        return min(max(ratio, 0.0), 1.0)

    def num_fresh_tokens(self, num_tokens: int, step: int, num_steps: int, layer: int, num_layers: int) -> int:
        """Tokens recomputed at one selective step of one deep block (the authors floor the product)."""
        return int(math.floor(self.fresh_ratio_at(step, num_steps, layer, num_layers) * num_tokens))

    def score_query_stride(self, num_tokens: int) -> int:
        """Stride between the queries the attention-received score uses: at most ``score_max_queries`` of them.

        The runtime scores with every stride-th query and the FLOPs count charges exactly those.
        """
        return max(1, -(-num_tokens // self.score_max_queries))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectiveConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"SelectiveConfig settings are a mapping of field names to values, got {data!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"unknown SelectiveConfig fields {sorted(unknown)}; known: {known}")
        return cls(**data)


def split_layer(depth_split: float, num_layers: int) -> int:
    """Index of the first deep block: ``round(depth_split * num_layers)``, kept within ``[1, num_layers - 1]``."""
    if num_layers < 2:
        raise ValueError(f"a per-depth schedule needs at least 2 blocks, the model has {num_layers}")
    return min(max(round(depth_split * num_layers), 1), num_layers - 1)


@dataclass(frozen=True)
class Schedule:
    """An immutable caching schedule: one :class:`Action` per denoising step.

    Example:
        >>> s = Schedule.from_pattern([1, 0, 0, 1, 0, 1])
        >>> s.intervals
        (3, 2, 1)
        >>> s.inject_selective().pattern
        (1, 0, 2, 1, 0, 1)

    Attributes:
        actions: One action per step, in denoising order; the first must be ``FULL``.
        selective: Settings used on ``SELECTIVE`` steps.
        depth_split: Share of the blocks, from the input end, in the shallow group of ``DEEP`` and ``SHALLOW``
            steps (``split_layer``); unused by schedules without those actions.
        forecast_order: How non-FULL steps form the branch outputs they reuse: 0 returns them as cached at the
            last FULL step (FORA, ProCache); 1 extrapolates them linearly through the last two FULL steps'
            outputs (first-order TaylorSeer). Forecasting adds elementwise work only, which the FLOPs count
            leaves out like every elementwise operation (see ``docs/flops.md``).
        model_class: Class name of the transformer the schedule was searched for (optional).
        model_fingerprint: Hash of that transformer's config (optional, see ``procache_opt.fingerprint``).
        metadata: Free-form JSON-serialisable notes (search id, scores); ignored by the runtime.
    """

    actions: tuple[Action, ...]
    selective: SelectiveConfig = field(default_factory=SelectiveConfig)
    forecast_order: int = 0
    depth_split: float = 0.5
    model_class: str | None = None
    model_fingerprint: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        try:
            actions = tuple(Action(operator.index(a)) for a in self.actions)  # index(): 1.9 is not step 1
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"invalid schedule entry ({exc}); each step must be 0 (REUSE), 1 (FULL), 2 (SELECTIVE), 3 (DEEP: "
                "deep blocks compute) or 4 (SHALLOW: shallow blocks compute)"
            ) from None
        if not actions:
            raise ValueError("a schedule needs at least one step")
        if actions[0] != Action.FULL:
            raise ValueError(
                f"the first step of a schedule must be FULL (1): there is no cache to reuse yet; got {int(actions[0])}"
            )
        if not _is_int(self.forecast_order) or self.forecast_order not in FORECAST_ORDERS:
            raise ValueError(f"forecast_order={self.forecast_order!r}; allowed: {FORECAST_ORDERS} (0: reuse as cached, "
                             "1: first-order forecast from the last two FULL steps)")
        if not 0 < self.depth_split < 1:
            raise ValueError(f"depth_split={self.depth_split!r} is out of range; allowed: 0 < depth_split < 1 (the "
                             "share of blocks in the shallow group)")
        object.__setattr__(self, "actions", actions)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pattern(cls, pattern: Iterable[int], **kwargs: Any) -> Schedule:
        """Build a schedule from ProCache digits, e.g. ``[1, 0, 2, 0, 1, ...]``."""
        return cls(tuple(pattern), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_intervals(cls, intervals: Sequence[int], **kwargs: Any) -> Schedule:
        """Build a schedule from segment lengths; each segment is one FULL step then ``length - 1`` REUSE."""
        if any(int(n) < 1 for n in intervals):
            raise ValueError(f"interval lengths must be >= 1, got {list(intervals)}")
        pattern: list[int] = []
        for n in intervals:
            pattern += [1] + [0] * (int(n) - 1)
        return cls.from_pattern(pattern, **kwargs)

    @classmethod
    def full(cls, num_steps: int, **kwargs: Any) -> Schedule:
        """The schedule that computes every step in full (the reference)."""
        return cls.from_pattern([1] * num_steps, **kwargs)

    # -- views --------------------------------------------------------------------------------------------
    @property
    def pattern(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.actions)

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    @property
    def num_full(self) -> int:
        return sum(a == Action.FULL for a in self.actions)

    @property
    def intervals(self) -> tuple[int, ...]:
        """Lengths of the segments that each start with a FULL step (they sum to ``num_steps``)."""
        starts = [i for i, a in enumerate(self.actions) if a == Action.FULL] + [self.num_steps]
        return tuple(b - a for a, b in zip(starts, starts[1:], strict=False))

    @property
    def per_depth(self) -> bool:
        """Whether the block groups follow different patterns (the schedule has DEEP or SHALLOW steps)."""
        return any(a in (Action.DEEP, Action.SHALLOW) for a in self.actions)

    def split_layer(self, num_layers: int) -> int:
        """Index of the first deep block of this schedule's per-depth steps (see :func:`split_layer`)."""
        return split_layer(self.depth_split, num_layers)

    def group_actions(self, deep: bool) -> tuple[Action, ...]:
        """The pattern one block group follows: FULL, REUSE or SELECTIVE at each step."""
        return tuple(_GROUP_ACTIONS[a][int(deep)] for a in self.actions)

    def __len__(self) -> int:
        return self.num_steps

    def __str__(self) -> str:
        return "".join(str(p) for p in self.pattern)

    # -- transformations ----------------------------------------------------------------------------------
    def inject_selective(self, action: Action = Action.SELECTIVE) -> Schedule:
        """Every second position of each maximal REUSE run becomes SELECTIVE (ProCache Eq. 7), or ``action``.

        ``[0,0] -> [0,2]``, ``[0,0,0] -> [0,2,0]``, ``[0,0,0,0] -> [0,2,0,2]``. Existing non-REUSE steps end a
        run like FULL steps do. ``action=Action.DEEP`` gives the per-depth variant: at those positions the deep
        blocks compute in full instead of refreshing a few tokens.
        """
        out: list[int] = []
        run = 0
        for a in self.pattern:
            run = run + 1 if a == Action.REUSE else 0
            out.append(int(action) if a == Action.REUSE and run % 2 == 0 else a)
        return replace(self, actions=tuple(Action(a) for a in out))

    def to_cache_dit(self, lossy: bool = False, **options: Any) -> dict[str, Any]:
        """This schedule as the configuration ``cache_dit.load_configs`` (and SGLang's ``--cache-dit-config``) reads:
        FULL/REUSE steps become cache-dit's static steps computation mask.

        ``options`` are cache-dit settings (``Fn_compute_blocks``, ``calibrator="taylorseer"``, ...; default: those
        the schedule was searched with). SELECTIVE, DEEP/SHALLOW steps and ``forecast_order=1`` have no cache-dit
        equivalent: refused with a ``ValueError`` saying what would be lost, or converted with ``lossy=True``. See
        :func:`procache_opt.runtimes.cache_dit.export_config`, which also returns notes on what changed.

        Example:
            >>> Schedule.from_pattern([1, 0, 0, 1]).to_cache_dit()["cache_config"]["steps_computation_mask"]
            [1, 0, 0, 1]
        """
        from procache_opt.runtimes.cache_dit import export_config

        return export_config(self, lossy=lossy, **options).config

    def with_model(self, model_class: str | None, model_fingerprint: str | None) -> Schedule:
        return replace(self, model_class=model_class, model_fingerprint=model_fingerprint)

    # -- checks -------------------------------------------------------------------------------------------
    def check_compatible(self, num_steps: int | None = None, model_class: str | None = None,
                         model_fingerprint: str | None = None, strict: bool = False) -> None:
        """Fail on a step-count mismatch; warn (or fail if ``strict``) when made for another model."""
        if num_steps is not None and num_steps != self.num_steps:
            raise ScheduleMismatchError(
                f"the schedule has {self.num_steps} steps but the pipeline runs {num_steps}; call the pipeline "
                f"with num_inference_steps={self.num_steps} or search a schedule for {num_steps} steps"
            )
        mismatch = []
        if self.model_class and model_class and self.model_class != model_class:
            mismatch.append(f"class {self.model_class} != {model_class}")
        if self.model_fingerprint and model_fingerprint and self.model_fingerprint != model_fingerprint:
            mismatch.append(f"config fingerprint {self.model_fingerprint} != {model_fingerprint}")
        if mismatch:
            msg = "the schedule was searched for another model (" + "; ".join(mismatch) + ")"
            if strict:
                raise ScheduleMismatchError(msg)
            warnings.warn(msg + "; its quality there is unknown", UserWarning, stacklevel=3)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "num_steps": self.num_steps,
            "pattern": list(self.pattern),
            "selective": self.selective.to_dict(),
            "forecast_order": self.forecast_order,
            "depth_split": self.depth_split,
            "model": {"class": self.model_class, "fingerprint": self.model_fingerprint},
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Schedule:
        """Read :meth:`to_dict`'s output back, refusing anything it could not have written.

        Nothing is coerced: a pattern of ``1.9`` is not a FULL step and a ``forecast_order`` of ``1.5`` is not
        order 1, so wrong values are errors that name the key, not schedules that differ from the file.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a schedule is a JSON object with a 'pattern', got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported schedule format_version {version!r}; this procache-opt reads {FORMAT_VERSION}"
            )
        if "pattern" not in data:
            raise ValueError("the schedule has no 'pattern' (one action digit per step, e.g. [1, 0, 2, 1])")
        pattern = data["pattern"]
        if not isinstance(pattern, list) or not all(_is_int(a) for a in pattern):
            raise ValueError(f"the schedule's 'pattern' must be a list of integer action digits, got {pattern!r}"[:300])
        if "num_steps" in data and (not _is_int(data["num_steps"]) or data["num_steps"] != len(pattern)):
            raise ValueError(
                f"corrupt schedule: num_steps={data['num_steps']!r} but the pattern has {len(pattern)} steps"
            )
        model = _typed(data, "model", dict, {}) or {}
        for key in ("class", "fingerprint"):
            if model.get(key) is not None and not isinstance(model[key], str):
                raise ValueError(f"the schedule's model.{key} must be a string or null, got {model[key]!r}")
        forecast_order = _typed(data, "forecast_order", int, 0)
        depth_split = _typed(data, "depth_split", (int, float), 0.5)
        return cls.from_pattern(
            pattern,
            selective=SelectiveConfig.from_dict(_typed(data, "selective", dict, {})),
            forecast_order=forecast_order,
            depth_split=float(depth_split),
            model_class=model.get("class"),
            model_fingerprint=model.get("fingerprint"),
            metadata=dict(_typed(data, "metadata", dict, {})),
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the schedule as JSON atomically (temporary file, then ``os.replace``)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Read a schedule file; a malformed one raises ``ValueError`` naming the file and what is wrong."""
        data = read_json(path, "schedule file")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise CorruptFileError(f"schedule file {path}: {exc}") from None

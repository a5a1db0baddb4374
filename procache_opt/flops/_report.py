"""``count_flops``: the cost of one generation under a schedule, by action and by module kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from procache_opt.costs import StepCosts
from procache_opt.flops._count import ACTIONS, MODULE_KINDS, costs_from_tables, forward_batch, forward_macs, step_tables
from procache_opt.flops._spec import resolve_spec
from procache_opt.schedule import Schedule

__all__ = ["FlopsReport", "count_flops"]

_UNIT_NOTE = "MACs (FLOPs = 2 × MACs)"


@dataclass(frozen=True)
class FlopsReport:
    """Multiply-accumulates (MACs) of one generation; ``print(report)`` shows them as a small table.

    Attributes:
        model: The counted model's shapes, e.g. ``"dit (28 blocks x 1152 wide, 256 tokens)"``.
        schedule: The schedule's pattern, e.g. ``"1020110..."``.
        forward_batch: Samples per transformer forward (images, doubled by batched guidance).
        macs_total: MACs of the whole generation; equals ``costs.total(schedule)``.
        macs_full_total: MACs of the same generation with every step FULL.
        per_action: MACs summed over the steps of each action, by action name (``"FULL"``, ...).
        steps_per_action: Number of steps of each action.
        per_module: MACs of the whole generation by module kind (:data:`MODULE_KINDS`).
        forward_macs: MACs of one FULL forward of one sample (batch 1, no guidance) by module kind: the
            per-forward figure papers report (DiT, Table 4).
        costs: The per-step table every total above is summed from.
    """

    model: str
    schedule: str
    forward_batch: int
    macs_total: int
    macs_full_total: int
    per_action: Mapping[str, int]
    steps_per_action: Mapping[str, int]
    per_module: Mapping[str, int]
    forward_macs: Mapping[str, int]
    costs: StepCosts = field(repr=False)

    @property
    def num_inference_steps(self) -> int:
        return len(self.schedule)

    @property
    def flops_total(self) -> int:
        return 2 * self.macs_total

    @property
    def flops_full_total(self) -> int:
        return 2 * self.macs_full_total

    @property
    def ratio(self) -> float:
        """Counted cost as a fraction of full computation (ProCache and ToCa report its inverse, the speedup)."""
        return self.macs_total / self.macs_full_total

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio

    @property
    def macs_per_forward(self) -> int:
        return sum(self.forward_macs.values())

    @property
    def forward_matmul_macs(self) -> int:
        """:attr:`macs_per_forward` without the elementwise ``"norm"`` work: what FlopCounterMode counts."""
        return self.macs_per_forward - self.forward_macs["norm"]

    def __str__(self) -> str:
        return self._render(markdown=False)

    def to_markdown(self) -> str:
        """The same tables as ``str(report)``, as Markdown."""
        return self._render(markdown=True)

    def _render(self, markdown: bool) -> str:
        actions = [(name, str(self.steps_per_action[name]), _si(macs), f"{macs / self.macs_total:.1%}")
                   for name, macs in self.per_action.items() if self.steps_per_action[name]]
        modules = [(kind, _si(macs), f"{macs / self.macs_total:.1%}") for kind, macs in self.per_module.items() if macs]
        return "\n".join([
            f"{_UNIT_NOTE} of {self.model}: {self.num_inference_steps} steps, "
            f"{self.forward_batch} sample(s) per forward",
            f"schedule {self.schedule}",
            f"total {_si(self.macs_total, 'MACs')} = {_si(self.flops_total, 'FLOPs')}; full computation "
            f"{_si(self.macs_full_total, 'MACs')}; ratio {self.ratio:.3f} ({self.speedup:.2f}x fewer)",
            f"one FULL forward of one sample: {_si(self.macs_per_forward, 'MACs')} "
            f"({_si(self.forward_matmul_macs, 'MACs')} in matrix products)",
            "",
            _table(("action", "steps", "MACs", "share"), actions, markdown),
            "",
            _table(("module", "MACs", "share"), modules, markdown),
        ])


def count_flops(
    model_or_config: Any,
    schedule: Schedule | Sequence[int] | None = None,
    num_inference_steps: int | None = None,
    guidance: bool = True,
    batch_size: int = 1,
) -> FlopsReport:
    """Count the MACs of one generation that follows ``schedule``, analytically, from the model's config.

    Works on full-size models without weights: pass a preset name or a ``config.json`` mapping.

    Args:
        model_or_config: A diffusers ``DiTTransformer2DModel`` / ``PixArtTransformer2DModel``, a pipeline (its
            ``.transformer``), a config mapping (``FrozenDict``, ``config.json``), a :class:`ModelSpec` or a
            name in :data:`PRESETS`.
        schedule: A :class:`~procache_opt.Schedule` or ProCache pattern; ``None``: every step FULL. Its
            ``selective`` settings cost the SELECTIVE steps, its ``depth_split`` the DEEP and SHALLOW ones.
        num_inference_steps: Steps of the generation; needed without a schedule, checked against one.
        guidance: Batched classifier-free guidance (batch 2 per image, as ToCa and ProCache report).
        batch_size: Images per generation.

    Raises:
        ScheduleMismatchError: ``schedule`` has another number of steps than ``num_inference_steps``.

    Example:
        >>> from procache_opt import Schedule
        >>> report = count_flops("dit-xl-2-256", Schedule.from_intervals([4, 3, 3]).inject_selective())
        >>> report.per_action["FULL"] == 3 * report.costs.full[0]
        True
    """
    spec = resolve_spec(model_or_config)
    if schedule is None:
        if num_inference_steps is None:
            raise ValueError("count_flops needs num_inference_steps or a schedule")
        schedule = Schedule.full(num_inference_steps)
    elif not isinstance(schedule, Schedule):
        schedule = Schedule.from_pattern(schedule)
    schedule.check_compatible(num_steps=num_inference_steps)
    batch = forward_batch(guidance, batch_size)
    tables = step_tables(spec, schedule.num_steps, schedule.selective, batch, schedule.depth_split)
    costs = costs_from_tables(tables, schedule.depth_split)
    steps = list(enumerate(schedule.actions))
    return FlopsReport(
        model=str(spec),
        schedule=str(schedule),
        forward_batch=batch,
        macs_total=costs.total(schedule),
        macs_full_total=costs.full_total,
        per_action=MappingProxyType({a.name: sum(costs.of(a, t) for t, b in steps if b == a) for a in ACTIONS}),
        steps_per_action=MappingProxyType({a.name: sum(b == a for _, b in steps) for a in ACTIONS}),
        per_module=MappingProxyType({k: sum(tables[a][t][k] for t, a in steps) for k in MODULE_KINDS}),
        forward_macs=MappingProxyType(forward_macs(spec)),
        costs=costs,
    )


def _si(value: float, unit: str = "") -> str:
    """``118.67 G``-style numbers."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        return "\n".join("| " + " | ".join(row) + " |" for row in (header, ("---",) * len(header), *rows))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    aligned = ([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
               for row in (header, *rows))
    return "\n".join("  ".join(cells) for cells in aligned)

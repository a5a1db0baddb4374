"""The baseline rows of a comparison, each at a cost matched to the searched schedules.

* FORA (Selvaraju et al. 2024, arXiv 2407.01425): full computation every ``n`` steps, reuse in between
  (``n`` = 2, 3, 4, whatever the budget).
* FORA plus ProCache's selective computation (arXiv 2512.17298, Eq. 7): the shortest FORA interval whose
  counted FLOPs fit the budget, with every second reused step made SELECTIVE.
* ToCa-style token caching (Zou et al. 2024, arXiv 2410.05317) on a fixed interval: every non-full step is
  SELECTIVE with ``SelectiveConfig(deep_fraction=1.0)``, so *all* blocks recompute the feed-forward branch of
  their most important tokens and reuse the rest. An approximation of ToCa: ToCa also caches and refreshes
  attention tokens and picks tokens with its own scores; here the attention branch is reused whole and tokens
  are picked by ProCache's scores (attention received, staleness, spatial bonus). The interval is the shortest
  whose counted FLOPs fit the budget.
* Fewer denoising steps at equal FLOPs: ``k = round(budget * T)`` plain DDIM steps, scored against the
  ``T``-step full computation on the same noise and labels.
* diffusers' caches (First-Block-Cache, TaylorSeer, MagCache, FasterCache, PAB; see
  :mod:`procache_opt.compare.diffusers_caches`) and cache-dit's dynamic DBCache
  (:mod:`procache_opt.compare.cache_dit_rows`): each family's settings are timed once and the setting whose
  measured speedup is closest to that of the searched schedule at the budget is kept. Their FLOPs are not
  counted (they decide at run time what to skip); their branch-evaluation share is.
* cache-dit's hand-written step masks (budget-independent, with and without its TaylorSeer calibrator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from procache_opt.baselines import best_fora_within, fora, shortest_interval_within
from procache_opt.compare.cache_dit_rows import SCM, dbcache_families, scm_methods
from procache_opt.compare.diffusers_caches import CACHES, DiffusersCache
from procache_opt.compare.measure import Bench, Measured, Method
from procache_opt.flops import step_costs
from procache_opt.runtimes import Runtime
from procache_opt.schedule import Action, Schedule, SelectiveConfig

__all__ = ["OURS", "Row", "TOCA_SELECTIVE", "fixed_methods", "matched_methods", "toca_style", "closest_setting",
           "run_rows", "tuned_families"]

logger = logging.getLogger("procache_opt.compare")

#: Family name of the searched schedule's rows, measured like every baseline.
OURS = "ProCache, searched"

#: ToCa-style selective computation: every block, not only ProCache's deep quarter.
TOCA_SELECTIVE = SelectiveConfig(deep_fraction=1.0)


@dataclass(frozen=True)
class Row:
    """One line of the baselines table.

    Attributes:
        group: ``"fixed"`` (budget-independent rows) or the budget the row is matched to, e.g. ``"0.5"``.
        family: The method's name.
        setting: Its setting in words.
        measured: Its measurements, or ``None`` when it could not run (then ``reason`` says why).
        reason: Why the method is not applicable here.
    """

    group: str
    family: str
    setting: str
    measured: Measured | None = None
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.group}|{self.family}|{self.setting}"

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "family": self.family, "setting": self.setting, "reason": self.reason,
                "measured": self.measured.to_dict() if self.measured is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        measured = Measured.from_dict(data["measured"]) if data.get("measured") else None
        return cls(data["group"], data["family"], data["setting"], measured, data.get("reason", ""))


def toca_style(num_steps: int, interval: int) -> Schedule:
    """FULL every ``interval`` steps, SELECTIVE (all blocks, :data:`TOCA_SELECTIVE`) on every other step."""
    pattern = [Action.FULL if t % interval == 0 else Action.SELECTIVE for t in range(num_steps)]
    return Schedule.from_pattern(pattern, selective=TOCA_SELECTIVE)


def fixed_methods(num_steps: int) -> list[Method]:
    """FORA with intervals 2, 3 and 4: the budget-independent rows."""
    return [Method("FORA", f"interval={n}", schedule=fora(num_steps, n)) for n in (2, 3, 4)]


def matched_methods(transformer: Any, num_steps: int, budget: float, guidance: bool) -> list[Method]:
    """FORA + selective, ToCa-style and fewer steps, each at most ``budget`` counted FLOPs."""
    costs = step_costs(transformer, num_steps, guidance=guidance)
    fora_sel = best_fora_within(costs, budget, selective=True)
    toca_costs = step_costs(transformer, num_steps, selective=TOCA_SELECTIVE, guidance=guidance)
    toca = shortest_interval_within(lambda n: toca_style(num_steps, n), toca_costs, budget)
    steps = max(1, round(budget * num_steps))
    return [
        Method("FORA + selective (Eq. 7)", f"interval={fora_sel.intervals[0]}", schedule=fora_sel),
        Method("ToCa-style (all blocks selective)", f"interval={toca.intervals[0]}", schedule=toca),
        Method("Fewer DDIM steps", f"{steps} steps", steps=steps),
    ]


def closest_setting(speedups: Mapping[Any, float], target: float) -> Any:
    """The setting whose measured speedup is closest to ``target`` (ties: the first in grid order)."""
    if not speedups:
        raise ValueError("no setting was measured")
    return min(speedups, key=lambda knob: abs(speedups[knob] - target))


def tuned_families(mag_ratios: tuple[float, ...] | None, num_blocks: int) -> dict[str, dict[str, Runtime]]:
    """Runtimes that decide at run time what to skip, by family and setting: the comparison keeps, per budget, the
    setting of each family whose measured speedup is closest to the searched schedule's."""
    families: dict[str, dict[str, Runtime]] = {
        kind.title: {f"{kind.knob}={knob:g}": DiffusersCache(name, knob, mag_ratios) for knob in kind.grid}
        for name, kind in CACHES.items()
    }
    return {**families, **dbcache_families(num_blocks)}


def run_rows(bench: Bench, ours: Mapping[str, Method], transformer: Any, done: Mapping[str, Row],
             save: Callable[[Row, Any], None], grid: dict[str, dict[str, float]],
             save_grid: Callable[[], None], progress: Callable[[str], None]) -> list[Row]:
    """Measure every baseline row not in ``done``; ``save`` persists each row (and its images) as it finishes.

    Args:
        bench: Scores and times every method.
        ours: The searched schedule of each budget, by group label (``"0.5"``), as a :class:`Method`.
        transformer: The pipeline's transformer (for FLOPs counting).
        done: Rows measured before an interruption, by :attr:`Row.key`.
        save: Called with each new row and its images.
        grid: Measured speedup of each tuned setting, by family and setting (filled in and reused).
        save_grid: Persists ``grid`` after each new measurement.
        progress: Called with a short description before each measurement.
    """
    steps = bench.num_inference_steps
    guidance = bench.guidance_scale > 1
    rows = [_measure(bench, "fixed", m, done, save, progress) for m in fixed_methods(steps)]
    try:
        rows += [_measure(bench, "fixed", m, done, save, progress) for m in scm_methods(steps)]
    except ImportError as exc:  # cache-dit is an extra: its rows say how to get them
        rows.append(_not_applicable("fixed", SCM, exc, save))
    families = tuned_families(bench.mag_ratios, len(transformer.transformer_blocks))
    for group, our_method in ours.items():
        ours_row = _measure(bench, group, our_method, done, save, progress)
        rows.append(ours_row)
        for method in matched_methods(transformer, steps, float(group), guidance):
            rows.append(_measure(bench, group, method, done, save, progress))
        target = ours_row.measured.speedup if ours_row.measured else 1.0
        for family, settings in families.items():
            rows.append(_tuned(bench, group, family, settings, target, grid, save_grid, done, save, progress))
    return rows


def _measure(bench: Bench, group: str, method: Method, done: Mapping[str, Row],
             save: Callable[[Row, Any], None], progress: Callable[[str], None],
             speedup: float | None = None) -> Row:
    row = Row(group, method.family, method.setting)
    if row.key in done:
        return done[row.key]
    progress(f"{group}: {method.family} {method.setting}")
    measured, images = bench.measure(method, time_it=speedup is None)
    if speedup is not None:
        measured = Measured(measured.flops_ratio, measured.compute_share, speedup, measured.scores,
                            measured.per_sample)
    row = Row(group, method.family, method.setting, measured)
    save(row, images)
    return row


def _tuned(bench: Bench, group: str, family: str, settings: Mapping[str, Runtime], target: float,
           grid: dict[str, dict[str, float]], save_grid: Callable[[], None], done: Mapping[str, Row],
           save: Callable[[Row, Any], None], progress: Callable[[str], None]) -> Row:
    """Time each setting of one family (once for all budgets), keep the one nearest ``target``."""
    failed = Row(group, family, "")
    if failed.key in done:  # found not applicable before: not tried again on resume
        return done[failed.key]
    try:
        measured = grid.setdefault(family, {})
        for setting, runtime in settings.items():
            if setting not in measured:
                progress(f"timing {family} {setting}")
                measured[setting] = bench.speedup(Method(family, setting, runtime=runtime))
                save_grid()
        setting = closest_setting({k: v for k, v in measured.items() if k in settings}, target)
        method = Method(family, setting, runtime=settings[setting])
        return _measure(bench, group, method, done, save, progress, speedup=measured[setting])
    except Exception as exc:  # a method that cannot run on this model is a result (a "not applicable" row)
        logger.warning("%s does not run on this pipeline: %s", family, exc)
        return _not_applicable(group, family, exc, save)


def _not_applicable(group: str, family: str, exc: Exception, save: Callable[[Row, Any], None]) -> Row:
    row = Row(group, family, "", reason=f"not applicable: {type(exc).__name__}: {exc}")
    save(row, None)
    return row

"""cache-dit (PyPI ``cache-dit``, vipshop/cache-dit) as a runtime to search for and an export target.

cache-dit's DBCache runs the first ``Fn_compute_blocks`` and last ``Bn_compute_blocks`` transformer blocks at
every step; on a *cached* step it skips the blocks between them and adds their residual from the last computed
step (optionally forecast by its TaylorSeer calibrator, Liu et al. 2025, arXiv 2503.06923). Which steps compute
is decided either at run time (dynamic: the first blocks' residual changed by more than
``residual_diff_threshold``) or by a static *steps computation mask* (SCM, ``steps_computation_mask``: ``1``
compute, ``0`` cache). A schedule of FULL and REUSE steps *is* such a mask, so this runtime hands the searched
pattern to cache-dit as its SCM with ``steps_computation_policy: static`` and nothing else decides.

The configuration is the file format ``cache_dit.load_configs`` reads (and SGLang's ``--cache-dit-config``, which
calls it): a ``cache_config`` mapping. :meth:`CacheDitRuntime.config_for` writes it and :meth:`CacheDitRuntime.
apply` loads it through ``cache_dit.load_configs`` and ``cache_dit.enable_cache``, so an exported file runs
exactly what the search scored.

What cache-dit cannot express (:meth:`CacheDitRuntime.check`): SELECTIVE steps (ProCache's token refresh in the
deep blocks), DEEP and SHALLOW steps (a block group per step; cache-dit computes the same Fn/Bn blocks at every
cached step) and ``forecast_order=1`` (a forecast of each block's branch outputs). :func:`export_config` with
``lossy=True`` converts them and says what changed.

This module imports neither torch nor cache-dit (``SearchConfig`` checks a runtime before either loads).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from procache_opt.costs import StepCosts
from procache_opt.runtimes._base import DEFAULT_SELECTIVE, Runtime, RuntimeHandle, UnsupportedScheduleError, listed
from procache_opt.schedule import Action, Schedule, SelectiveConfig

__all__ = ["CALIBRATORS", "EXPORT_HEADER", "SCM_POLICIES", "CacheDitExport", "CacheDitRuntime", "export_config",
           "scm_schedule"]

#: cache-dit's calibrators this runtime sets (cache-dit also has DMD and FoCa; not wired here).
CALIBRATORS = ("taylorseer",)
#: First line of every exported file (``procache-opt export`` overwrites only files that start with it).
EXPORT_HEADER = "# cache-dit configuration written by procache-opt"
#: cache-dit's hand-written steps computation masks (``cache_dit.steps_mask(mask_policy=...)``), most computed first.
SCM_POLICIES = ("slow", "medium", "fast", "ultra")


@dataclass(frozen=True)
class CacheDitRuntime(Runtime):
    """Run schedules (or cache-dit's own dynamic DBCache) through cache-dit.

    Attributes:
        Fn_compute_blocks: Blocks computed first at every step (cache-dit requires at least 1; its default of 8
            made ``dit-digits``, 12 blocks, slower than no cache at all).
        Bn_compute_blocks: Blocks computed last at every step, after the cached residual is added.
        calibrator: ``"taylorseer"``: forecast the cached residual from the computed steps (cache-dit's TaylorSeer
            calibrator) instead of reusing it as it is; ``None``: reuse as it is.
        taylorseer_order: Order of the TaylorSeer forecast.
        residual_diff_threshold: Dynamic DBCache only (applied without a schedule): cache a step when the first
            blocks' residual changed by less than this (relative L1).
        max_warmup_steps: Dynamic DBCache only: steps always computed at the start.
        max_continuous_cached_steps: Dynamic DBCache only: at most this many cached steps in a row (-1: no limit).

    Example:
        >>> runtime = CacheDitRuntime(Fn_compute_blocks=1, calibrator="taylorseer")
        >>> config = runtime.config_for(Schedule.from_pattern([1, 1, 0, 1, 0]))["cache_config"]
        >>> config["steps_computation_mask"], config["steps_computation_policy"], config["enable_taylorseer"]
        ([1, 1, 0, 1, 0], 'static', True)
    """

    name: ClassVar[str] = "cache-dit"
    actions: ClassVar[frozenset[Action]] = frozenset({Action.FULL, Action.REUSE})
    forecast_orders: ClassVar[tuple[int, ...]] = (0,)
    forecast_note: ClassVar[str] = ("cache-dit forecasts with its TaylorSeer calibrator: runtime_options "
                                    "calibrator='taylorseer'")
    runs_without_schedule: ClassVar[bool] = True
    module: ClassVar[str | None] = "cache_dit"
    extra: ClassVar[str | None] = "cache-dit"

    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    calibrator: str | None = None
    taylorseer_order: int = 1
    residual_diff_threshold: float = 0.08
    max_warmup_steps: int = 8
    max_continuous_cached_steps: int = -1

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(f"cache-dit runtime option {name}={getattr(self, name)!r} is out of range; {rule}")

        check("Fn_compute_blocks", _is_int(self.Fn_compute_blocks) and self.Fn_compute_blocks >= 1,
              "allowed: an integer >= 1 (cache-dit computes at least the first block)")
        check("Bn_compute_blocks", _is_int(self.Bn_compute_blocks) and self.Bn_compute_blocks >= 0,
              "allowed: an integer >= 0")
        check("calibrator", self.calibrator is None or self.calibrator in CALIBRATORS,
              f"allowed: None or one of {CALIBRATORS}")
        check("taylorseer_order", _is_int(self.taylorseer_order) and 1 <= self.taylorseer_order <= 4,
              "allowed: an integer in [1, 4]")
        threshold = self.residual_diff_threshold
        check("residual_diff_threshold", isinstance(threshold, int | float) and not isinstance(threshold, bool)
              and math.isfinite(threshold) and threshold >= 0, "allowed: a finite number >= 0")
        check("max_warmup_steps", _is_int(self.max_warmup_steps) and self.max_warmup_steps >= 0,
              "allowed: an integer >= 0")
        check("max_continuous_cached_steps", _is_int(self.max_continuous_cached_steps)
              and self.max_continuous_cached_steps >= -1, "allowed: an integer >= -1 (-1: no limit)")

    @property
    def computed_blocks(self) -> int:
        """Blocks a cached step still runs (Fn + Bn)."""
        return self.Fn_compute_blocks + self.Bn_compute_blocks

    @property
    def label(self) -> str:
        """cache-dit's own short name for the setting, e.g. ``F1B0 + TaylorSeer``."""
        calibrator = f" + TaylorSeer (order {self.taylorseer_order})" if self.calibrator else ""
        return f"F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}{calibrator}"

    # -- what cache-dit can run ---------------------------------------------------------------------------
    def check(self, schedule: Schedule | None) -> None:
        """One line naming what cache-dit would lose of ``schedule`` (see the module docstring)."""
        if schedule is None:
            return
        lost = _losses(schedule)
        if lost:
            raise UnsupportedScheduleError(
                "cache-dit cannot express this schedule: " + "; ".join(f"{x.subject} would lose {x.lost}" for x in lost)
                + ". Convert it with lossy=True (procache-opt export --lossy), or search with runtime='cache-dit' for "
                "a schedule that cache-dit runs as scored")

    def step_costs(self, transformer: Any, num_steps: int, *, guidance: bool,
                   selective: SelectiveConfig = DEFAULT_SELECTIVE, depth_split: float = 0.5) -> StepCosts:
        """A cached step runs the Fn + Bn blocks, the patch embedding and the output layer
        (:func:`procache_opt.flops.residual_cache_costs`)."""
        from procache_opt.flops import residual_cache_costs

        return residual_cache_costs(transformer, num_steps, self.computed_blocks, guidance=guidance)

    def block_outcomes(self, schedule: Schedule, num_layers: int) -> Counter[str]:
        """Computed steps run every block; cached steps run the Fn + Bn blocks and reuse (or, with the calibrator,
        forecast) the residual of the others."""
        return self.blocks_for(schedule.num_full, schedule.num_steps - schedule.num_full, num_layers)

    def blocks_for(self, computed_steps: int, cached_steps: int, num_layers: int) -> Counter[str]:
        """Block evaluations of ``computed_steps`` computed and ``cached_steps`` cached steps."""
        run = min(num_layers, self.computed_blocks)
        return Counter({"computed": computed_steps * num_layers + cached_steps * run,
                        "forecast" if self.calibrator else "reused": cached_steps * (num_layers - run)})

    # -- the configuration file -----------------------------------------------------------------------------
    def config_for(self, schedule: Schedule | None) -> dict[str, Any]:
        """The mapping ``cache_dit.load_configs`` reads: ``{"cache_config": {...}}``.

        With a schedule, its pattern is the static steps computation mask; without one, cache-dit's dynamic
        DBCache decides (threshold, warm-up and run-length settings apply only then).
        """
        self.check(schedule)
        cache: dict[str, Any] = {  # no cache_type: the file format assumes DBCache (a string there breaks 1.5.3)
            "Fn_compute_blocks": self.Fn_compute_blocks,
            "Bn_compute_blocks": self.Bn_compute_blocks,
        }
        if schedule is None:
            cache.update(residual_diff_threshold=self.residual_diff_threshold, max_warmup_steps=self.max_warmup_steps,
                         max_continuous_cached_steps=self.max_continuous_cached_steps)
        else:
            cache.update(num_inference_steps=schedule.num_steps, steps_computation_mask=list(schedule.pattern),
                         steps_computation_policy="static")
        cache["enable_taylorseer"] = self.calibrator == "taylorseer"
        if self.calibrator == "taylorseer":
            cache["taylorseer_order"] = self.taylorseer_order
        return {"cache_config": cache}

    def apply(self, pipe: Any, schedule: Schedule | None) -> RuntimeHandle:
        """``cache_dit.enable_cache(pipe, **cache_dit.load_configs(self.config_for(schedule)))``, undone exactly by
        the handle's ``remove()``."""
        from procache_opt.runtimes._cache_dit_handle import enable

        return enable(pipe, self, schedule)


@dataclass(frozen=True)
class CacheDitExport:
    """A schedule as a cache-dit configuration.

    Attributes:
        config: What ``cache_dit.load_configs`` reads.
        runtime: The cache-dit settings it was made with.
        notes: What a lossy conversion changed, and what differs from the run the schedule was searched with.
    """

    config: dict[str, Any]
    runtime: CacheDitRuntime
    notes: tuple[str, ...] = ()

    def to_yaml(self, source: str = "") -> str:
        """The configuration as YAML with a header saying where it came from and how to load it."""
        import yaml

        from procache_opt import __version__

        header = [f"{EXPORT_HEADER} {__version__}"
                  + (f" from {source}" if source else ""),
                  "# load: cache_dit.enable_cache(pipe, **cache_dit.load_configs(PATH)), or sglang --cache-dit-config "
                  "PATH", *(f"# note: {note}" for note in self.notes)]
        return "\n".join(header) + "\n" + yaml.safe_dump(self.config, sort_keys=False, default_flow_style=None)


def export_config(schedule: Schedule, lossy: bool = False, **options: Any) -> CacheDitExport:
    """``schedule`` as a cache-dit configuration file's contents.

    Args:
        schedule: A schedule; one searched with ``runtime="cache-dit"`` keeps its runtime settings (its
            ``metadata["runtime"]``), which ``options`` override.
        lossy: Convert what cache-dit cannot express instead of refusing it: SELECTIVE steps become cached steps,
            DEEP and SHALLOW steps computed steps, ``forecast_order=1`` cache-dit's TaylorSeer calibrator.
        **options: :class:`CacheDitRuntime` fields (``Fn_compute_blocks``, ``calibrator``, ...).

    Raises:
        UnsupportedScheduleError: ``schedule`` has what cache-dit cannot express and ``lossy`` is false.

    Example:
        >>> print(export_config(Schedule.from_pattern([1, 0, 2, 1]), lossy=True).notes[0][:59])
        lossy: 1 SELECTIVE step (2) at step 2 runs as a cached step
    """
    searched = schedule.metadata.get("runtime") if isinstance(schedule.metadata.get("runtime"), Mapping) else {}
    stored = dict(searched.get("options", {})) if searched.get("name") == CacheDitRuntime.name else {}
    runtime = CacheDitRuntime(**{**stored, **options})
    notes: list[str] = []
    lost = _losses(schedule)
    if lost and not lossy:
        runtime.check(schedule)  # raises, naming what is lost
    if lost:
        notes += [f"lossy: {x.subject} {x.becomes}, losing {x.lost}" for x in lost]
        pattern = [_LOSSY.get(a, a) for a in schedule.actions]
        if schedule.forecast_order == 1 and runtime.calibrator is None:
            runtime = replace(runtime, calibrator="taylorseer", taylorseer_order=1)
        schedule = replace(schedule, actions=tuple(pattern), forecast_order=0)
    if searched.get("name", CacheDitRuntime.name) != CacheDitRuntime.name:
        notes.append(f"searched with the {searched['name']} runtime, which reuses each block's branch outputs; "
                     "cache-dit adds the skipped blocks' summed residual instead, so the quality in cache-dit differs "
                     "from the searched one (search with runtime='cache-dit' for a mask scored in cache-dit)")
    return CacheDitExport(runtime.config_for(schedule), runtime, tuple(notes))


def scm_schedule(policy: str, num_steps: int) -> Schedule:
    """cache-dit's hand-written steps computation mask ``policy`` for ``num_steps`` steps, as a schedule (needs
    cache-dit: the masks are cache-dit's own ``steps_mask``, not a copy)."""
    if policy not in SCM_POLICIES:
        raise ValueError(f"unknown cache-dit mask policy {policy!r}; known: {', '.join(SCM_POLICIES)}")
    from procache_opt._optional import require

    cache_dit = require("cache_dit", "cache-dit", "cache-dit's steps computation masks")
    mask = cache_dit.steps_mask(total_steps=num_steps, mask_policy=policy)
    return Schedule.from_pattern(mask, metadata={"cache_dit_mask_policy": policy})


#: What a lossy conversion runs instead of each action cache-dit cannot express.
_LOSSY = {Action.SELECTIVE: Action.REUSE, Action.DEEP: Action.FULL, Action.SHALLOW: Action.FULL}
_PER_DEPTH_LOSS = "computation (cache-dit computes the same Fn/Bn blocks at every cached step)"
_LOST = {Action.SELECTIVE: "ProCache's token refresh in the deep blocks",
         Action.DEEP: f"the deep blocks' own {_PER_DEPTH_LOSS}",
         Action.SHALLOW: f"the shallow blocks' own {_PER_DEPTH_LOSS}"}


@dataclass(frozen=True)
class _Loss:
    """One part of a schedule cache-dit cannot express: ``subject`` would lose ``lost``; lossy, it ``becomes``."""

    subject: str
    lost: str
    becomes: str


def _losses(schedule: Schedule) -> list[_Loss]:
    out = []
    for action, lost in _LOST.items():
        steps = [t for t, a in enumerate(schedule.actions) if a == action]
        if steps:
            kind = "cached" if _LOSSY[action] == Action.REUSE else "computed"
            s = "s" if len(steps) > 1 else ""
            out.append(_Loss(f"{len(steps)} {action.name} step{s} ({int(action)}) at step{s} {listed(steps)}", lost,
                             f"run{'' if s else 's'} as {'' if s else 'a '}{kind} step{s}"))
    if schedule.forecast_order == 1:
        out.append(_Loss("forecast_order=1", "this project's forecast of each block's branch outputs",
                         "becomes cache-dit's TaylorSeer calibrator (order 1) on the cached residual"))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

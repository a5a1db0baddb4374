"""The :class:`ScheduleSpace`: ProCache's feasible caching patterns, counted exactly and sampled uniformly."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import accumulate, islice
from typing import Any, Literal

import numpy as np

from procache_opt.costs import StepCosts
from procache_opt.schedule import Action, Schedule, SelectiveConfig
from procache_opt.space._dp import (
    FLOPS_QUANTUM,
    Chooser,
    CountTable,
    Monotone,
    Rules,
    budget_units,
    min_cost_by_num_full,
    segment_cost_table,
)
from procache_opt.space._moves import diagnose_empty, format_ranges, neighbour_intervals
from procache_opt.space._paths import Order, PathPoint, SegmentGraph

__all__ = ["ScheduleSpace"]

FORMAT_VERSION = 1
_ORDER_WORDS = {"decreasing": "never growing along denoising", "increasing": "never shrinking along denoising",
                None: "in any order"}


@dataclass(frozen=True)
class ScheduleSpace:
    """The caching patterns ProCache allows (Section 3.2), each a :class:`Schedule`.

    A member is a partition of the ``num_steps`` steps into segments (intervals), each one FULL step then
    ``v`` reused steps, so a segment is ``v + 1`` long. Its pattern is the binary pattern of its segments
    with selective computation injected (Eq. 7) when ``selective``. The constraints, as in the paper and the
    authors' ``CASS.py``:

    * the first step is FULL (there is no cache yet);
    * bounded (Eq. 4): ``v_min <= v <= v_max`` for every segment, the last one included;
    * monotone (Eq. 3): ``"decreasing"``: reuse intervals never grow as denoising proceeds (the paper's
      rule); ``"increasing"``: never shrink (what the authors' released PixArt sampler, and their DiT
      sampler before a fix, effectively ran: both index the pattern back to front); ``None``: any order;
    * budget (Eq. 2): exactly ``num_full`` FULL steps and/or at least ``min_full``; and/or a counted FLOPs
      ratio (of the injected pattern, from ``costs``) of at most ``max_flops_ratio``.

    The FLOPs budget is checked on segment costs rounded *up* to :data:`FLOPS_QUANTUM` (1e-4) of the full
    computation, so :meth:`contains` and :meth:`count` agree exactly and a member's true ratio never exceeds
    its quantised ratio (nor, hence, the budget).

    Per-depth spaces (``refresh="deep"``, beyond ProCache): the Eq. 7 positions become DEEP steps, where the
    blocks from ``depth_split`` on recompute in full and the shallow ones reuse, so the deep group follows
    its own, denser pattern (every reuse run is split in two for it). Our measurements on ``dit-digits``
    motivate it: late in denoising the last blocks' outputs change 2-3x more per step than the first ones'
    (``benchmarks/results/feature_dynamics.md``), as Delta-DiT (arXiv 2406.01125) found for DiTs. The
    members and their count are the same as with ``refresh="selective"``; only their costs differ.

    Example:
        >>> space = ScheduleSpace(50, num_full=25, v_min=1, v_max=1)
        >>> space.count(), str(space.sample(np.random.default_rng(0)))[:6]
        (1, '101010')

    Raises:
        ValueError: on an out-of-range argument, or when no schedule satisfies the constraints (the message
            names the constraint and the smallest budget that would work).
    """

    num_steps: int
    num_full: int | None = None
    max_flops_ratio: float | None = None
    costs: StepCosts | None = None
    v_min: int = 0
    v_max: int | None = None  # None: no upper bound; stored as num_steps - 1
    monotone: Monotone = "decreasing"
    selective: bool = True
    selective_config: SelectiveConfig = field(default_factory=SelectiveConfig)
    min_full: int | None = None
    forecast_order: int = 0
    refresh: Literal["selective", "deep"] = "selective"
    depth_split: float = 0.5

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps!r} is out of range; allowed: num_steps >= 1")
        if self.v_max is None:
            object.__setattr__(self, "v_max", self.num_steps - 1)
        if not 0 <= self.v_min <= self.v_max <= self.num_steps - 1:
            raise ValueError(f"v_min={self.v_min!r}, v_max={self.v_max!r} are out of range; allowed: "
                             f"0 <= v_min <= v_max <= num_steps - 1 = {self.num_steps - 1}")
        for name in ("num_full", "min_full"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= self.num_steps:
                raise ValueError(f"{name}={value!r} is out of range; allowed: 1 <= {name} <= {self.num_steps}")
        if self.refresh not in ("selective", "deep"):
            raise ValueError(f"refresh={self.refresh!r}; allowed: 'selective' (ProCache Eq. 7) or 'deep' (per-depth: "
                             "deep blocks recompute in full at the Eq. 7 positions)")
        if self.monotone not in ("decreasing", "increasing", None):
            raise ValueError(f"monotone={self.monotone!r}; allowed: 'decreasing', 'increasing' or None")
        if self.costs is not None and self.costs.num_steps != self.num_steps:
            raise ValueError(f"costs are for {self.costs.num_steps} steps, the space has {self.num_steps}")
        if self.max_flops_ratio is not None:
            if self.costs is None:
                raise ValueError("max_flops_ratio needs costs (a StepCosts, e.g. from procache_opt.flops.step_costs)")
            if not 0.0 < self.max_flops_ratio <= 1.0:
                raise ValueError(f"max_flops_ratio={self.max_flops_ratio!r} is out of range; allowed: (0, 1]")
        if not self.num_full_values():
            raise ValueError(diagnose_empty(self, self._min_costs))

    # -- the DP tables (built lazily; cached_property writes the instance __dict__, fine on a frozen class) --
    @cached_property
    def _rules(self) -> Rules:
        owed = self.num_full if self.num_full is not None else (self.min_full or 0)
        return Rules(self.num_steps, self.v_min + 1, self.v_max + 1, self.monotone, owed, self.num_full is not None)

    @property
    def injected(self) -> Action | None:
        """The action at the Eq. 7 positions of each reuse run: SELECTIVE, DEEP (``refresh="deep"``) or none."""
        if not self.selective:
            return None
        return Action.DEEP if self.refresh == "deep" else Action.SELECTIVE

    @cached_property
    def _cost_table(self) -> list[list[int]] | None:
        return segment_cost_table(self.costs, self.injected) if self.max_flops_ratio is not None else None

    @cached_property
    def _budget(self) -> int:
        return budget_units(self.max_flops_ratio) if self.max_flops_ratio is not None else 0

    @cached_property
    def _min_costs(self) -> np.ndarray:
        return min_cost_by_num_full(self._rules, self._cost_table)

    @cached_property
    def _table(self) -> CountTable:
        return CountTable(self._rules, self._cost_table, self._budget)

    @cached_property
    def _graph(self) -> SegmentGraph:
        """The state graph with segment costs: those of the budget, else the costs alone (a front over every
        FLOPs ratio), else none."""
        if self._cost_table is not None:
            return SegmentGraph(self._rules, self._cost_table, self._budget)
        costs = segment_cost_table(self.costs, self.injected) if self.costs is not None else None
        return SegmentGraph(self._rules, costs, None)

    # -- membership -----------------------------------------------------------------------------------------
    def intervals(self, schedule: Schedule | Sequence[int]) -> tuple[int, ...]:
        """Segment lengths of ``schedule`` (each a FULL step and the reused/selective steps after it)."""
        pattern = self._pattern(schedule)
        starts = [t for t, a in enumerate(pattern) if a == Action.FULL] + [len(pattern)]
        return tuple(b - a for a, b in zip(starts, starts[1:], strict=False))

    def from_intervals(self, intervals: Sequence[int]) -> Schedule:
        """The member with these segment lengths; raises ``ValueError`` listing the violations if infeasible."""
        intervals = tuple(int(n) for n in intervals)
        problems = self.interval_violations(intervals)
        if problems:
            raise ValueError(f"intervals {list(intervals)} are not in the space: " + "; ".join(problems))
        return self.build(intervals)

    def contains(self, schedule_or_pattern: Schedule | Sequence[int]) -> bool:
        return not self.violations(schedule_or_pattern)

    def __contains__(self, item: Schedule | Sequence[int]) -> bool:
        return self.contains(item)

    def violations(self, schedule_or_pattern: Schedule | Sequence[int]) -> list[str]:
        """Why a schedule (or a pattern of 0/1/2 digits) is not a member: one message per failed constraint."""
        pattern = self._pattern(schedule_or_pattern)
        if len(pattern) != self.num_steps:
            return [f"the pattern has {len(pattern)} steps, the space {self.num_steps}"]
        if pattern[0] != Action.FULL:
            return ["the first step must be FULL (1): there is no cache to reuse yet"]
        problems = []
        expected = self.build(self.intervals(pattern)).pattern
        if pattern != expected:
            rule = (f"{self.injected.name} steps injected by Eq. 7" if self.selective
                    else "no SELECTIVE steps (selective=False)")
            problems.append(f"the space's members have {rule}: expected {''.join(map(str, expected))}")
        elif (self.selective and isinstance(schedule_or_pattern, Schedule)
              and schedule_or_pattern.selective != self.selective_config):
            problems.append("the schedule's SelectiveConfig differs from the space's selective_config")
        if (self.injected is Action.DEEP and isinstance(schedule_or_pattern, Schedule)
                and schedule_or_pattern.depth_split != self.depth_split):
            problems.append(f"the schedule's depth_split={schedule_or_pattern.depth_split}, the space's "
                            f"{self.depth_split}")
        if isinstance(schedule_or_pattern, Schedule) and schedule_or_pattern.forecast_order != self.forecast_order:
            problems.append(f"the schedule's forecast_order={schedule_or_pattern.forecast_order}, the space's "
                            f"{self.forecast_order}")
        return problems + self.interval_violations(self.intervals(pattern))

    def interval_violations(self, intervals: Sequence[int]) -> list[str]:
        """Like :meth:`violations`, for segment lengths (cheaper: no pattern is built)."""
        intervals, problems = tuple(intervals), []
        if sum(intervals) != self.num_steps or min(intervals, default=0) < 1:
            return [f"intervals {list(intervals)} are not positive lengths summing to {self.num_steps}"]
        bad = [i for i, n in enumerate(intervals) if not self.v_min + 1 <= n <= self.v_max + 1]
        if bad:
            problems.append(f"segments {bad} have reuse intervals {[intervals[i] - 1 for i in bad]} outside "
                            f"[v_min, v_max] = [{self.v_min}, {self.v_max}] (Eq. 4)")
        sign = {"decreasing": 1, "increasing": -1}.get(self.monotone or "", 0)
        bad = [i + 1 for i, (a, b) in enumerate(zip(intervals, intervals[1:], strict=False)) if sign * (b - a) > 0]
        if bad:
            problems.append(f"reuse intervals must be {self.monotone} (Eq. 3) but segments {bad} break the order")
        k = len(intervals)
        if self.num_full is not None and k != self.num_full:
            problems.append(f"{k} FULL steps, the budget needs exactly num_full={self.num_full} (Eq. 2)")
        if self.min_full is not None and k < self.min_full:
            problems.append(f"{k} FULL steps, fewer than min_full={self.min_full}")
        if self._cost_table is not None:
            units = self._quantised_cost(intervals)
            if units > self._budget:
                problems.append(f"quantised FLOPs ratio {units * FLOPS_QUANTUM:.4f} exceeds "
                                f"max_flops_ratio={self.max_flops_ratio} (Eq. 2)")
        return problems

    def _quantised_cost(self, intervals: tuple[int, ...]) -> int:
        starts = accumulate(intervals[:-1], initial=0)
        return sum(self._cost_table[s][n] for s, n in zip(starts, intervals, strict=True))

    def _pattern(self, schedule: Schedule | Sequence[int]) -> tuple[int, ...]:
        return schedule.pattern if isinstance(schedule, Schedule) else tuple(int(a) for a in schedule)

    def build(self, intervals: Sequence[int]) -> Schedule:
        """The schedule with these segment lengths and the space's settings, member or not.

        Eq. 7 injection (SELECTIVE or DEEP), ``selective_config``, ``forecast_order`` and ``depth_split`` are
        the space's, so a schedule built here runs as a member would; :meth:`from_intervals` also checks the
        constraints. Strategies use this for measurement runs outside the space (the ``graph`` strategy's
        single-segment probes).
        """
        schedule = Schedule.from_intervals(intervals, selective=self.selective_config,
                                           forecast_order=self.forecast_order, depth_split=self.depth_split)
        return schedule.inject_selective(self.injected) if self.injected is not None else schedule

    # -- counting, sampling, enumeration ------------------------------------------------------------------
    def count(self) -> int:
        """The exact number of members, by dynamic programming over segments (see ``_dp.CountTable``)."""
        return self._table.total

    def num_full_values(self) -> list[int]:
        """The numbers of FULL steps that at least one member has, ascending."""
        low = self.min_full or 1
        return [k for k, units in enumerate(self._min_costs)
                if 0 <= units <= self._budget and k >= low and self.num_full in (None, k)]

    def sample(self, rng: np.random.Generator) -> Schedule:
        """A member drawn uniformly at random (each move weighted by its number of feasible completions)."""
        return self.build(self._table.sample(rng))

    def sample_stick_breaking(self, rng: np.random.Generator, num_full: int | None = None) -> Schedule | None:
        """The authors' sampler (``CASS.py``): one stick-breaking draw, or ``None`` when it is rejected.

        The ``T - B * (v_min + 1)`` free steps are split into ``B = num_full`` parts by ``B - 1`` uniform cut
        points; a draw with a segment longer than ``v_max + 1`` is rejected; the segments are sorted
        descending (ascending for ``monotone="increasing"``, kept in drawn order for ``None``). Not uniform
        over the space. ``num_full`` defaults to the space's, else to a uniform pick among
        :meth:`num_full_values`. Draws that break another constraint (a FLOPs budget) are rejected too.
        """
        if num_full is None:
            values = self.num_full_values()
            num_full = self.num_full or values[int(rng.integers(len(values)))]
        free = self.num_steps - num_full * (self.v_min + 1)
        if num_full < 1 or free < 0:
            return None
        cuts = np.sort(rng.integers(0, free, size=num_full - 1, endpoint=True))
        lengths = self.v_min + 1 + np.diff(np.concatenate(([0], cuts, [free])))
        if lengths.max() > self.v_max + 1:
            return None
        if self.monotone is not None:
            lengths = np.sort(lengths)[:: -1 if self.monotone == "decreasing" else 1]
        intervals = tuple(int(n) for n in lengths)
        return None if self.interval_violations(intervals) else self.build(intervals)

    def enumerate(self, limit: int | None = None) -> Iterator[Schedule]:
        """Members in lexicographic order of their segment lengths (for small spaces)."""
        return (self.build(intervals) for intervals in islice(self._table.enumerate(), limit))

    def neighbors(self, schedule: Schedule | Sequence[int]) -> list[Schedule]:
        """Members one move away: shift FULL steps (one step from a segment to another), split, merge."""
        own = self.intervals(schedule)
        return [self.build(c) for c in neighbour_intervals(own) if not self.interval_violations(c)]

    def decode(self, choose: Chooser) -> Schedule:
        """Build a member segment by segment: ``choose(i, start, lengths)`` picks segment ``i``'s length.

        ``lengths`` (ascending, never empty) holds only the lengths from which some member continues, read
        off the exact DP, so every walk ends on a member whatever ``choose`` does: the feasibility oracle for
        strategies that propose segment by segment (TPE's parameters, repairs). Returning a length not
        offered raises ``ValueError``.
        """
        return self.build(self._table.walk(choose))

    def repair(self, intervals: Sequence[int]) -> Schedule:
        """A member whose FULL steps follow those of ``intervals`` (feasible or not) closely, greedily in time.

        From each FULL step the next goes where the target's next one is, or to the nearest step (ties:
        earlier) from which a member continues; past the target's last FULL step it aims at the end. A member
        comes back unchanged; a repair always succeeds; it is close, not provably the closest. Used for the
        uniform strategy's evenly spaced schedule when a FLOPs budget rules it out, and for crossover.
        """
        ends = list(accumulate(int(n) for n in intervals))

        def toward(_: int, start: int, lengths: list[int]) -> int:
            goal = next((end for end in ends if end > start), self.num_steps)
            return min(lengths, key=lambda n: (abs(start + n - goal), n))

        return self.decode(toward)

    # -- best members by segment weights (the graph strategy) ----------------------------------------------
    def segments(self) -> list[tuple[int, int]]:
        """``(start, length)`` of every segment some member uses (within the budget), sorted."""
        return self._graph.segments()

    def best_paths(self, weights: Mapping[tuple[int, int], float], order: Order = "minimax") -> list[PathPoint]:
        """Every budget's best member when each segment ``(start, length)`` costs ``weights[...]`` (exact DP).

        The front of members that are Pareto-optimal in (quantised FLOPs, ``order`` of their segments'
        weights), cheapest first: the best member within a budget is the last point that fits it, for every
        budget up to the space's. ``order="sum"`` minimises the total weight; ``"minimax"`` the weights sorted
        worst first, lexicographically (LeMiCa, arXiv 2511.00090). Segments without a finite weight are never
        used. See ``space/_paths.py``.

        Example:
            >>> space = ScheduleSpace(6, v_max=2, monotone=None)
            >>> weights = {(s, n): float(n - 1) * (1 + s) for s, n in space.segments()}
            >>> [p.intervals for p in space.best_paths(weights, order="sum")]
            [(1, 1, 1, 1, 1, 1)]
        """
        return self._graph.front(weights, order)

    # -- reporting and storage ----------------------------------------------------------------------------
    def flops_ratio(self, schedule: Schedule | Sequence[int]) -> float | None:
        """Counted FLOPs of ``schedule`` as a fraction of full computation (unquantised); None without costs."""
        return None if self.costs is None else self.costs.ratio(self._pattern(schedule))

    def describe(self) -> str:
        """One paragraph: the constraints and the number of members."""
        parts = [f"Schedules of {self.num_steps} denoising steps starting with a FULL step",
                 f"reuse intervals v in [{self.v_min}, {self.v_max}] (Eq. 4)",
                 "reuse intervals " + _ORDER_WORDS[self.monotone] + " (Eq. 3)"]
        if self.num_full is not None:
            parts.append(f"exactly {self.num_full} FULL steps (Eq. 2)")
        if self.min_full is not None:
            parts.append(f"at least {self.min_full} FULL steps")
        if self.max_flops_ratio is not None:
            parts.append(f"a counted FLOPs ratio of at most {self.max_flops_ratio} (segment costs rounded up to "
                         f"{FLOPS_QUANTUM:g})")
        if self.injected is Action.DEEP:
            parts.append(f"per-depth: at the Eq. 7 positions the deep blocks (from depth_split={self.depth_split}) "
                         "recompute in full, the shallow ones reuse")
        else:
            parts.append("selective computation injected (Eq. 7)" if self.selective else "no selective computation")
        if self.forecast_order:
            parts.append("reused outputs forecast to first order (TaylorSeer)")
        return "; ".join(parts) + (f". {self.count():,} feasible schedules, with "
                                   f"{format_ranges(self.num_full_values())} FULL steps.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (costs as lists), for storage and resuming."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["selective_config"] = self.selective_config.to_dict()
        if self.costs is not None:
            data["costs"] = {name: list(table) for name in ("full", "reuse", "selective", "deep", "shallow")
                             if (table := getattr(self.costs, name)) is not None}
            data["costs"]["depth_split"] = self.costs.depth_split
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSpace:
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported space format_version {version!r}; this procache-opt reads {FORMAT_VERSION}")
        costs = data.pop("costs", None)
        config = SelectiveConfig.from_dict(data.pop("selective_config", {}))
        costs = None if costs is None else StepCosts(**{k: v if k == "depth_split" else tuple(v)
                                                         for k, v in costs.items()})
        return cls(**data, costs=costs, selective_config=config)

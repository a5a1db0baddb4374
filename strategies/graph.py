"""``graph``: LeMiCa's global schedule, a best path through a DAG of cached segments (arXiv 2511.00090).

LeMiCa (Gao et al., "LeMiCa: Lexicographic Minimax Path Caching for Efficient Diffusion-Based Video
Generation", NeurIPS 2025) sees a schedule as a path over the denoising steps: an edge ``i -> j`` computes at
step ``i`` and reuses until ``j``. Each edge is weighed by the error that caching only that segment causes at
the final output, and the schedule is the path that minimises the worst edge, lexicographically, under a
budget. Here:

1. **Measure.** For a segment ``(start, length)`` some member of the space uses, the strategy proposes the
   schedule that is FULL everywhere except that segment (a *probe*, marked with :func:`as_probe` unless it
   is itself a member: it lies outside the space and is never a result). Its told loss is the segment's
   weight; a failed run makes the segment unusable. The evaluator's prefix replay skips the FULL steps before
   the segment (read back from the reference's tape).
2. **Solve.** :meth:`ScheduleSpace.best_paths` runs an exact DP over the space's own state graph with its
   FLOPs cost axis, so every path is a member (bounds, order, budget, Eq. 7 injection, forecast order), for
   every budget up to the space's at once: :meth:`GraphStrategy.front`.
3. **Check.** The best path of each order (``"minimax"`` and ``"sum"``) and the next points down the fronts
   are proposed as ordinary trials, so the engine judges them by their real loss.

Measuring every segment takes one evaluation per segment (178 on ``dit-digits`` at budget 0.5). So by default
the strategy measures coarse to fine (``_segment_weights.probe_rounds``: 16 spread-out segments, then plans
twice as large, until all are measured), interpolates the unmeasured weights, and solves and checks after each
round: a search with few evaluations still gets paths, one with many gets LeMiCa's full measurement. It
finishes after the last round's candidates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from itertools import accumulate, chain, zip_longest
from typing import Any

from procache_opt.strategies._common import ProposalHistory
from procache_opt.strategies._segment_weights import Segment, estimate_weights, probe_rounds

from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.space._paths import ORDERS, Order, PathPoint
from procache_opt.strategy import Strategy, TrialResult, as_probe

__all__ = ["GraphStrategy"]

logger = logging.getLogger("procache_opt.strategies")


class GraphStrategy(Strategy):
    """Measures segment errors with single-segment runs, round by round; after each round proposes the DP's best
    paths; finishes after the last round.

    Example:
        >>> from procache_opt.space import ScheduleSpace
        >>> strategy = GraphStrategy(ScheduleSpace(8, v_max=2, monotone=None), num_candidates=2)
        >>> [str(s) for s in strategy.ask(3)]  # probes: FULL except one reused segment
        ['10111111', '10211111', '11011111']

    Args:
        space: The feasible schedules.
        seed: Seeds the generator (used only if no path exists and members are drawn instead).
        order: ``"minimax"`` (LeMiCa: the worst segment first, lexicographically) or ``"sum"`` (total error);
            a round's first candidate is this order's best path, the second the other order's.
        objective: The trial value read as a segment's weight: ``None`` for the search loss (``TrialResult.value``,
            by default ``feature_error`` at the final output) or an objective name in ``TrialResult.values``.
            It should be an error that full computation scores 0 on.
        num_candidates: Paths proposed after each round (the best of each order, then the next points down the
            fronts), never one proposed before.
        max_probes: Measure at most this many segments and interpolate the rest (``None``: measure all).
        first_round: Segments measured before the first candidates; later rounds double the plan (``None``: one
            round, LeMiCa's way: every segment, or ``max_probes``, then the candidates).
    """

    name = "graph"
    #: Paths proposed after each round unless ``num_candidates`` says otherwise.
    default_candidates = 4

    def __init__(self, space: ScheduleSpace, seed: int = 0, order: Order = "minimax", objective: str | None = None,
                 num_candidates: int = default_candidates, max_probes: int | None = None,
                 first_round: int | None = 16) -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; allowed: {', '.join(map(repr, ORDERS))}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates={num_candidates!r} is out of range; allowed: num_candidates >= 1")
        for name, value in (("max_probes", max_probes), ("first_round", first_round)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r} is out of range; allowed: None or {name} >= 1")
        super().__init__(space, seed)
        self.order, self.objective, self.num_candidates = order, objective, num_candidates
        #: Segments that reuse (length 1 is FULL then FULL: no error, weight 0, nothing to measure).
        self.segments = [seg for seg in space.segments() if seg[1] > 1]
        rounds = probe_rounds(self.segments, max_probes, first_round)
        #: Every segment to measure, round after round, and where each round ends in that list.
        self.plan = [seg for r in rounds for seg in r]
        self.round_ends = list(accumulate(len(r) for r in rounds)) or [0]
        self._probes = [self._probe(seg) for seg in self.plan]
        self._segment_of = {probe.pattern: seg for probe, seg in zip(self._probes, self.plan, strict=True)}
        self._measured: dict[Segment, float] = {}
        self._asked = 0
        self._candidates: list[list[Schedule]] = []  # per round, chosen once the round's probes are told
        self._proposed: list[int] = []  # candidates proposed, per chosen round
        if len(self.plan) < len(self.segments):
            logger.info("graph: measuring %d of %d segments, interpolating the rest (max_probes=%s)",
                        len(self.plan), len(self.segments), max_probes)

    @classmethod
    def options_for_budget(cls, n_trials: int) -> dict[str, Any]:
        """One round of probes that leaves room for the FORA start point and the candidates within ``n_trials``."""
        return {"max_probes": max(1, n_trials - 1 - cls.default_candidates), "first_round": None}

    @property
    def evaluations_needed(self) -> int:
        """Probes and candidates of every round: at most what the strategy evaluates (plus the FORA start)."""
        return len(self.plan) + self.num_candidates * len(self.round_ends)

    def _probe(self, segment: Segment) -> Schedule:
        start, length = segment
        rest = self.space.num_steps - start - length
        schedule = self.space.build((1,) * start + (length,) + (1,) * rest)
        return schedule if self.space.contains(schedule) else as_probe(schedule, start=start, length=length)

    # -- ask / tell -------------------------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Schedule]:
        """Candidates of a finished round first, then the next probes (the next round's before the candidates
        of the current one are ready, so parallel workers keep busy)."""
        self._settle()
        out: list[Schedule] = []
        for r, candidates in enumerate(self._candidates):
            more = candidates[self._proposed[r]:self._proposed[r] + n - len(out)]
            self._proposed[r] += len(more)
            out += more
        take = min(max(n - len(out), 0), len(self._probes) - self._asked)
        out += self._probes[self._asked:self._asked + take]
        self._asked += take
        return out

    def _settle(self) -> None:
        """Choose the candidates of every round whose probes (and the earlier rounds') are all told."""
        while (r := len(self._candidates)) < len(self.round_ends) and all(
                seg in self._measured for seg in self.plan[:self.round_ends[r]]):
            self._candidates.append(self._choose(r))
            self._proposed.append(0)

    def tell(self, results: Sequence[TrialResult]) -> None:
        for result in results:
            segment = self._segment_of.get(result.schedule.pattern)
            if segment is not None:
                self._measured[segment] = self._weight(result)

    def _weight(self, result: TrialResult) -> float:
        if not result.ok:
            return math.inf  # this segment breaks the run (NaN, out of memory): no path may use it
        if self.objective is None:
            return float(result.value)
        if self.objective not in result.values:
            raise KeyError(f"graph: objective {self.objective!r} is not among the trial's values "
                           f"{sorted(result.values)}")
        return float(result.values[self.objective])

    @property
    def is_finished(self) -> bool:
        self._settle()  # a last round whose paths were all proposed before has no candidates: then it is done
        return (len(self._candidates) == len(self.round_ends) and self._asked == len(self._probes)
                and all(p == len(c) for p, c in zip(self._proposed, self._candidates, strict=True)))

    # -- the paths ---------------------------------------------------------------------------------------------
    def weights(self, round_index: int | None = None) -> dict[Segment, float]:
        """Every usable segment's weight from the probes of rounds up to ``round_index`` (default: every probe
        told so far): measured, interpolated, or 0 for length 1."""
        known = self.plan if round_index is None else self.plan[:self.round_ends[round_index]]
        weights = estimate_weights(self.segments, {seg: self._measured[seg] for seg in known
                                                   if seg in self._measured})
        weights.update({seg: 0.0 for seg in self.space.segments() if seg[1] == 1})
        return weights

    def front(self, order: Order | None = None) -> list[PathPoint]:
        """Every budget's best path under the weights known now: cheapest first, each better than all cheaper.

        The best member within a budget ``b`` (a FLOPs ratio up to the space's) is
        ``space.build(p.intervals)`` for the last point ``p`` with ``p.flops_ratio <= b``.
        """
        return self.space.best_paths(self.weights(), order or self.order)

    def _choose(self, round_index: int) -> list[Schedule]:
        """Round ``round_index``'s candidates from its and the earlier rounds' measurements: each order's best,
        then alternately the next points down each front, none proposed before."""
        weights = self.weights(round_index)
        fronts = [(o, self.space.best_paths(weights, o)) for o in (self.order, *(o for o in ORDERS if o != self.order))]
        ranked = chain.from_iterable(zip_longest(*([(o, p) for p in reversed(front)] for o, front in fronts)))
        seen = set(self._segment_of) | {s.pattern for c in self._candidates for s in c}
        chosen: list[Schedule] = []
        for entry in ranked:
            if len(chosen) == self.num_candidates:
                break
            if entry is None:  # one front is shorter than the other
                continue
            order, point = entry
            schedule = self.space.build(point.intervals)
            if schedule.pattern not in seen:
                seen.add(schedule.pattern)
                chosen.append(_noted(schedule, order, point, round_index))
        if not chosen and not any(self._candidates):
            logger.warning("graph: no path avoids the failed segments; proposing %d uniform draws instead",
                           self.num_candidates)
            history = ProposalHistory(self.rng)
            for probe in self._probes:
                history.add(probe)
            while len(chosen) < self.num_candidates and (schedule := history.draw_unseen(self.space)) is not None:
                history.add(schedule)
                chosen.append(schedule)
        return chosen

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Probes asked, and each finished round's candidates and how many were proposed; the segment weights come
        back from the told trials."""
        return {"asked": self._asked, "candidates": [[s.to_dict() for s in c] for c in self._candidates],
                "proposed": list(self._proposed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._asked, self._proposed = int(state["asked"]), [int(p) for p in state["proposed"]]
        self._candidates = [[Schedule.from_dict(s) for s in c] for c in state["candidates"]]


def _noted(schedule: Schedule, order: Order, point: PathPoint, round_index: int) -> Schedule:
    """``schedule`` with what the DP predicted for it in its metadata (kept with the trial)."""
    note = {"order": order, "total": point.total, "worst": max(point.weights), "segments": len(point.weights),
            "round": round_index}
    return replace(schedule, metadata={**schedule.metadata, "graph": note})

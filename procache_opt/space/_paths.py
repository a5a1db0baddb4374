"""Best members by segment weights: the exact dynamic programme behind the ``graph`` strategy.

LeMiCa (Gao et al., NeurIPS 2025, arXiv 2511.00090) casts a step schedule as a path through a DAG over the
denoising steps: an edge ``i -> j`` computes at step ``i`` and reuses until ``j``, and is weighed by the error
that caching only that segment causes. Here an edge is a segment ``(start, length)`` and the nodes are the
space's DP states ``(position, previous length, FULL steps owed)`` (see ``_dp.Rules``), so every path is a
member: the bounds and the order of the intervals (Eqs. 3-4) and the FULL-step count (Eq. 2) hold by
construction. The FLOPs budget is a cost axis in whole :data:`~procache_opt.space._dp.FLOPS_QUANTUM` units,
the same rounded-up segment costs :meth:`ScheduleSpace.contains` checks.

Two orders of paths:

* ``"sum"``: the total weight of the segments.
* ``"minimax"``: LeMiCa's lexicographic minimax: the weights sorted worst first, compared as tuples. The
  lower worst weight wins; on a tie the next worst decides, and so on. Equivalently: at the largest weight
  whose number of copies differs between two paths, the path with fewer copies wins. Appending the same
  segments to two paths adds the same copies to both, so the order of the two is kept: Bellman's principle
  holds and the programme is exact for this order too.

The programme is label-setting: every state keeps its Pareto labels, the completions not beaten by one that
costs no more. The start state's labels are the front: each budget's best member, for every budget up to the
space's, from one pass over the same weights.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple, Union

from procache_opt.space._dp import FLOPS_QUANTUM, Rules, State

__all__ = ["Order", "PathPoint", "SegmentGraph", "ORDERS"]

Order = Literal["sum", "minimax"]
ORDERS: tuple[Order, ...] = ("sum", "minimax")
Key = Union[float, tuple[float, ...]]  # noqa: UP007 - a runtime alias on Python 3.10
_NO_BUDGET = 2**62


@dataclass(frozen=True)
class PathPoint:
    """One member on a front: its segments, their weights and its quantised cost.

    Attributes:
        intervals: The member's segment lengths.
        weights: The weight of each segment, in path order.
        units: Its cost in :data:`FLOPS_QUANTUM` units of full computation (rounded up per segment); 0 when
            the space has no costs.
    """

    intervals: tuple[int, ...]
    weights: tuple[float, ...]
    units: int

    @property
    def flops_ratio(self) -> float:
        """The quantised FLOPs ratio (at least the true one, see ``ScheduleSpace``)."""
        return self.units * FLOPS_QUANTUM

    @property
    def total(self) -> float:
        return math.fsum(self.weights)

    @property
    def worst_first(self) -> tuple[float, ...]:
        return tuple(sorted(self.weights, reverse=True))


class _Label(NamedTuple):
    units: int
    key: Key
    length: int  # of the first segment; 0 at the goal
    rest: State | None  # the state after it
    index: int  # of the continuation among ``rest``'s labels


class SegmentGraph:
    """The space's state graph with a cost per segment: which segments members use, and the best paths.

    Args:
        rules: The structural constraints (``ScheduleSpace._rules``).
        cost: ``cost[start][length]`` in quantised units, or ``None`` (every segment free).
        budget: The largest total cost, or ``None`` for no budget.
    """

    def __init__(self, rules: Rules, cost: list[list[int]] | None, budget: int | None) -> None:
        self.rules, self.cost = rules, cost
        self.budget = _NO_BUDGET if budget is None else budget

    def step(self, state: State, length: int) -> int:
        return self.cost[state[0]][length] if self.cost else 0

    @cached_property
    def _prefix(self) -> dict[State, int]:
        """Cheapest cost from the start to every reachable state."""
        best = {self.rules.start(): 0}
        for level in self.rules.reachable:
            for state in level:
                for length, nxt in self.rules.moves(state):
                    cost = best[state] + self.step(state, length)
                    if cost < best.get(nxt, _NO_BUDGET + 1):
                        best[nxt] = cost
        return best

    @cached_property
    def _suffix(self) -> dict[State, int]:
        """Cheapest cost from every reachable state to the end (absent: no member continues from it)."""
        best: dict[State, int] = {}
        for level in reversed(self.rules.reachable):
            for state in level:
                options = [0] if self.rules.is_goal(state) else []
                options += [self.step(state, length) + best[nxt] for length, nxt in self.rules.moves(state)
                            if nxt in best]
                if options:
                    best[state] = min(options)
        return best

    def segments(self) -> list[tuple[int, int]]:
        """``(start, length)`` of every segment that at least one member within the budget uses, sorted."""
        used = set()
        for level in self.rules.reachable:
            for state in level:
                for length, nxt in self.rules.moves(state):
                    if nxt in self._suffix and (self._prefix[state] + self.step(state, length) + self._suffix[nxt]
                                                <= self.budget):
                        used.add((state[0], length))
        return sorted(used)

    def front(self, weights: Mapping[tuple[int, int], float], order: Order = "minimax") -> list[PathPoint]:
        """The best member for every budget: Pareto-optimal in (cost, ``order`` of the weights), cheapest first.

        Each point is strictly better than every cheaper one, so the best member within a budget ``b`` is the
        last point with ``units <= b``. A segment without a finite weight in ``weights`` is never used; the
        front is empty when no member can do without such segments. Ties (equal cost and key) are broken
        the same way every time (the shorter first segment first).

        Complexity: every state merges the labels of its successors, so the time is about
        ``states x lengths x labels`` and the labels per state are at most the distinct costs of its
        completions (a few hundred for 50 steps and a FLOPs budget; one without costs).
        """
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; allowed: {', '.join(map(repr, ORDERS))}")
        combine = _add if order == "sum" else _insert
        labels: dict[State, list[_Label]] = {}
        for level in reversed(self.rules.reachable):
            for state in level:
                room = self.budget - self._prefix[state]
                options = [_Label(0, 0.0 if order == "sum" else (), 0, None, -1)] if self.rules.is_goal(state) else []
                for length, nxt in self.rules.moves(state):
                    weight = weights.get((state[0], length))
                    if weight is None or not math.isfinite(weight):
                        continue
                    step = self.step(state, length)
                    for index, label in enumerate(labels.get(nxt, ())):
                        if label.units + step > room:
                            break  # labels are sorted by cost
                        options.append(_Label(label.units + step, combine(label.key, weight), length, nxt, index))
                kept = _pareto(options)
                if kept:
                    labels[state] = kept
        return [self._walk(labels, weights, index) for index in range(len(labels.get(self.rules.start(), ())))]

    def _walk(self, labels: dict[State, list[_Label]], weights: Mapping[tuple[int, int], float],
              index: int) -> PathPoint:
        state: State | None = self.rules.start()
        label = labels[state][index]
        units, intervals, path_weights = label.units, [], []
        while label.rest is not None:
            intervals.append(label.length)
            path_weights.append(float(weights[(state[0], label.length)]))
            state = label.rest
            label = labels[state][label.index]
        return PathPoint(tuple(intervals), tuple(path_weights), units)


def _add(key: Key, weight: float) -> float:
    return key + weight  # type: ignore[operator]


def _insert(key: Key, weight: float) -> tuple[float, ...]:
    """``key`` (weights sorted worst first) with ``weight`` added in its place."""
    position = bisect.bisect_left(key, -weight, key=operator.neg)  # type: ignore[arg-type]
    return (*key[:position], weight, *key[position:])  # type: ignore[index]


def _pareto(options: list[_Label]) -> list[_Label]:
    """The labels no cheaper-or-equal label beats, cheapest first; ties to the smallest intervals."""
    kept: list[_Label] = []
    for label in sorted(options, key=lambda o: (o.units, o.key, o.length)):
        if not kept or label.key < kept[-1].key:
            kept.append(label)
    return kept

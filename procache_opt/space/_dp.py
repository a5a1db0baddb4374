"""Dynamic programmes over ProCache's segment view of a schedule (arXiv 2512.17298, Sec. 3.2).

A schedule is a sequence of segments (intervals), each one FULL step followed by ``v`` reused steps. Every
constraint of the space is local to a segment or to two neighbouring segments, so the feasible set is the
set of paths through a small state graph: a :data:`State` ``(position, previous length, FULL steps still
owed)``. Counting, uniform sampling and enumeration walk that graph; a FLOPs budget adds a cost axis.

The FLOPs budget is exact because costs are integers: each segment's counted cost (selective injection,
Eq. 7, is local to its segment) is rounded *up* to units of :data:`FLOPS_QUANTUM` of the full-computation
total, and the budget is rounded down to the same units. Membership and counting use the same integers, so
they agree by construction, and a member's true FLOPs ratio is at most its quantised ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from procache_opt.costs import StepCosts
from procache_opt.schedule import Action

__all__ = ["FLOPS_QUANTUM", "Chooser", "Rules", "CountTable", "State", "min_cost_by_num_full", "segment_cost_table",
           "budget_units"]

#: Cost unit of the FLOPs budget, as a fraction of computing every step in full.
FLOPS_QUANTUM = 1e-4
_UNITS = 10_000  # 1 / FLOPS_QUANTUM, kept an integer so that round numbers stay exact
_EPS = 1e-9  # float noise tolerated when rounding to units (a ratio of exactly 0.35 must stay 3500 units)
_INF = np.iinfo(np.int64).max // 4

Monotone = Literal["decreasing", "increasing"] | None
#: ``choose(i, start, lengths)``: the length of segment ``i``, which starts at step ``start``, among the
#: feasible ``lengths`` (ascending, never empty).
Chooser = Callable[[int, int, list[int]], int]
#: ``(position, previous segment length, FULL steps still owed)``; see :meth:`Rules.moves`.
State = tuple[int, int, int]


@dataclass(frozen=True)
class Rules:
    """The structural constraints: segment lengths, their order (Eq. 3, 4) and the FULL-step count (Eq. 2).

    Attributes:
        num_steps: T, the number of denoising steps.
        min_len: Shortest segment, ``v_min + 1``.
        max_len: Longest segment, ``v_max + 1``.
        monotone: ``"decreasing"``: segment lengths never grow; ``"increasing"``: never shrink; ``None``: any.
        owed: FULL steps the schedule must contain (exactly if ``exact``, else at least); 0 for no constraint.
        exact: Whether ``owed`` is an equality (``num_full``) or a lower bound (``min_full``).
    """

    num_steps: int
    min_len: int
    max_len: int
    monotone: Monotone
    owed: int = 0
    exact: bool = False

    def start(self) -> State:
        previous = self.max_len if self.monotone == "decreasing" else self.min_len
        return (0, previous if self.monotone else 0, self.owed)

    def is_goal(self, state: State) -> bool:
        return state[0] == self.num_steps and state[2] == 0

    def moves(self, state: State) -> Iterator[tuple[int, State]]:
        """Each feasible next segment length and the state after it."""
        position, previous, owed = state
        low, high = self.min_len, min(self.max_len, self.num_steps - position)
        if self.monotone == "decreasing":
            high = min(high, previous)
        elif self.monotone == "increasing":
            low = max(low, previous)
        next_owed = owed - 1 if self.exact else max(owed - 1, 0)
        for length in range(low, high + 1):
            rest = self.num_steps - position - length
            # Prune an exact count that the remaining steps cannot hold; a correct but slower DP without it.
            if self.exact and not (next_owed * self.min_len <= rest <= next_owed * self.max_len):
                continue
            yield length, (position + length, length if self.monotone else 0, next_owed)

    @cached_property
    def reachable(self) -> list[list[State]]:
        """States reachable from :meth:`start`, grouped by position (a forward sweep, no recursion)."""
        levels: list[dict[State, None]] = [{} for _ in range(self.num_steps + 1)]
        levels[0][self.start()] = None
        for level in levels:
            for state in level:
                for _, nxt in self.moves(state):
                    levels[nxt[0]][nxt] = None
        return [list(level) for level in levels]


def budget_units(max_flops_ratio: float) -> int:
    """The budget in whole :data:`FLOPS_QUANTUM` units, rounded down."""
    return math.floor(max_flops_ratio * _UNITS + _EPS)


def segment_cost_table(costs: StepCosts, injected: Action | None) -> list[list[int]]:
    """``table[p][n]``: quantised cost of a segment of length ``n`` starting at step ``p`` (rounded up).

    The segment is one FULL step then ``n - 1`` reused steps, every second of which is ``injected``
    (SELECTIVE in ProCache Eq. 7, DEEP for per-depth spaces; the rule of :meth:`Schedule.inject_selective`).
    """
    table = []
    for start in range(costs.num_steps):
        macs, row = costs.full[start], [0]
        for length in range(1, costs.num_steps - start + 1):
            if length > 1:
                step, run = start + length - 1, length - 1
                macs += costs.of(injected, step) if injected is not None and run % 2 == 0 else costs.reuse[step]
            row.append(math.ceil(macs * _UNITS / costs.full_total - _EPS))
        table.append(row)
    return table


def min_cost_by_num_full(rules: Rules, cost: list[list[int]] | None) -> np.ndarray:
    """Cheapest quantised cost of a schedule with ``k`` FULL steps, for each ``k`` (``-1`` if none exists).

    ``rules.owed`` is ignored: this is what the empty-space diagnosis and ``num_full_values`` need.
    """
    rules = Rules(rules.num_steps, rules.min_len, rules.max_len, rules.monotone)
    size = rules.num_steps + 1
    best: dict[State, np.ndarray] = {}
    for level in reversed(rules.reachable):
        for state in level:
            value = np.full(size, _INF, dtype=np.int64)
            if rules.is_goal(state):
                value[0] = 0
            for length, nxt in rules.moves(state):
                step_cost = cost[state[0]][length] if cost else 0
                np.minimum(value[1:], best[nxt][:-1] + step_cost, out=value[1:])
            best[state] = value
    result = best[rules.start()]
    return np.where(result >= _INF, -1, result)


class CountTable:
    """Exact counts of feasible completions from every reachable state, by cost (a windowed DP).

    ``self.values[state] = (low, counts)``: ``counts[i]`` schedules complete ``state`` at quantised cost
    ``low + i``, truncated at the budget; only the non-empty cost window is stored, so a 50-step space with
    a budget of 10,000 units stays a few megabytes. Without a budget every cost is 0 and the window has one
    entry. Counts are ``int64`` while the count without a budget fits, Python integers beyond (an any-order
    space has ``2 ** (T - 1)`` members).
    """

    def __init__(self, rules: Rules, cost: list[list[int]] | None, budget: int) -> None:
        self.rules, self.cost, self.budget = rules, cost, budget
        self.values: dict[State, tuple[int, np.ndarray] | None] = {}
        self._cumulative: dict[State, np.ndarray] = {}
        # Counts by cost never exceed the count without a budget: int64 while that fits (fast), else Python ints.
        bound = 2 ** (rules.num_steps - 1) if cost is None else CountTable(rules, None, 0).total
        self._dtype = np.int64 if bound < 2**62 else object
        for level in reversed(rules.reachable):
            for state in level:
                parts = [(low + self.step_cost(state, length), counts)
                         for length, nxt in rules.moves(state) if self.values[nxt] is not None
                         for low, counts in [self.values[nxt]]]
                if rules.is_goal(state):
                    parts.append((0, np.ones(1, dtype=self._dtype)))
                self.values[state] = self._merge(parts)

    def step_cost(self, state: State, length: int) -> int:
        return self.cost[state[0]][length] if self.cost else 0

    def _merge(self, parts: list[tuple[int, np.ndarray]]) -> tuple[int, np.ndarray] | None:
        parts = [(low, counts) for low, counts in parts if low <= self.budget]
        if not parts:
            return None
        low = min(p[0] for p in parts)
        high = min(self.budget, max(p_low + len(c) - 1 for p_low, c in parts))
        out = np.zeros(high - low + 1, dtype=self._dtype)
        for p_low, counts in parts:
            kept = counts[: high - p_low + 1]
            out[p_low - low: p_low - low + len(kept)] += kept
        return low, out

    def completions(self, state: State, budget_left: int) -> int:
        """Feasible completions of ``state`` whose cost is at most ``budget_left``."""
        entry = self.values.get(state)
        if entry is None or budget_left < entry[0]:
            return 0
        if state not in self._cumulative:
            self._cumulative[state] = np.cumsum(entry[1])
        cumulative = self._cumulative[state]
        return int(cumulative[min(budget_left - entry[0], len(cumulative) - 1)])

    @property
    def total(self) -> int:
        return self.completions(self.rules.start(), self.budget)

    def children(self, state: State, budget_left: int) -> list[tuple[int, State, int, int]]:
        """``(length, next state, budget left after it, completions)`` for every move with completions."""
        out = []
        for length, nxt in self.rules.moves(state):
            left = budget_left - self.step_cost(state, length)
            weight = self.completions(nxt, left)
            if weight:
                out.append((length, nxt, left, weight))
        return out

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """Segment lengths of a uniformly random member: each move is drawn with weight = its completions."""
        state, left, lengths = self.rules.start(), self.budget, []
        while state[0] != self.rules.num_steps:
            options = self.children(state, left)
            draw, index = _randbelow(rng, sum(option[3] for option in options)), 0
            while draw >= options[index][3]:
                draw -= options[index][3]
                index += 1
            length, state, left, _ = options[index]
            lengths.append(length)
        return tuple(lengths)

    def walk(self, choose: Chooser) -> tuple[int, ...]:
        """Segment lengths chosen one by one by ``choose``, offered only lengths that a member completes."""
        state, left, lengths = self.rules.start(), self.budget, []
        while state[0] != self.rules.num_steps:
            moves = {length: (nxt, nxt_left) for length, nxt, nxt_left, _ in self.children(state, left)}
            length = choose(len(lengths), state[0], list(moves))
            if length not in moves:
                raise ValueError(f"segment {len(lengths)} at step {state[0]}: length {length!r} chosen, "
                                 f"feasible lengths are {list(moves)}")
            state, left = moves[length]
            lengths.append(length)
        return tuple(lengths)

    def enumerate(self) -> Iterator[tuple[int, ...]]:
        """Every member's segment lengths, in lexicographic order (depth first, dead branches pruned)."""
        stack: list[tuple[State, int, tuple[int, ...]]] = [(self.rules.start(), self.budget, ())]
        while stack:
            state, left, prefix = stack.pop()
            if state[0] == self.rules.num_steps:
                yield prefix
                continue
            children = self.children(state, left)
            stack.extend((nxt, nxt_left, prefix + (length,)) for length, nxt, nxt_left, _ in reversed(children))


def _randbelow(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in ``[0, n)``, exact also for counts beyond ``int64`` (rejection on random bits)."""
    if n < 2**62:
        return int(rng.integers(n))
    bits = n.bit_length()
    while True:
        draw = int.from_bytes(rng.bytes((bits + 7) // 8), "little") >> (-bits % 8)
        if draw < n:
            return draw

"""Write a strategy, register it, and search with it: the same path a third-party package takes.

    python examples/custom_strategy.py

A package would register it in its pyproject.toml instead of calling ``STRATEGIES.register``::

    [project.entry-points."procache_opt.strategies"]
    late_full = "my_package.strategies:LateFull"
"""

from collections.abc import Sequence

import procache_opt
from procache_opt import Schedule, Strategy, TrialResult
from procache_opt.strategy import STRATEGIES


class LateFull(Strategy):
    """Proposes uniform samples, keeping only those with more FULL steps in the second half than the first."""

    name = "late_full"

    def __init__(self, space, seed: int = 0, tries: int = 200) -> None:
        super().__init__(space, seed)
        self.tries = tries
        self.seen: set[tuple[int, ...]] = set()

    def ask(self, n: int = 1) -> list[Schedule]:
        out = []
        for _ in range(self.tries):
            if len(out) == n:
                break
            s = self.space.sample(self.rng)
            half = s.num_steps // 2
            if s.pattern not in self.seen and s.pattern[half:].count(1) > s.pattern[:half].count(1):
                self.seen.add(s.pattern)
                out.append(s)
        return out

    def tell(self, results: Sequence[TrialResult]) -> None:
        pass  # a real strategy learns here


STRATEGIES.register("late_full", LateFull)
result = procache_opt.search("dit-digits", budget_flops=0.5, strategy="late_full", n_trials=8, monotone=None)
print(result.summary())

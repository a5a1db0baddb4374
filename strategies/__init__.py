"""Built-in search strategies, registered by entry point under ``procache_opt.strategies``.

* ``constrained_sampling``: ProCache's own search (arXiv 2512.17298, Sec. 3.2; ``CASS.py``): K = 5 sampled
  candidates, keep the best.
* ``random``: uniform samples from the space, never repeated.
* ``uniform``: FORA-style evenly spaced FULL steps, one schedule per feasible FULL-step count.
* ``exhaustive``: every member of a small space.
* ``tpe``: Optuna's TPE over segment lengths.
* ``evolutionary``: a genetic algorithm with selection, crossover and mutation objects.
* ``graph``: LeMiCa's best path through a DAG of cached segments (arXiv 2511.00090): measure each segment
  with a single-segment run, then an exact DP over the space.

Example:
    >>> import procache_opt.strategies as strategies
    >>> "tpe" in strategies.available()
    True
    >>> from procache_opt.space import ScheduleSpace
    >>> strategies.create("random", ScheduleSpace(12, monotone=None, v_max=4), seed=0).name
    'random'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procache_opt.strategy import STRATEGIES, Strategy

if TYPE_CHECKING:
    from procache_opt.space import ScheduleSpace

__all__ = ["available", "create"]


def available() -> list[str]:
    """Sorted names of every registered strategy (built-in, third-party and run-time registered)."""
    return STRATEGIES.available()


def create(name: str, space: ScheduleSpace, seed: int = 0, **kwargs: Any) -> Strategy:
    """Instantiate the strategy called ``name`` on ``space``; unknown names and keyword arguments raise."""
    return STRATEGIES.create(name, space, seed=seed, **kwargs)

"""Runtimes: the ways a caching schedule can be executed, behind one plugin interface.

* ``"procache"`` (the default): this project's diffusers hooks, :mod:`procache_opt.runtime`; runs every action;
* ``"cache-dit"``: cache-dit's DBCache with the schedule as its static steps computation mask
  (:mod:`procache_opt.runtimes.cache_dit`; ``pip install 'procache-opt[cache-dit]'``), also an export target;
* ``"diffusers"``: diffusers' own caches (First-Block-Cache, TaylorSeer, MagCache, FasterCache, PAB), which
  decide at run time what to skip (:mod:`procache_opt.compare.diffusers_caches`; the comparison's baselines).

The evaluator, the search and the comparison harness call ``runtime.apply(pipe, schedule)`` and nothing
runtime-specific. Runtimes are found by name through the entry-point group ``procache_opt.runtimes``, like
strategies and objectives; ``search(..., runtime="cache-dit", runtime_options={...})`` picks one.

Example:
    >>> from procache_opt.runtimes import create_runtime
    >>> create_runtime("cache-dit", calibrator="taylorseer").label
    'F1B0 + TaylorSeer (order 1)'
"""

from procache_opt.runtimes._base import (
    DEFAULT_RUNTIME,
    RUNTIMES,
    Runtime,
    RuntimeHandle,
    UnsupportedScheduleError,
    create_runtime,
)

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "Runtime", "RuntimeHandle", "UnsupportedScheduleError", "create_runtime"]

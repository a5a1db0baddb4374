"""Compare search strategies and caching baselines, with statistics, tables and figures for papers.

``compare(...)`` runs every (budget, strategy, seed) search and every baseline into one resumable folder;
:mod:`~procache_opt.compare.stats` aggregates (means, confidence intervals, paired tests),
:mod:`~procache_opt.compare.export` writes Markdown, CSV and LaTeX, :mod:`~procache_opt.compare.figures`
draws PNG and PDF figures. ``benchmarks/compare_report.py`` turns a comparison into ``docs/results.md``.

The names below load on first use, so ``import procache_opt.compare`` does not import torch.

This package shares its name with the function ``procache_opt.compare``: whichever Python binds to
``procache_opt.compare`` first (the package, when a submodule is imported before the function is asked for),
``procache_opt.compare(...)`` must still work, so the package module itself is callable and forwards to
:func:`~procache_opt.compare.harness.compare`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["compare", "CompareConfig", "CompareResult", "ComparisonMismatchError"]

_LAZY = {
    "compare": "procache_opt.compare.harness",
    "ComparisonMismatchError": "procache_opt.compare.harness",
    "CompareConfig": "procache_opt.compare.plan",
    "CompareResult": "procache_opt.compare.result",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'procache_opt.compare' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


class _CallableModule(types.ModuleType):
    """The package module, callable as :func:`~procache_opt.compare.harness.compare` (see the docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return __getattr__("compare")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

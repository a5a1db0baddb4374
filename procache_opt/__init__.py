"""procache-opt: find and run fast, high-quality feature-caching schedules for Diffusion Transformers.

Implements ProCache (Cao et al., AAAI 2026, arXiv 2512.17298) as an engine: a constrained schedule space,
pluggable search strategies, objectives measured against full computation, and a diffusers runtime.

Importing the package does not import torch: strategies (which must stay torch-free) live under it. The
torch-side names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from procache_opt.costs import StepCosts
from procache_opt.objective import Objective, RunOutputs, Score
from procache_opt.schedule import Action, Schedule, ScheduleMismatchError, SelectiveConfig
from procache_opt.search_config import SearchConfig
from procache_opt.space import ScheduleSpace
from procache_opt.strategy import Strategy, TrialResult, TrialStatus

__version__ = "0.1.0"

#: Public names that import torch, diffusers or optuna, loaded on first attribute access. No submodule may
#: share a name with a function here: importing it would rebind the package attribute to the module.
_LAZY = {
    "search": "procache_opt._search",
    "run_search": "procache_opt._search",
    "SearchResult": "procache_opt.result",
    "apply": "procache_opt.runtime",
    "count_flops": "procache_opt.flops",
    "step_costs": "procache_opt.flops",
    "Calibration": "procache_opt.calibration",
    "Evaluator": "procache_opt.evaluate",
    "compare": "procache_opt.compare",
    "zoo": "procache_opt.zoo",
}

__all__ = [
    "Action",
    "Calibration",
    "Evaluator",
    "Objective",
    "RunOutputs",
    "Schedule",
    "ScheduleMismatchError",
    "ScheduleSpace",
    "Score",
    "SearchConfig",
    "SearchResult",
    "SelectiveConfig",
    "StepCosts",
    "Strategy",
    "TrialResult",
    "TrialStatus",
    "__version__",
    "apply",
    "compare",
    "count_flops",
    "run_search",
    "search",
    "step_costs",
    "zoo",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'procache_opt' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    # ``zoo`` is a module of functions; ``compare`` is a module that is itself callable.
    value = module if name in ("zoo", "compare") else getattr(module, name)
    globals()[name] = value
    return value

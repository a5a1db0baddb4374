"""procache-opt: find and run fast, high-quality feature-caching schedules for Diffusion Transformers.

Implements ProCache (Cao et al., AAAI 2026, arXiv 2512.17298) as an engine: a constrained schedule space,
pluggable search strategies, objectives measured against full computation, and a diffusers runtime.
"""

from procache_opt.costs import StepCosts
from procache_opt.objective import Objective, RunOutputs, Score
from procache_opt.schedule import Action, Schedule, ScheduleMismatchError, SelectiveConfig
from procache_opt.strategy import Strategy, TrialResult, TrialStatus

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Objective",
    "RunOutputs",
    "Schedule",
    "ScheduleMismatchError",
    "Score",
    "SelectiveConfig",
    "StepCosts",
    "Strategy",
    "TrialResult",
    "TrialStatus",
    "__version__",
]

"""Evaluation backends: ``local`` (this process) and ``ray`` (workers on a Ray cluster)."""

from procache_opt.backends.base import Backend, EvalOutcome, run_evaluation
from procache_opt.backends.local import LocalBackend

__all__ = ["Backend", "EvalOutcome", "LocalBackend", "run_evaluation"]

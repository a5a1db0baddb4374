"""Evaluation backends: ``local`` (this process) and ``ray`` (workers on a Ray cluster).

``RayBackend`` loads on first use, so importing procache_opt never imports ray.
"""

from typing import Any

from procache_opt.backends.base import Backend, EvalOutcome, run_evaluation
from procache_opt.backends.local import LocalBackend

__all__ = ["Backend", "EvalOutcome", "LocalBackend", "RayBackend", "run_evaluation"]


def __getattr__(name: str) -> Any:
    if name == "RayBackend":
        from procache_opt.backends.ray_backend import RayBackend

        return RayBackend
    raise AttributeError(f"module 'procache_opt.backends' has no attribute {name!r}")

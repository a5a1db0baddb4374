"""This project's own runtime (:mod:`procache_opt.runtime`: diffusers hooks) as a runtime plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from procache_opt.runtimes._base import Runtime, RuntimeHandle
from procache_opt.schedule import Schedule

__all__ = ["ProCacheRuntime"]

_CACHE_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn")


@dataclass(frozen=True)
class ProCacheRuntime(Runtime):
    """Every action (FULL, REUSE, SELECTIVE, DEEP, SHALLOW) and forecast order, through
    :func:`procache_opt.runtime.apply`.

    Attributes:
        fast: The fast path (skip blocks that reuse every branch; conditioning computed once per generation).
        cache_dtype: Store cached branch outputs in this dtype (a torch dtype name), ``None``: their own.

    Example:
        >>> ProCacheRuntime().check(Schedule.from_pattern([1, 0, 2, 3, 4]))  # runs everything
    """

    name: ClassVar[str] = "procache"
    #: A FULL step through these hooks computes exactly what the reference computed and nothing else reads the
    #: steps before the last FULL one before a reuse, so those calls can be replayed (``procache_opt._replay``).
    replays_full_steps: ClassVar[bool] = True

    fast: bool = True
    cache_dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fast, bool):
            raise ValueError(f"procache runtime option fast={self.fast!r}; allowed: true or false")
        if self.cache_dtype is not None and self.cache_dtype not in _CACHE_DTYPES:
            raise ValueError(f"procache runtime option cache_dtype={self.cache_dtype!r}; allowed: None or one of "
                             f"{_CACHE_DTYPES}")

    def apply(self, pipe: Any, schedule: Schedule | None) -> RuntimeHandle:
        import torch

        from procache_opt.runtime import apply

        self.check(schedule)
        dtype = getattr(torch, self.cache_dtype) if self.cache_dtype else None
        return apply(pipe, schedule, fast=self.fast, cache_dtype=dtype)

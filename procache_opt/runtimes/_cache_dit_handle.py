"""Apply and remove cache-dit on a pipeline, leaving it exactly as it was; report what cache-dit did.

``cache_dit.disable_cache`` undoes most of ``enable_cache`` but leaves the patched ``forward`` of a DiT transformer
(its ``DiTPatchFunctor``), the ``_is_patched`` flag and the statistics attributes of the block list behind
(cache-dit 1.5.3). The handle records the attributes and submodules of the pipeline and of every module of its
transformer before enabling and restores them after disabling (``tests/test_cache_dit.py`` checks it).

cache-dit logs each enable at INFO and each disable as a WARNING, on stdout; a search applies it hundreds of
times, so both are quiet here unless the user set ``CACHE_DIT_LOG_LEVEL``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from procache_opt._optional import require
from procache_opt.runtime.stats import RunStats, TransformerClock
from procache_opt.runtimes.cache_dit import CacheDitRuntime
from procache_opt.schedule import Schedule

__all__ = ["CacheDitHandle", "enable"]

_MISSING = object()


@contextlib.contextmanager
def quiet_cache_dit() -> Iterator[None]:
    """cache-dit's loggers at ERROR for the ``with`` block, unless ``CACHE_DIT_LOG_LEVEL`` is set."""
    if os.environ.get("CACHE_DIT_LOG_LEVEL"):
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "CACHE_DIT" or name.startswith("cache_dit")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


class CacheDitHandle:
    """cache-dit enabled on a pipeline; a context manager, :meth:`remove` restores the pipeline exactly."""

    def __init__(self, pipe: Any, runtime: CacheDitRuntime, schedule: Schedule | None) -> None:
        self.pipe = pipe
        self.runtime = runtime
        self.schedule = schedule
        self.removed = False
        transformer = pipe.transformer
        self._saved = [(obj, dict(vars(obj)), dict(obj._modules) if hasattr(obj, "_modules") else None)
                       for obj in (*transformer.modules(), pipe)]
        self._class_call = vars(type(pipe)).get("__call__", _MISSING)
        num_blocks = len(transformer.transformer_blocks)
        self.stats = RunStats(num_blocks=num_blocks)
        self._clock: TransformerClock | None = None

    def _attach_clock(self) -> None:
        self._clock = TransformerClock(self.pipe.transformer)
        self.stats.clock = self._clock

    def summary(self) -> str:
        """What cache-dit did in the last generation (read from ``cache_dit.summary``) and the transformer time."""
        cache_dit = require("cache_dit", "cache-dit", "the cache-dit runtime")
        if not self.removed:
            with quiet_cache_dit():
                stats = [s for s in cache_dit.summary(self.pipe, logging=False) if s.cache_options]
            self._count(stats[0] if stats else None)
        policy = "static mask" if self.schedule is not None else "dynamic DBCache"
        return self.stats.summary(f"cache-dit {cache_dit.__version__} {self.runtime.label}, {policy}")

    def _count(self, stats: Any) -> None:
        """Rebuild the counts from cache-dit's own statistics of the last generation."""
        blocks = self.stats.num_blocks
        self.stats.steps.clear()
        self.stats.blocks.clear()
        if stats is None:
            return
        executed = stats.accumulated_executed_steps
        cached = len(stats.cached_steps) + len(stats.cfg_cached_steps)
        self.stats.generations = 1 if executed else 0
        self.stats.steps.update({"computed": executed - cached, "cached": cached})
        self.stats.blocks.update(self.runtime.blocks_for(executed - cached, cached, blocks))

    def remove(self) -> None:
        """Disable cache-dit and restore every attribute and submodule it added or replaced (idempotent)."""
        if self.removed:
            return
        if self._clock is not None:
            self._clock.remove()
        cache_dit = require("cache_dit", "cache-dit", "the cache-dit runtime")
        with quiet_cache_dit():
            cache_dit.disable_cache(self.pipe)
        for obj, attributes, modules in self._saved:
            _restore(vars(obj), attributes)
            if modules is not None:
                _restore(obj._modules, modules)
        if self._class_call is not _MISSING and vars(type(self.pipe)).get("__call__") is not self._class_call:
            type(self.pipe).__call__ = self._class_call
        self.removed = True

    def __enter__(self) -> CacheDitHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()


def _restore(current: dict[str, Any], saved: dict[str, Any]) -> None:
    for key in [k for k in current if k not in saved]:
        del current[key]
    for key, value in saved.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value


def enable(pipe: Any, runtime: CacheDitRuntime, schedule: Schedule | None) -> CacheDitHandle:
    """``cache_dit.enable_cache(pipe, **cache_dit.load_configs(runtime.config_for(schedule)))``: the same calls an
    exported configuration file goes through (SGLang's ``--cache-dit-config`` makes them too)."""
    cache_dit = require("cache_dit", "cache-dit", "the cache-dit runtime")
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not hasattr(pipe, "scheduler"):
        raise TypeError(f"the cache-dit runtime needs a diffusers pipeline (cache-dit wraps its __call__), got "
                        f"{type(pipe).__name__}")
    blocks = len(transformer.transformer_blocks)
    if runtime.computed_blocks > blocks:
        raise ValueError(f"cache-dit runtime: Fn_compute_blocks + Bn_compute_blocks = {runtime.computed_blocks} "
                         f"exceeds the model's {blocks} blocks")
    if schedule is not None:
        schedule.check_compatible(model_class=type(transformer).__name__)
    config = runtime.config_for(schedule)
    handle = CacheDitHandle(pipe, runtime, schedule)
    try:
        with quiet_cache_dit():
            cache_dit.enable_cache(pipe, **cache_dit.load_configs(config))
        handle._attach_clock()
    except BaseException:
        handle.remove()
        raise
    return handle

"""The runtime plugin interface: how a pipeline is made to follow a schedule (or to cache on its own).

The evaluator, the search phases and the comparison harness run every method through one call,
``runtime.apply(pipe, schedule)``, so none of them grows a branch per runtime. A runtime is a frozen dataclass
(its fields are its options, so it round-trips through ``SearchConfig.runtime_options``) that says what it can
execute (:attr:`Runtime.actions`, :attr:`Runtime.forecast_orders`) and how much each step costs
(:meth:`Runtime.step_costs`), so the schedule space counts a budget in the runtime's own terms.

This module is pure Python: ``SearchConfig`` validates a runtime's name, options and capabilities before torch
or the runtime's library is imported.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
from collections import Counter
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ClassVar, Protocol

from procache_opt.block_counts import generation_blocks
from procache_opt.costs import StepCosts
from procache_opt.plugins import PluginRegistry
from procache_opt.schedule import FORECAST_ORDERS, Action, Schedule, SelectiveConfig

__all__ = ["ContextHandle", "DEFAULT_RUNTIME", "RUNTIMES", "Runtime", "RuntimeHandle", "UnsupportedScheduleError",
           "create_runtime", "listed"]

#: The runtime a search uses unless told otherwise: this project's hooks (:mod:`procache_opt.runtime`).
DEFAULT_RUNTIME = "procache"
DEFAULT_SELECTIVE = SelectiveConfig()


class UnsupportedScheduleError(ValueError):
    """A schedule uses something the runtime cannot execute; the message says what would be lost."""


class RuntimeHandle(Protocol):
    """What :meth:`Runtime.apply` returns: a context manager that undoes the application exactly."""

    def remove(self) -> None: ...

    def summary(self) -> str: ...

    def __enter__(self) -> RuntimeHandle: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None: ...


class Runtime(abc.ABC):
    """One way of executing caching on a diffusers pipeline (subclasses are frozen dataclasses).

    Class attributes:
        name: The registry name (``RUNTIMES``).
        actions: The schedule actions it executes; :meth:`check` refuses a schedule with others.
        forecast_orders: The ``Schedule.forecast_order`` values it executes.
        forecast_note: How the runtime forecasts instead, if it has its own way (shown when a search asks for a
            forecast order it does not run).
        follows_schedules: Whether it executes schedules (only such runtimes can be searched for).
        runs_without_schedule: Whether it can also be applied with ``schedule=None`` and decide at run time which
            steps to compute (diffusers' caches, cache-dit's dynamic DBCache).
        replays_full_steps: Whether a run may take its leading FULL steps from the full computation's recorded
            outputs (:mod:`procache_opt._replay`): only when skipping those transformer calls leaves the runtime's
            own state as computing them would.
        module: The Python module the runtime needs (``None``: nothing beyond procache-opt's own dependencies).
        extra: The pip extra that installs :attr:`module`.
    """

    name: ClassVar[str]
    actions: ClassVar[frozenset[Action]] = frozenset(Action)
    forecast_orders: ClassVar[tuple[int, ...]] = FORECAST_ORDERS
    forecast_note: ClassVar[str] = ""
    follows_schedules: ClassVar[bool] = True
    runs_without_schedule: ClassVar[bool] = False
    replays_full_steps: ClassVar[bool] = False
    module: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None

    @abc.abstractmethod
    def apply(self, pipe: Any, schedule: Schedule | None) -> RuntimeHandle:
        """Make ``pipe`` follow ``schedule`` (``None`` for runtimes that choose steps themselves) until the handle
        is removed."""

    def check(self, schedule: Schedule | None) -> None:
        """Raise :class:`UnsupportedScheduleError` (one line) for a schedule this runtime cannot execute."""
        if schedule is None:
            if not self.runs_without_schedule:
                raise UnsupportedScheduleError(f"the {self.name} runtime follows a schedule; pass one")
            return
        if not self.follows_schedules:
            raise UnsupportedScheduleError(f"the {self.name} runtime decides at run time which steps to compute; it "
                                           "runs no schedule (apply it with schedule=None)")
        unsupported = sorted({a for a in schedule.actions if a not in self.actions})
        if unsupported:
            steps = [t for t, a in enumerate(schedule.actions) if a in unsupported]
            raise UnsupportedScheduleError(
                f"the {self.name} runtime cannot run {', '.join(f'{a.name} ({int(a)})' for a in unsupported)} steps "
                f"(at steps {listed(steps)}); it runs {', '.join(a.name for a in sorted(self.actions))}")
        if schedule.forecast_order not in self.forecast_orders:
            raise UnsupportedScheduleError(f"the {self.name} runtime cannot run forecast_order="
                                           f"{schedule.forecast_order}; it runs {self.forecast_orders}")

    def step_costs(self, transformer: Any, num_steps: int, *, guidance: bool,
                   selective: SelectiveConfig = DEFAULT_SELECTIVE, depth_split: float = 0.5) -> StepCosts:
        """Counted MACs of each action at each step when this runtime executes it (default: this project's
        runtime's counts, :func:`procache_opt.flops.step_costs`)."""
        from procache_opt.flops import step_costs

        return step_costs(transformer, num_steps, selective=selective, guidance=guidance, depth_split=depth_split)

    def block_outcomes(self, schedule: Schedule, num_layers: int) -> Counter[str]:
        """How the blocks spend one generation of ``schedule`` under this runtime (computed, selective, reused,
        forecast; default: this project's runtime, :func:`procache_opt.block_counts.generation_blocks`)."""
        return generation_blocks(schedule, num_layers)

    def options(self) -> dict[str, Any]:
        """The runtime's settings as JSON (what ``SearchConfig.runtime_options`` holds to rebuild it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) \
            else {}

    @property
    def label(self) -> str:
        """The runtime and its settings in a few words, for reports."""
        settings = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.name} ({settings})" if settings else self.name

    @classmethod
    def installed(cls) -> bool:
        """Whether :attr:`module` can be imported (checked without importing it)."""
        return cls.module is None or importlib.util.find_spec(cls.module) is not None


class ContextHandle:
    """A runtime applied through a context manager: entered now, exited by :meth:`remove` (idempotent)."""

    def __init__(self, context: AbstractContextManager[Any], label: str) -> None:
        self._context = context
        self._label = label
        context.__enter__()
        self.removed = False

    def remove(self) -> None:
        if not self.removed:
            self.removed = True
            self._context.__exit__(None, None, None)

    def summary(self) -> str:
        return f"{self._label}: decides at run time what to skip (it keeps no counts)"

    def __enter__(self) -> ContextHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()


RUNTIMES: PluginRegistry[Runtime] = PluginRegistry("procache_opt.runtimes", "runtime")


def create_runtime(name: str = DEFAULT_RUNTIME, **options: Any) -> Runtime:
    """The runtime registered as ``name`` with ``options`` (unknown ones raise ``TypeError``).

    Example:
        >>> create_runtime("cache-dit", Fn_compute_blocks=2).Fn_compute_blocks
        2
    """
    return RUNTIMES.create(name, **options)


def listed(steps: list[int], limit: int = 6) -> str:
    """Step indices for a one-line message: the first ``limit``, then how many more."""
    shown = ", ".join(map(str, steps[:limit]))
    return shown + (f" and {len(steps) - limit} more" if len(steps) > limit else "")

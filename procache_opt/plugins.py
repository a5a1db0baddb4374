"""One registry for every plugin kind, found by name through entry points.

Built-in strategies and objectives register in ``pyproject.toml`` under the entry-point groups
``procache_opt.strategies`` and ``procache_opt.objectives``, exactly as a third-party package would::

    [project.entry-points."procache_opt.strategies"]
    my_strategy = "my_package.module:MyStrategy"

Entry points load lazily, on first use of their name. Classes can also be registered at run time with
:meth:`PluginRegistry.register` (handy in notebooks and tests).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

__all__ = ["PluginRegistry", "UnknownPluginError"]

T = TypeVar("T")


class UnknownPluginError(KeyError):
    """A plugin name that no entry point and no run-time registration provides."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class PluginRegistry(Generic[T]):
    """Name -> plugin class, filled from one entry-point group plus run-time registrations."""

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._registered: dict[str, type[T]] = {}

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def available(self) -> list[str]:
        """Sorted names of every plugin that can be loaded."""
        return sorted(set(self._entry_points()) | set(self._registered))

    def register(self, name: str, cls: type[T] | None = None) -> Callable[[type[T]], type[T]] | type[T]:
        """Register ``cls`` under ``name``; usable as a decorator (``@registry.register("name")``)."""

        def _add(c: type[T]) -> type[T]:
            self._registered[name] = c
            return c

        return _add(cls) if cls is not None else _add

    def unregister(self, name: str) -> None:
        self._registered.pop(name, None)

    def get(self, name: str) -> type[T]:
        """The plugin class called ``name``; an unknown name lists the known ones."""
        if name in self._registered:
            return self._registered[name]
        eps = self._entry_points()
        if name not in eps:
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.available()) or '(none)'}. "
                f"Third-party {self.kind}s register under the entry-point group {self.group!r}."
            )
        return eps[name].load()

    def check_kwargs(self, name: str, kwargs: Any, reserved: tuple[str, ...] = ()) -> None:
        """Raise ``TypeError`` if ``name`` does not accept every keyword in ``kwargs`` (before building anything).

        ``reserved`` are arguments the caller passes itself (a strategy's ``space`` and ``seed``): a user may
        not set them as options.
        """
        params = inspect.signature(self.get(name)).parameters
        taken = sorted(set(kwargs) & set(reserved))
        if taken:
            raise TypeError(f"{self.kind} {name!r}: {taken} are set by procache-opt itself, not as options")
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            accepted = sorted(n for n, p in params.items()
                              if p.kind is not inspect.Parameter.VAR_POSITIONAL and n not in reserved)
            raise TypeError(f"{self.kind} {name!r} got unexpected keyword arguments {unknown}; it accepts {accepted}")

    def defaults(self, name: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keyword defaults of ``name``'s constructor, JSON values only, less ``exclude``: what an option the
        user left out resolves to, so that a changed default is visible where settings are compared."""
        out = {}
        for param_name, param in inspect.signature(self.get(name)).parameters.items():
            value = param.default
            if param_name in exclude or value is inspect.Parameter.empty:
                continue
            if value is None or isinstance(value, (bool, int, float, str)):
                out[param_name] = value
        return out

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate ``name``; keyword arguments the plugin does not accept raise ``TypeError``."""
        self.check_kwargs(name, kwargs)
        return self.get(name)(*args, **kwargs)

"""What makes two searches the same search, and the one function that decides whether a stored one may resume.

A stored trial may only be replayed into a search that would have scored it the same: same weights, dtype,
device class, objectives and their options, calibration set, steps, guidance, space and strategy (Optuna
refuses to load a study into another direction; Ray Tune restores a searcher with its config). The identity is
a flat JSON mapping (``"model.weights"``, ``"objective_options"``, ...) so a refusal can name what differs.

Example:
    >>> resume_conflicts({"dtype": "float32", "steps": 50}, {"dtype": "bfloat16", "steps": 50})
    ['dtype']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["SearchConfigMismatchError", "check_resumable", "flatten", "resume_conflicts"]


class SearchConfigMismatchError(ValueError):
    """A store holds a different search than the one being resumed into it."""


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``{"model": {"weights": h}}`` -> ``{"model.weights": h}``).

    Values are normalised through JSON first, so a tuple and the list it is stored as compare equal; an empty
    mapping adds no key, so ``{}`` and an absent setting compare equal.
    """
    out: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(mapping)).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def resume_conflicts(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys on which two search identities differ (empty: the stored search may be resumed)."""
    a, b = flatten(stored), flatten(current)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _short(value: Any) -> str:
    text = json.dumps(value) if value is not None else "unset"
    return text if len(text) <= 40 else text[:37] + "..."


def check_resumable(stored: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raise :class:`SearchConfigMismatchError` naming every differing key (stored -> now) unless they match."""
    conflicts = resume_conflicts(stored, current)
    if conflicts:
        a, b = flatten(stored), flatten(current)
        shown = ", ".join(f"{k} ({_short(a.get(k))} -> {_short(b.get(k))})" for k in conflicts[:8])
        more = f" and {len(conflicts) - 8} more" if len(conflicts) > 8 else ""
        raise SearchConfigMismatchError(
            f"{where} holds a different search (differs in: {shown}{more}); use a new storage location, or the "
            "same model and settings to resume"
        )

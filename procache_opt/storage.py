"""Persist a search so that an interrupted one resumes without redoing or losing any evaluation.

Two stores, one interface:

* :class:`DirectoryStore` (``storage="runs/my-search"``): ``search.json`` (what was searched) and
  ``trials.json`` (every finished trial), each rewritten atomically after every result.
* :class:`OptunaStore` (``storage="sqlite:///search.db"`` or any Optuna storage URL): every trial becomes a
  finished Optuna trial whose user attribute ``procache`` holds the full record, so Optuna's tools (e.g.
  optuna-dashboard) can browse a search.

The engine stores each result *before* telling the strategy about it (style guide, item 3).
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any

from procache_opt._io import atomic_write_json
from procache_opt.strategy import TrialResult, TrialStatus

__all__ = ["TrialStore", "DirectoryStore", "OptunaStore", "open_store", "SearchConfigMismatchError"]

_URL_PREFIXES = ("sqlite:", "mysql", "postgresql", "redis:", "journal:")


class SearchConfigMismatchError(ValueError):
    """A store holds a different search than the one being resumed into it."""


class TrialStore(abc.ABC):
    """Where one search's configuration and finished trials live."""

    @abc.abstractmethod
    def load_config(self) -> dict[str, Any] | None:
        """The stored search configuration, or ``None`` for a new store."""

    @abc.abstractmethod
    def save_config(self, config: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def load_trials(self) -> list[TrialResult]: ...

    @abc.abstractmethod
    def append(self, result: TrialResult) -> None:
        """Persist one finished trial durably before the call returns."""

    def bind(self, config: dict[str, Any]) -> list[TrialResult]:
        """Attach a search to this store: check the stored config matches and return the trials to replay.

        Resuming a store with a different space, objective or model would silently mix results, so it fails
        and says which keys differ.
        """
        stored = self.load_config()
        if stored is None:
            self.save_config(config)
            return []
        canonical = json.loads(json.dumps(config))
        diff = sorted(k for k in set(stored) | set(canonical) if stored.get(k) != canonical.get(k))
        if diff:
            raise SearchConfigMismatchError(
                f"the storage holds a different search (differs in: {', '.join(diff)}); "
                "use a new storage location, or call search() with the same settings to resume"
            )
        return self.load_trials()


class DirectoryStore(TrialStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._trials: list[TrialResult] | None = None

    def load_config(self) -> dict[str, Any] | None:
        f = self.path / "search.json"
        return json.loads(f.read_text()) if f.exists() else None

    def save_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / "search.json", config)

    def load_trials(self) -> list[TrialResult]:
        if self._trials is None:
            f = self.path / "trials.json"
            self._trials = [TrialResult.from_dict(d) for d in json.loads(f.read_text())] if f.exists() else []
        return list(self._trials)

    def append(self, result: TrialResult) -> None:
        trials = self.load_trials() + [result]
        atomic_write_json(self.path / "trials.json", [t.to_dict() for t in trials])
        self._trials = trials


class OptunaStore(TrialStore):
    """Store trials in an Optuna storage (RDB, journal or redis URL) under ``study_name``."""

    def __init__(self, url: str, study_name: str = "procache-opt") -> None:
        import optuna

        self._optuna = optuna
        self.study = optuna.create_study(storage=url, study_name=study_name, load_if_exists=True)

    def load_config(self) -> dict[str, Any] | None:
        raw = self.study.user_attrs.get("procache_config")
        return json.loads(raw) if raw else None

    def save_config(self, config: dict[str, Any]) -> None:
        self.study.set_user_attr("procache_config", json.dumps(config, sort_keys=True))

    def load_trials(self) -> list[TrialResult]:
        trials = self.study.get_trials(deepcopy=False)
        records = [t.user_attrs["procache"] for t in trials if "procache" in t.user_attrs]
        return sorted((TrialResult.from_dict(json.loads(r)) for r in records), key=lambda r: r.trial_id)

    def append(self, result: TrialResult) -> None:
        optuna = self._optuna
        ok = result.status == TrialStatus.COMPLETE and result.value is not None
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            value=result.value if ok else None,
            # No Optuna params: their distributions must agree across trials, and a pattern is not one.
            user_attrs={"procache": json.dumps(result.to_dict()), "pattern": str(result.schedule)},
        )
        self.study.add_trial(trial)


def open_store(storage: str | os.PathLike[str] | TrialStore | None) -> TrialStore | None:
    """A store for ``storage``: an existing store, an Optuna URL, a results folder, or ``None`` (no store)."""
    if storage is None or isinstance(storage, TrialStore):
        return storage
    if isinstance(storage, str) and storage.startswith(_URL_PREFIXES):
        return OptunaStore(storage)
    return DirectoryStore(storage)

"""Persist a search so that an interrupted one continues exactly and never mixes with another search.

Two stores, one interface:

* :class:`DirectoryStore` (``storage="runs/my-search"``): ``search.json`` (the search's identity and what it
  measured to set itself up) and ``state.json`` (the :class:`~procache_opt.state.SearchState`: every finished
  trial, the strategy's state, the evaluations in flight), each replaced atomically.
* :class:`OptunaStore` (``storage="sqlite:///search.db"`` or any database URL Optuna takes): every trial is
  also a finished Optuna trial whose user attribute ``procache`` holds the full record, so Optuna's tools (e.g.
  optuna-dashboard) can browse a search; the identity and the rest of the state are study user attributes.

The engine records each result *before* telling the strategy about it (style guide, item 3), and
:meth:`TrialStore.bind` refuses to resume a store that holds another search (:mod:`procache_opt.identity`).
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from procache_opt._io import CorruptFileError, atomic_write_json, read_json
from procache_opt.identity import SearchConfigMismatchError, check_resumable
from procache_opt.state import SearchState
from procache_opt.strategy import TrialResult

__all__ = ["TrialStore", "DirectoryStore", "OptunaStore", "open_store", "is_database_url",
           "SearchConfigMismatchError", "StorageError"]

#: The layout of what a store holds; a store of another format is refused, never half-read.
STORE_FORMAT = 2

#: ``scheme://...``: what SQLAlchemy and Optuna take. A folder called ``mysql_results`` is not a URL.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StorageError(ValueError):
    """A storage location that cannot be used; the message names it and says what to do."""


def is_database_url(storage: object) -> bool:
    return isinstance(storage, str) and bool(_URL.match(storage))


class TrialStore(abc.ABC):
    """Where one search's identity, measured set-up and :class:`~procache_opt.state.SearchState` live."""

    #: How messages name this store (a folder or a URL).
    location: str

    @abc.abstractmethod
    def _read_meta(self) -> dict[str, Any] | None:
        """The stored identity and set-up, or ``None`` for a new store."""

    @abc.abstractmethod
    def _write_meta(self, meta: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def load_state(self) -> SearchState | None:
        """The stored state, or ``None`` if no trial was stored yet."""

    @abc.abstractmethod
    def save_state(self, state: SearchState) -> None:
        """Persist ``state`` durably before the call returns, replacing the previous one."""

    def load_trials(self) -> list[TrialResult]:
        state = self.load_state()
        return list(state.trials) if state is not None else []

    def bind(self, identity: Mapping[str, Any]) -> dict[str, Any]:
        """Attach a search to this store and return what it measured before (``{}`` for a new store).

        Resuming a store with other weights, objectives or settings would silently mix results, so
        :func:`~procache_opt.identity.check_resumable` refuses it and names the keys that differ.
        """
        meta = self._read_meta()
        if meta is None:
            self._write_meta({"format": STORE_FORMAT, "identity": dict(identity), "setup": {}})
            return {}
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or not isinstance(meta.get("identity"),
                                                                                                 dict):
            raise StorageError(
                f"{self.location} holds a search stored by another version of procache-opt (or not a search); "
                "use a new storage location"
            )
        check_resumable(meta["identity"], identity, self.location)
        setup = meta.get("setup")
        return dict(setup) if isinstance(setup, dict) else {}

    def save_setup(self, setup: Mapping[str, Any]) -> None:
        """Keep what the search measured to set itself up (probe, forecast choice), so a resume reuses it."""
        meta = self._read_meta() or {}
        self._write_meta({**meta, "setup": dict(setup)})


class DirectoryStore(TrialStore):
    """A folder holding ``search.json`` and ``state.json`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise StorageError(f"storage {self.path} is a file, not a folder; pass a folder (or a database URL)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage folder {self.path} cannot be created: {exc.strerror or exc}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(f"storage folder {self.path} is not writable; pass a folder you can write to")

    def _read_meta(self) -> dict[str, Any] | None:
        f = self.path / "search.json"
        return read_json(f, "search file") if f.exists() else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.path / "search.json", meta)

    def load_state(self) -> SearchState | None:
        f = self.path / "state.json"
        if not f.exists():
            return None
        try:
            return SearchState.from_dict(read_json(f, "search state"))
        except CorruptFileError:
            raise
        except ValueError as exc:
            raise CorruptFileError(f"search state {f} is corrupt: {exc}; move it away to start this search over") \
                from None

    def save_state(self, state: SearchState) -> None:
        atomic_write_json(self.path / "state.json", state.to_dict())


class OptunaStore(TrialStore):
    """Store a search in an Optuna storage (any database URL) under ``study_name``."""

    def __init__(self, url: str, study_name: str = "procache-opt") -> None:
        import optuna

        self._optuna = optuna
        self.location = f"storage {url}"
        #: The database file of an SQLite URL (what a search locks), else ``None``.
        self.sqlite_path = check_database_url(url)
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per search
        try:
            self.study = optuna.create_study(storage=url, study_name=study_name, load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors have no common base worth naming here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(f"--storage {url} cannot be opened as an Optuna database ({first})") from None
        finally:
            optuna.logging.set_verbosity(level)
        self._stored = len(self._records())

    def _records(self) -> list[str]:
        trials = self.study.get_trials(deepcopy=False)
        return [t.user_attrs["procache"] for t in sorted(trials, key=lambda t: t.number) if "procache" in t.user_attrs]

    def _read_meta(self) -> dict[str, Any] | None:
        raw = self.study.user_attrs.get("procache_meta")
        return _loads(raw, self.location, "search") if raw else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self.study.set_user_attr("procache_meta", json.dumps(meta, sort_keys=True, allow_nan=False))

    def load_state(self) -> SearchState | None:
        raw = self.study.user_attrs.get("procache_state")
        if not raw:
            return None
        rest = _loads(raw, self.location, "state")
        trials = [_loads(r, self.location, "trial") for r in self._records()]
        try:
            return SearchState.from_dict({**rest, "trials": trials})
        except ValueError as exc:
            raise CorruptFileError(f"the search state in {self.location} is corrupt: {exc}") from None

    def save_state(self, state: SearchState) -> None:
        for result in state.trials[self._stored:]:  # trials are only ever appended
            self._add(result)
        self._stored = len(state.trials)
        rest = {k: v for k, v in state.to_dict().items() if k != "trials"}
        self.study.set_user_attr("procache_state", json.dumps(rest, sort_keys=True, allow_nan=False))

    def _add(self, result: TrialResult) -> None:
        optuna = self._optuna
        ok = result.ok
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            value=result.value if ok else None,
            # No Optuna params: their distributions must agree across trials, and a pattern is not one.
            user_attrs={"procache": json.dumps(result.to_dict(), allow_nan=False), "pattern": str(result.schedule)},
        )
        self.study.add_trial(trial)


def _loads(raw: str, location: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise CorruptFileError(f"the {what} record in {location} is not valid JSON ({exc})") from None


def check_database_url(url: str) -> str | None:
    """Refuse, in one line, a URL that SQLAlchemy cannot parse, whose driver is not installed, or whose SQLite
    file is not a database or lies in a missing folder: before any model is loaded. Returns the SQLite file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StorageError(f"--storage {url} is not a database URL SQLAlchemy understands ({exc})") from None
    except ImportError as exc:
        raise StorageError(f"--storage {url} needs the database driver {exc.name!r}, which is not installed; "
                           "install it (e.g. pip install pymysql, psycopg2-binary) or use sqlite:///FILE") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.parent.is_dir():
            raise StorageError(f"--storage {url}: the folder {path.parent} does not exist; create it first")
        if path.is_dir():
            raise StorageError(f"--storage {url}: {path} is a folder, not a database file")
        if path.exists() and path.stat().st_size and path.read_bytes()[:16] != b"SQLite format 3\x00":
            raise StorageError(f"--storage {url}: {path} is not an SQLite database; pass a new or an existing "
                               "database file")
        return str(path)
    return None


def open_store(storage: str | os.PathLike[str] | TrialStore | None) -> TrialStore | None:
    """A store for ``storage``: an existing store, a database URL, a results folder, or ``None`` (no store)."""
    if storage is None or isinstance(storage, TrialStore):
        return storage
    if is_database_url(storage):
        return OptunaStore(str(storage))
    return DirectoryStore(storage)

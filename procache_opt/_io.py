"""Small file helpers shared by every module that persists or reads state.

Writes are atomic and get the permissions any other file the user creates would get (``0644`` under the
usual umask ``022``), and JSON is strict: ``NaN`` and ``Infinity`` are not JSON, so writing them is a bug
caught here, and reading them is refused. Reads name the file and say what is wrong with it, in one line.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CorruptFileError", "atomic_write_text", "atomic_write_json", "read_json", "read_text"]


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


#: What ``open(path, "w")`` would give a new file: ``mkstemp`` makes it ``0600``, which hides results from the
#: colleagues a user shares a results folder with.
_FILE_MODE = 0o666 & ~_current_umask()


class CorruptFileError(ValueError):
    """A file procache-opt reads is missing, unreadable or does not hold what it should; the message names it."""


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one.

    The data goes to a temporary file in the same folder, which then replaces ``path`` with ``os.replace``
    (atomic on POSIX and Windows). An interrupted search therefore never leaves a corrupt file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as strict JSON (a non-finite float raises ``ValueError`` instead of writing ``NaN``)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False))


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The text of ``path``; a missing, unreadable or non-text file raises :class:`CorruptFileError` naming it.

    ``what`` says what the file should be (``"schedule file"``), so the message reads as one sentence.
    """
    path = Path(path)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise CorruptFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{what} {path} is a folder; pass the file itself") from None
    except UnicodeDecodeError:
        raise CorruptFileError(f"{what} {path} is not a text file") from None
    except OSError as exc:
        raise CorruptFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The JSON value in ``path``; anything but a readable file of strict JSON raises :class:`CorruptFileError`."""
    text = read_text(path, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                               f"{exc.colno})") from None
    except ValueError as exc:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise CorruptFileError(f"{what} {path} is nested too deeply to be a {what}") from None

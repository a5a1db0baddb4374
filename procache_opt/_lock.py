"""One process at a time per results folder.

Two searches into one folder would both run every trial and overwrite each other's files. An advisory
``flock`` on ``<folder>/.procache-opt.lock`` is held while a search writes there; the operating system releases
it when the process ends however it ends, so a killed search never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FolderInUseError", "LOCK_NAME", "hold"]

LOCK_NAME = ".procache-opt.lock"


class FolderInUseError(RuntimeError):
    """Another procache-opt process is writing to the folder."""


@contextlib.contextmanager
def hold(folder: str | os.PathLike[str], flag: str = "--out", name: str = LOCK_NAME) -> Iterator[None]:
    """Hold the folder's lock for the ``with`` block; raise :class:`FolderInUseError` at once if it is taken.

    ``flag`` names the setting that chose the folder, so the message says what to change; ``name`` is the lock
    file (one per SQLite database, so two databases in one folder do not block each other).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; the folder is shared at the user's risk
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderInUseError(f"{flag} {folder} is in use by another procache-opt process (pid {owner}); wait "
                                   f"for it to finish or choose another {flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock

"""Optional dependencies load on first use, with an error that names the pip extra that installs them.

Ray (distributed evaluation) and LPIPS (a perceptual objective) are heavy and most searches need neither, so
they are extras, as Optuna and diffusers make theirs (style guide, item 14): ``pip install -e .`` runs the
default search, ``pip install -e ".[dev]"`` installs everything the tests use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise ``ImportError`` saying that ``needed_by`` needs ``pip install
    'procache-opt[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{needed_by} needs {module.split('.')[0]!r}, which is not installed: pip install "
                          f"'procache-opt[{extra}]'") from exc

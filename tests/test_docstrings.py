"""Every docstring example runs: the examples in the docs are tested code, not prose that may have drifted."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest

import procache_opt

#: Modules whose import needs an optional extra that a plain install lacks are still tested: dev installs them.
MODULES = sorted(m.name for m in pkgutil.walk_packages(procache_opt.__path__, "procache_opt."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"


@pytest.mark.parametrize(("missing", "code", "extra"), [
    ("ray", "from procache_opt.backends.ray_backend import RayBackend", "ray"),
    ("ray", "from procache_opt.backends.ray_tune import StrategySearcher", "ray"),
    ("lpips", "import procache_opt.objectives as o; o.create('lpips')", "lpips"),
    ("cache_dit", "from procache_opt.runtimes.cache_dit import scm_schedule; scm_schedule('fast', 50)", "cache-dit"),
])
def test_a_missing_extra_is_named_with_its_pip_command(missing: str, code: str, extra: str) -> None:
    hide = f"import sys; sys.modules[{missing!r}] = None; "  # as if the extra were not installed
    out = subprocess.run([sys.executable, "-c", hide + code], capture_output=True, text=True, cwd="/")
    assert out.returncode != 0
    assert f"pip install 'procache-opt[{extra}]'" in out.stderr.strip().splitlines()[-1], out.stderr[-500:]


def test_plugin_registries_are_public() -> None:
    import procache_opt.objectives as objectives
    import procache_opt.strategies as strategies

    assert {"tpe", "evolutionary", "constrained_sampling"} <= set(strategies.available())
    assert {"feature_error", "lpips"} <= set(objectives.available())

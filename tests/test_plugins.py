import pytest

from procache_opt.plugins import PluginRegistry, UnknownPluginError
from procache_opt.strategy import STRATEGIES


class _Thing:
    def __init__(self, a: int, b: int = 2) -> None:
        self.a, self.b = a, b


def test_register_create_and_unknown_names():
    reg: PluginRegistry[_Thing] = PluginRegistry("procache_opt.test_nothing", "thing")
    reg.register("thing", _Thing)
    assert "thing" in reg.available()
    assert reg.create("thing", 1, b=3).b == 3
    with pytest.raises(UnknownPluginError, match="unknown thing 'other'; available: thing"):
        reg.get("other")


def test_unknown_keyword_raises_type_error_listing_accepted():
    reg: PluginRegistry[_Thing] = PluginRegistry("procache_opt.test_nothing", "thing")
    reg.register("thing", _Thing)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['c'\]; it accepts \['a', 'b'\]"):
        reg.create("thing", 1, c=3)


def test_builtin_strategies_are_found_through_entry_points():
    names = STRATEGIES.available()
    for name in ("constrained_sampling", "tpe", "evolutionary", "random", "uniform", "exhaustive", "graph"):
        assert name in names

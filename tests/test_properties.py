"""Property tests: whatever is thrown at the loaders and the command line, the answer is a result or one line
that names the file or flag, never a traceback or another exception type.

Three sources of bad input: schedule files (arbitrary JSON, and valid schedules with one entry replaced),
storage files (``search.json`` and ``state.json`` of a results folder), and command lines for ``search`` and
``compare`` (flags from the real vocabulary with arbitrary values; a command that passes every check stops
where the search would begin).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procache_opt import _search
from procache_opt._io import CorruptFileError
from procache_opt.cli import main
from procache_opt.schedule import Schedule
from procache_opt.state import SearchState
from procache_opt.storage import DirectoryStore
from procache_opt.strategy import TrialResult, TrialStatus

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=20)

VALID = Schedule.from_pattern([1, 0, 2, 1, 0, 0], forecast_order=1).to_dict()


def _one_line(error: BaseException, *names: str) -> None:
    text = str(error)
    assert "\n" not in text and text, repr(text)
    assert any(name in text for name in names), f"{text!r} names none of {names}"


def _replace_one(base: dict, key: str, value: object) -> dict:
    return {**base, key: value}


schedule_documents = json_values | st.builds(_replace_one, st.just(VALID), st.sampled_from(sorted(VALID)), json_values)


@SETTINGS
@given(document=schedule_documents)
def test_schedule_files_load_or_fail_in_one_line(tmp_path: Path, document: object) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(document))
    try:
        schedule = Schedule.load(path)
    except ValueError as error:
        _one_line(error, str(path))
    else:
        assert Schedule.from_dict(schedule.to_dict()) == schedule  # what loads, round-trips


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_schedule_files_of_any_bytes_fail_in_one_line(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "schedule.json"
    path.write_bytes(raw)
    try:
        Schedule.load(path)
    except ValueError as error:
        _one_line(error, str(path))


def _state() -> dict:
    trial = TrialResult(0, Schedule.from_pattern([1, 0, 1]), TrialStatus.COMPLETE, value=0.5, values={"x": 0.5})
    return SearchState((trial,), 1, {"rng": 3}, ((1, Schedule.from_pattern([1, 1, 0])),), 2).to_dict()


def _corrupt(document: dict, path: list[object], value: object) -> dict:
    """``document`` with the entry at ``path`` (followed as far as it leads) replaced by ``value``."""
    out = json.loads(json.dumps(document))
    node = out
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[int(step) % len(node)]] if isinstance(step, int) else node
        elif isinstance(node, list) and node and isinstance(step, int):
            node = node[step % len(node)]
    if isinstance(node, dict) and node:
        node[sorted(node)[int(path[-1]) % len(node)]] = value
    elif isinstance(node, list) and node:
        node[int(path[-1]) % len(node)] = value
    return out


state_documents = json_values | st.builds(_corrupt, st.just(_state()), st.lists(st.integers(0, 9), min_size=1,
                                                                               max_size=4), json_values)


@SETTINGS
@given(state=state_documents, meta=json_values | st.just({"format": 2, "identity": {"seed": 0}, "setup": {}}))
def test_storage_files_load_or_fail_in_one_line(tmp_path: Path, state: object, meta: object) -> None:
    folder = tmp_path / "store"
    folder.mkdir(exist_ok=True)
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "search.json").write_text(json.dumps(meta))
    store = DirectoryStore(folder)
    for action in (lambda: store.bind({"seed": 0}), store.load_state):
        try:
            action()
        except ValueError as error:  # CorruptFileError, StorageError, SearchConfigMismatchError
            _one_line(error, str(folder))


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_storage_files_of_any_bytes_fail_in_one_line(tmp_path: Path, raw: bytes) -> None:
    folder = tmp_path / "store"
    folder.mkdir(exist_ok=True)
    (folder / "state.json").write_bytes(raw)
    try:
        DirectoryStore(folder).load_state()
    except CorruptFileError as error:
        _one_line(error, str(folder))


class _Reached(BaseException):
    """Every check passed: the search would start here (not an error the command line may swallow)."""


FLAG_VALUES = {
    "--model": st.sampled_from(["dit-digits", "no/such/folder", "", "/"]),
    "--budget": st.sampled_from(["0.5", "1", "0", "-1", "nan", "inf", "2", "x"]),
    "--strategy": st.sampled_from(["tpe", "random", "bogus", ""]),
    "--objective": st.sampled_from(["feature_error", "psnr,latency", "bogus", ",", "feature_error,bogus"]),
    "--trials": st.sampled_from(["1", "0", "-3", "x", "30"]),
    "--steps": st.sampled_from(["1", "2", "50", "0", "x"]),
    "--guidance": st.sampled_from(["4", "nan", "inf", "-1", "0"]),
    "--samples": st.sampled_from(["1", "0", "-1", "8"]),
    "--heldout": st.sampled_from(["0", "-1", "16", "x"]),
    "--monotone": st.sampled_from(["auto", "none", "sideways"]),
    "--depth-split": st.sampled_from(["0.5", "0", "1", "nan"]),
    "--forecast": st.sampled_from(["auto", "0", "1", "2"]),
    "--cost": st.sampled_from(["flops", "measured", "time"]),
    "--seed": st.sampled_from(["0", "-1", "x"]),
    "--backend": st.sampled_from(["local", "ray", "dask"]),
    "--workers": st.sampled_from(["2", "0", "x"]),
    "--option": st.sampled_from(["num_candidates=3", "num_candidatez=3", "n_startup_trials=x", "noequals",
                                 "population_size=[1]"]),
    "--storage": st.sampled_from(["sqlite:///{tmp}/s.db", "mysql://u@h/db", "{tmp}/afile", "mysql_results",
                                  "sqlite:///{tmp}/missing/s.db"]),
    "--out": st.sampled_from(["{tmp}/out", "{tmp}/afile", "{tmp}/afile/sub"]),
    "--runtime": st.sampled_from(["procache", "cache-dit", "diffusers", "bogus", ""]),
    "--runtime-option": st.sampled_from(["calibrator=taylorseer", "Fn_compute_blocks=0", "Fn=1", "noequals",
                                         "fast=false"]),
}
switches = st.sampled_from(["--no-selective", "--per-depth", "--no-progress"])


@st.composite
def search_argv(draw: st.DrawFn) -> list[str]:
    flags = draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=6, unique=True))
    argv = ["search"]
    for flag in flags:
        argv += [flag, draw(FLAG_VALUES[flag])]
    return argv + draw(st.lists(switches, max_size=2, unique=True))


@SETTINGS
@given(argv=search_argv())
def test_search_command_lines_fail_in_one_line_or_reach_the_search(tmp_path: Path, monkeypatch, capsys,
                                                                   argv: list[str]) -> None:
    capsys.readouterr()  # tmp_path and capsys live across examples: start from empty output
    (tmp_path / "afile").write_text("mine")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]

    def reached(*args: object, **kwargs: object) -> None:
        raise _Reached

    monkeypatch.setattr(_search, "run_search", reached)
    try:
        code = main(argv)
    except _Reached:
        return
    except SystemExit as exit_:  # argparse: an unparsable value
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("procache-opt"), (argv, err)
    assert (tmp_path / "afile").read_text() == "mine"


@SETTINGS
@given(budgets=st.sampled_from(["0.5", "0.5,0.35", "2", "x", "", "0.5,nan"]),
       strategies=st.sampled_from(["tpe", "tpe,bogus", "tpe,tpe", "", "random,constrained_sampling"]),
       trials=st.sampled_from(["3", "0", "x"]), fresh=st.booleans())
def test_compare_command_lines_fail_in_one_line_and_keep_user_files(tmp_path: Path, monkeypatch, capsys,
                                                                   budgets: str, strategies: str, trials: str,
                                                                   fresh: bool) -> None:
    from procache_opt.compare import harness

    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir(exist_ok=True)
    (mine / "thesis.txt").write_text("years of work")

    def reached(*args: object, **kwargs: object) -> None:
        raise _Reached

    monkeypatch.setattr(harness, "compare", reached)
    argv = ["compare", "--out", str(mine), "--budgets", budgets, "--strategies", strategies, "--trials", trials,
            "--no-progress"] + (["--fresh"] if fresh else [])
    try:
        code = main(argv)
    except _Reached:
        code = None
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (None, 2), (argv, err)
    if code == 2:
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert (mine / "thesis.txt").read_text() == "years of work"


def test_the_property_vocabulary_covers_every_search_flag() -> None:
    from procache_opt.cli import build_parser

    parser = build_parser()
    search = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "search")[1]
    flags = {o for action in search._actions for o in action.option_strings if o.startswith("--")}
    assert flags - {"--help", "--address"} <= set(FLAG_VALUES) | {"--no-selective", "--per-depth", "--no-progress"}


pytestmark = pytest.mark.filterwarnings("ignore")

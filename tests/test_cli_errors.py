"""Every user error on the command line is one line naming the flag or file, exit status 2; Ctrl-C is one line
with the command that resumes, exit status 130; a results folder is used by one process at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from procache_opt import _search
from procache_opt.cli import main
from procache_opt.schedule import Schedule
from procache_opt.storage import is_database_url

SEARCH = ["search", "--no-progress", "--steps", "6", "--samples", "1", "--heldout", "0", "--monotone", "none",
          "--forecast", "0", "--trials", "2", "--strategy", "random"]


def _one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    # one line of ours; anything else is diffusers' "Loading pipeline components" bar when a model was loaded
    ours = [line for line in err.splitlines() if line.strip() and "Loading pipeline components" not in line]
    assert len(ours) == 1 and ours[0].startswith(f"procache-opt {argv[0]}: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(("flags", "fragments"), [
    (["--strategy", "bogus"], ["--strategy: unknown strategy 'bogus'; available:"]),
    (["--option", "num_candidatez=3", "--strategy", "constrained_sampling"],
     ["--option: strategy 'constrained_sampling' got unexpected keyword arguments ['num_candidatez']"]),
    (["--heldout", "-1"], ["--heldout: must be a number of samples >= 1"]),
    (["--guidance", "nan"], ["--guidance: must be a finite number"]),
    (["--guidance", "inf"], ["--guidance: must be a finite number"]),
    (["--steps", "1", "--budget", "1"], ["--steps: must be an integer >= 2"]),
    (["--objective", "feature_error,bogus"], ["--objective: unknown objective 'bogus'"]),
    (["--workers", "2"], ["--workers/--address: need backend='ray'"]),
    (["--model", "no/such/folder"], ["--model: 'no/such/folder' is neither a bundled model"]),
])
def test_bad_search_flags_are_one_line_before_any_work(capsys, tmp_path, flags, fragments):
    start = time.perf_counter()
    _one_line_error(capsys, [*SEARCH, "--out", str(tmp_path / "out"), *flags], *fragments)
    assert time.perf_counter() - start < 2  # in process: torch is not loaded for this
    assert not (tmp_path / "out").exists()  # nothing was written


def test_unusable_output_folders_are_refused_before_any_work(capsys, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("mine")
    _one_line_error(capsys, [*SEARCH, "--out", str(afile)], f"--out {afile} is a file")
    _one_line_error(capsys, [*SEARCH, "--out", str(afile / "sub")], "cannot be written", "not a writable folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        _one_line_error(capsys, [*SEARCH, "--out", str(locked / "x")], "cannot be written")
    assert afile.read_text() == "mine"


@pytest.mark.parametrize(("storage", "fragment"), [
    ("sqlite:///{tmp}/garbage.db", "garbage.db is not an SQLite database"),
    ("sqlite:///{tmp}/missing/search.db", "the folder {tmp}/missing does not exist"),
    ("mysql://user@localhost/db", "needs the database driver"),
    ("not a url://x", None),  # a folder whose name merely contains "://" is not refused as a URL
    ("{tmp}/a-file", "is a file, not a folder"),
])
def test_unusable_storage_is_refused_before_any_work(capsys, tmp_path, storage, fragment):
    (tmp_path / "garbage.db").write_bytes(b"this is not sqlite" * 10)
    (tmp_path / "a-file").write_text("mine")
    storage = storage.format(tmp=tmp_path)
    if fragment is None:
        assert not is_database_url(storage) and not is_database_url("mysql_results")
        return
    _one_line_error(capsys, [*SEARCH, "--out", str(tmp_path / "out"), "--storage", storage],
                    fragment.format(tmp=tmp_path))
    assert (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.parametrize(("content", "fragment"), [
    ("[1, 0, 1]", "a schedule is a JSON object"),
    (json.dumps({**Schedule.from_pattern([1, 0]).to_dict(), "model": "DiT"}), "'model' must be an object"),
    (json.dumps({"format_version": 1}), "has no 'pattern'"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("{not json", "is not valid JSON"),
])
def test_bad_schedule_files_are_one_line_naming_the_file(capsys, tmp_path, content, fragment):
    path = tmp_path / "schedule.json"
    path.write_text(content)
    _one_line_error(capsys, ["apply", "--schedule", str(path), "--out", str(tmp_path / "x.png")], str(path), fragment)
    _one_line_error(capsys, ["flops", "--schedule", str(path)], str(path), fragment)
    _one_line_error(capsys, ["apply", "--schedule", str(tmp_path), "--out", str(tmp_path / "x.png")], "is a folder")


@pytest.mark.parametrize("labels", ["5000", "0,99", "-1", "a,b"])
def test_labels_the_model_was_not_trained_on_are_refused(capsys, tmp_path, labels):
    schedule = Schedule.from_pattern([1, 0, 1, 0]).save(tmp_path / "s.json")
    _one_line_error(capsys, ["apply", "--schedule", str(schedule), "--labels", labels, "--out",
                             str(tmp_path / "x.png")], "--labels")
    assert not (tmp_path / "x.png").exists()


def test_all_trials_failing_is_one_line(capsys, tmp_path, monkeypatch):
    from procache_opt.evaluate import Evaluator

    def fail(self, schedule):
        raise FloatingPointError("NaN in the cached output")

    monkeypatch.setattr(Evaluator, "evaluate", fail)
    _one_line_error(capsys, [*SEARCH, "--out", str(tmp_path / "out")], "no trial completed within the budget",
                    "NaN in the cached output")


def test_ctrl_c_is_one_line_with_the_command_that_resumes(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_search, "run_search", interrupted)
    argv = [*SEARCH, "--out", str(tmp_path / "my out")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "resume with: procache-opt search --no-progress --steps 6 " in err and f"'{tmp_path}/my out'" in err


def test_a_second_search_into_the_same_folder_is_refused(capsys, tmp_path):
    from procache_opt._lock import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, os, time; fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', "
         "flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_error(capsys, [*SEARCH, "--out", str(out)], f"--out {out} is in use by another procache-opt "
                                                               f"process (pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "trials").exists()
    from procache_opt._lock import hold

    with hold(out):  # the killed holder left no stale lock behind
        pass


def test_prompts_for_a_class_conditional_model_are_refused_before_it_loads(capsys, tmp_path):
    schedule = Schedule.from_pattern([1, 0, 1, 0]).save(tmp_path / "s.json")
    err = _one_line_error(capsys, ["apply", "--schedule", str(schedule), "--prompt", "a cat", "--out",
                                   str(tmp_path / "x.png")], "--prompt: dit-digits is a DiTPipeline", "--labels")
    assert "Loading" not in err  # decided from model_index.json, not by loading the pipeline

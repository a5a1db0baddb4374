"""Files procache-opt writes and reads: modes, strict JSON, and schedule files that are refused, not guessed."""

import json
import os
import stat

import pytest

from procache_opt._io import CorruptFileError, atomic_write_json, read_json
from procache_opt.schedule import Schedule, SelectiveConfig


def test_written_files_get_the_users_default_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write_json(tmp_path / "result.json", {"a": 1})
    schedule = Schedule.from_pattern([1, 0, 1]).save(tmp_path / "schedule.json")
    (tmp_path / "plain.txt").write_text("")  # what open() gives: the mode to match
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(schedule.stat().st_mode) == expected


def test_non_finite_numbers_are_never_written_nor_read(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"value": float("nan")})
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "nan.json").write_text('{"value": NaN}')
    with pytest.raises(CorruptFileError, match="nan.json is not valid JSON .*NaN"):
        read_json(tmp_path / "nan.json", "trials file")


GOOD = Schedule.from_pattern([1, 0, 2, 1]).to_dict()


@pytest.mark.parametrize(("data", "message"), [
    ([1, 0, 1], "a schedule is a JSON object"),
    ({**GOOD, "model": "DiT"}, "'model' must be an object"),
    ({k: v for k, v in GOOD.items() if k != "pattern"}, "has no 'pattern'"),
    ({**GOOD, "pattern": [1.9, 0.7, 0, 1]}, "list of integer action digits"),
    ({**GOOD, "pattern": [True, 0, 0, 1]}, "list of integer action digits"),
    ({**GOOD, "forecast_order": 1.5}, "'forecast_order' must be int"),
    ({**GOOD, "selective": "abc"}, "'selective' must be an object"),
    ({**GOOD, "selective": {"fresh_ratio": "high"}}, "fresh_ratio='high'"),
    ({**GOOD, "num_steps": 7}, "num_steps=7 but the pattern has 4 steps"),
    ({**GOOD, "model": {"class": 3}}, "model.class must be a string"),
])
def test_malformed_schedule_files_are_refused_naming_the_file(tmp_path, data, message):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        Schedule.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_schedule_files_are_refused_naming_the_file(tmp_path):
    with pytest.raises(CorruptFileError, match="is a folder"):
        Schedule.load(tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptFileError, match="deep.json is nested too deeply"):
        Schedule.load(deep)
    with pytest.raises(CorruptFileError, match="missing.json does not exist"):
        Schedule.load(tmp_path / "missing.json")


def test_integer_like_values_still_build_schedules():
    import numpy as np

    assert Schedule.from_pattern(np.array([1, 0, 1])).pattern == (1, 0, 1)
    with pytest.raises(ValueError, match="invalid schedule entry"):
        Schedule.from_pattern([1, 0.5, 1])
    with pytest.raises(ValueError, match="forecast_order"):
        Schedule.from_pattern([1, 0], forecast_order=1.0)
    with pytest.raises(ValueError, match="staleness_threshold"):
        SelectiveConfig(staleness_threshold=2.5)

import json

import pytest

from procache_opt import Action, Schedule, ScheduleMismatchError, SelectiveConfig


def test_pattern_views():
    s = Schedule.from_pattern([1, 0, 0, 1, 0, 1])
    assert s.pattern == (1, 0, 0, 1, 0, 1)
    assert s.num_steps == 6 and len(s) == 6
    assert s.num_full == 3
    assert s.intervals == (3, 2, 1)
    assert s.actions[1] is Action.REUSE
    assert Schedule.from_intervals([3, 2, 1]) == s


@pytest.mark.parametrize(
    ("pattern", "injected"),
    [
        ([1, 0, 0], (1, 0, 2)),
        ([1, 0, 0, 0], (1, 0, 2, 0)),
        ([1, 0, 0, 0, 0], (1, 0, 2, 0, 2)),
        ([1, 0, 1, 0, 0, 1, 0, 0, 0], (1, 0, 1, 0, 2, 1, 0, 2, 0)),
        ([1, 1, 1], (1, 1, 1)),
    ],
)
def test_inject_selective_follows_eq7(pattern, injected):
    assert Schedule.from_pattern(pattern).inject_selective().pattern == injected


def test_inject_selective_is_idempotent():
    s = Schedule.from_intervals([5, 4, 3, 2, 1]).inject_selective()
    assert s.inject_selective() == s


def test_first_step_must_be_full():
    with pytest.raises(ValueError, match="first step of a schedule must be FULL"):
        Schedule.from_pattern([0, 1, 1])


def test_invalid_digit_is_rejected_with_allowed_values():
    with pytest.raises(ValueError, match="0 \\(REUSE\\), 1 \\(FULL\\), 2 \\(SELECTIVE\\), 3 \\(DEEP"):
        Schedule.from_pattern([1, 5])


def test_per_depth_actions_split_the_blocks_into_two_patterns():
    s = Schedule.from_pattern([1, 3, 4, 0, 2], depth_split=0.25)
    assert s.per_depth and not Schedule.from_pattern([1, 0, 2]).per_depth
    assert s.group_actions(deep=False) == (Action.FULL, Action.REUSE, Action.FULL, Action.REUSE, Action.SELECTIVE)
    assert s.group_actions(deep=True) == (Action.FULL, Action.FULL, Action.REUSE, Action.REUSE, Action.SELECTIVE)
    assert s.split_layer(12) == 3 and s.split_layer(2) == 1
    assert Schedule.from_pattern([1, 0, 0, 0]).inject_selective(Action.DEEP).pattern == (1, 0, 3, 0)
    assert Schedule.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="depth_split=1.0 is out of range"):
        Schedule.from_pattern([1, 3], depth_split=1.0)


def test_json_round_trip_keeps_everything(tmp_path):
    s = Schedule.from_pattern(
        [1, 0, 2, 1], selective=SelectiveConfig(fresh_ratio=0.1), model_class="DiTTransformer2DModel",
        model_fingerprint="abc", metadata={"trial": 3}, forecast_order=1,
    )
    back = Schedule.from_json(s.to_json())
    assert back == s and back.metadata == {"trial": 3} and back.selective.fresh_ratio == 0.1
    assert back.forecast_order == 1 and back != Schedule.from_pattern([1, 0, 2, 1], selective=s.selective)
    path = s.save(tmp_path / "sub" / "schedule.json")
    assert Schedule.load(path) == s
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["num_steps"] == 4
    assert not list(path.parent.glob("*.tmp"))


def test_forecast_order_is_validated_and_older_files_reuse_as_cached():
    with pytest.raises(ValueError, match="forecast_order=2; allowed: \\(0, 1\\)"):
        Schedule.from_pattern([1, 0], forecast_order=2)
    data = Schedule.from_pattern([1, 0, 1]).to_dict()
    del data["forecast_order"]  # written before forecasting existed
    assert Schedule.from_dict(data).forecast_order == 0


def test_corrupt_and_future_files_fail_clearly():
    data = Schedule.full(3).to_dict()
    with pytest.raises(ValueError, match="format_version"):
        Schedule.from_dict({**data, "format_version": 99})
    with pytest.raises(ValueError, match="num_steps=5 but the pattern has 3"):
        Schedule.from_dict({**data, "num_steps": 5})


def test_compatibility_checks():
    s = Schedule.full(4, model_class="A", model_fingerprint="f1")
    with pytest.raises(ScheduleMismatchError, match="num_inference_steps=4"):
        s.check_compatible(num_steps=5)
    with pytest.warns(UserWarning, match="another model"):
        s.check_compatible(num_steps=4, model_class="A", model_fingerprint="f2")
    with pytest.raises(ScheduleMismatchError, match="fingerprint"):
        s.check_compatible(model_fingerprint="f2", strict=True)
    s.check_compatible(num_steps=4, model_class="A", model_fingerprint="f1")


def test_selective_config_validates_and_follows_authors_defaults():
    cfg = SelectiveConfig()
    assert cfg.deep_start(28) == 21  # DiT-XL/2: layer 21 of 28
    # ToCa-ddim50: no fresh tokens in the first quarter, 0.07 * 2.5 * 3 * layer factor at the end.
    assert cfg.num_fresh_tokens(256, step=0, num_steps=50, layer=27, num_layers=28) == 0
    late = cfg.fresh_ratio_at(49, 50, 27, 28)
    assert late == pytest.approx(0.07 * 2.5 * (1 + 2 - 4 * (1 - 49 / 50)) * 1.2)
    with pytest.raises(ValueError, match="fresh_ratio=1.5 is out of range"):
        SelectiveConfig(fresh_ratio=1.5)
    with pytest.raises(ValueError, match="unknown SelectiveConfig fields"):
        SelectiveConfig.from_dict({"nope": 1})

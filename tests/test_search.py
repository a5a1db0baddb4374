"""procache_opt.search end to end on tiny random pipelines: budget, resume, failures, CLI."""

import json
from itertools import pairwise

import pytest
import torch
from PIL import Image

import procache_opt
from procache_opt.baselines import best_fora_within
from procache_opt.cli import main
from procache_opt.evaluate import Evaluator
from procache_opt.reporting import before_after, before_after_rows
from procache_opt.result import block_share
from procache_opt.testing import tiny_dit_pipeline

FAST = {"num_inference_steps": 10, "calibration": 2, "heldout": None, "progress": False}


def test_search_returns_a_schedule_within_budget_that_runs():
    pipe = tiny_dit_pipeline(seed=0)
    result = procache_opt.search(pipe, budget_flops=0.5, strategy="random", n_trials=5, monotone=None, **FAST)
    best = result.best
    assert best.num_steps == 10 and result.best_trial.flops_ratio <= 0.5
    assert len(result.trials) == 5 and all(t.ok for t in result.trials)
    # the default v_min at budget 0.5 is 1: no proposal computes two FULL steps in a row
    assert not any(a == b == 1 for t in result.trials[1:] for a, b in pairwise(t.schedule.pattern))
    assert result.trials[0].schedule == best_fora_within(
        Evaluator(pipe, result_calibration(result), 10).costs, 0.5, selective=True,
        forecast_order=result.heldout["forecast"]["order"])
    assert best.metadata["value"] == min(t.value for t in result.trials if t.flops_ratio <= 0.5)
    for trial in result.completed:  # attention runs on FULL steps only; feed-forward also on SELECTIVE ones
        share = block_share(trial)
        assert share["attention"] == pytest.approx(trial.schedule.num_full / 10)
        assert share["attention"] <= share["feed_forward"] <= (10 - trial.schedule.pattern.count(0)) / 10
    assert "transformer block evaluations per trial" in result.summary()
    assert "block_share.attention" in result.to_records()[0]
    # seconds by phase, in the order they ran (no probe with monotone=None, no held-out check with heldout=None)
    assert list(result.seconds) == ["setup", "forecast", "trials"] and min(result.seconds.values()) > 0
    assert f"time: {sum(result.seconds.values()):.0f} s (setup" in result.summary()
    with procache_opt.apply(pipe, best):
        images = pipe(class_labels=[1], num_inference_steps=10, output_type="np").images
    assert images.shape[0] == 1


def result_calibration(result):
    return procache_opt.Calibration.from_dict(result.config["calibration"])


def test_probe_chooses_a_direction_and_heldout_compares_with_fora(tmp_path):
    result = procache_opt.search(tiny_dit_pipeline(seed=1), budget_flops=0.5, strategy="constrained_sampling",
                                 n_trials=4, num_inference_steps=10, calibration=2, heldout=2, progress=False)
    probe = result.heldout["probe"]
    assert probe["direction"] in ("increasing", "decreasing", None) and len(probe["reuse_error"]) >= 2
    assert result.config["space"]["monotone"] == probe["direction"]
    assert set(result.heldout["best"]["scores"]) >= {"feature_error", "psnr", "latency"}
    assert result.heldout["fora_baseline"]["flops_ratio"] <= 0.5
    assert any(line.startswith("held-out (2 samples)") for line in result.summary_lines)
    # the forecast order was measured on the FORA start point and every proposal uses the better one
    choice = result.heldout["forecast"]
    losses = {int(k): v for k, v in choice["losses"].items()}
    assert choice["order"] == min(losses, key=losses.get)
    assert result.config["space"]["forecast_order"] == choice["order"]
    assert {t.schedule.forecast_order for t in result.trials} == {choice["order"]}
    assert result.heldout["fora_baseline"]["pattern"] == choice["pattern"]
    assert ("uniform_baseline" in result.heldout) == (choice["order"] == 1)
    assert list(result.seconds) == ["setup", "probe", "forecast", "trials", "heldout"]
    summary = result.summary()  # what the runtime does with the best schedule, and how fast it ran
    assert f"as the procache runtime runs it: {result.best.num_full} FULL" in summary
    assert "measured on held-out samples (decoding included): best " in summary
    # the before/after picture is drawn from the held-out images (model=None: nothing is generated again)
    full, best = result.heldout_images["full"], result.heldout_images["best"]
    assert full.shape == best.shape and full.shape[0] == 2 and not full.equal(best)
    rows = before_after_rows(result, result.heldout_images)
    labels = [label.split("\n") for label, _ in rows]
    assert [lines[0] for lines in labels] == ["full computation", "searched schedule", "FORA baseline",
                                              "|searched - full|"]
    speedup = 1 / result.heldout["best"]["scores"]["latency"]["mean"]
    assert labels[1][1:] == [f"{speedup:.2f}x faster (measured)",
                             f"feature_error {result.heldout['best']['scores']['feature_error']['mean']:.3g}"]
    gain = float(labels[3][1].removeprefix("x "))
    assert torch.allclose(rows[3][1][:, 0], ((best - full).abs().mean(dim=1) * gain).clamp(0, 1))
    picture = before_after(None, result, tmp_path / "before_after.png")
    width, height = Image.open(picture).size  # 16-pixel samples drawn 100 pixels wide, four rows
    assert width > 2 * 100 and height > 4 * 100


def test_forecast_can_be_fixed_and_bad_values_are_refused():
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=2,
                                 monotone=None, forecast=1, **FAST)
    assert "forecast" not in result.heldout and result.best.forecast_order == 1
    with pytest.raises(ValueError, match="forecast: must be 'auto' or a forecast order in"):
        procache_opt.search(tiny_dit_pipeline(seed=0), forecast=2, **FAST)


def _schedules_passed_to(monkeypatch, method: str) -> list:
    """Every schedule given to ``Evaluator.<method>`` from now on, in call order."""
    seen = []
    original = getattr(Evaluator, method)

    def spy(self, schedule):
        seen.append(schedule)
        return original(self, schedule)

    monkeypatch.setattr(Evaluator, method, spy)
    return seen


def test_resume_replays_and_evaluates_only_new_schedules(tmp_path, monkeypatch):
    calls = _schedules_passed_to(monkeypatch, "evaluate")
    kwargs = dict(budget_flops=0.5, strategy="random", monotone=None, forecast=0, storage=str(tmp_path / "s"), **FAST)
    first = procache_opt.search(tiny_dit_pipeline(seed=0), n_trials=3, **kwargs)
    assert len(calls) == 3
    calls.clear()
    second = procache_opt.search(tiny_dit_pipeline(seed=0), n_trials=5, **kwargs)
    assert len(calls) == 2 and len(second.trials) == 5
    assert second.trials[:3] == first.trials
    assert not {s.pattern for s in calls} & {t.schedule.pattern for t in first.trials}
    with pytest.raises(ValueError, match="different search"):
        procache_opt.search(tiny_dit_pipeline(seed=0), n_trials=5, **{**kwargs, "budget_flops": 0.4})


def test_no_schedule_is_evaluated_twice(monkeypatch):
    calls = _schedules_passed_to(monkeypatch, "evaluate")
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=3,
                                 monotone=None, forecast="auto", **FAST)
    # the forecast choice runs the FORA start point both ways; the chosen one is trial 0 and is not run again
    assert len(calls) == len(set(calls)) == 2 + 3 - 1
    assert result.trials[0].schedule in calls[:2]


def test_every_run_uses_the_searchs_selective_config(monkeypatch):
    runs = _schedules_passed_to(monkeypatch, "run")
    config = procache_opt.SelectiveConfig(fresh_ratio=0.2)
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=2,
                                 selective=config, monotone=None, **{**FAST, "heldout": 2})
    # the forecast choice, the trials and the held-out baselines all run what the FLOPs were counted for
    assert len(runs) >= 2 + 1 + 3 and {s.selective for s in runs} == {config}
    assert result.best.selective == config


def test_progress_bar_ends_full_when_the_strategy_stops_early(capsys):
    fast = {**FAST, "progress": True}
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="constrained_sampling",
                                 n_trials=30, monotone=None, forecast=0, **fast)
    n = len(result.trials)
    assert n < 30 and f"{n}/{n}" in capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]


def test_failed_trials_are_recorded_and_the_search_goes_on(monkeypatch):
    original = Evaluator.evaluate

    def flaky(self, schedule):
        if schedule.pattern[1] == 0:
            raise FloatingPointError("NaN in the cached output")
        return original(self, schedule)

    monkeypatch.setattr(Evaluator, "evaluate", flaky)
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.6, strategy="exhaustive",
                                 n_trials=30, monotone=None, v_max=3, **FAST)
    failed = [t for t in result.trials if not t.ok]
    assert failed and all("NaN in the cached output" in t.error for t in failed)
    assert result.best.pattern[1] != 0


def test_bad_arguments_fail_clearly():
    pipe = tiny_dit_pipeline(seed=0)
    with pytest.raises(ValueError, match="budget_flops: must be a fraction"):
        procache_opt.search(pipe, budget_flops=1.5)
    with pytest.raises(ValueError, match="unknown strategy 'nope'; available: .*tpe"):
        procache_opt.search(pipe, strategy="nope", monotone=None, **FAST)
    with pytest.raises(ValueError, match="unexpected keyword arguments \\['bogus'\\]"):
        procache_opt.search(pipe, strategy="random", bogus=1, monotone=None, **FAST)
    with pytest.raises(ValueError, match="neither a bundled model"):
        procache_opt.search("no/such/folder", **FAST)


def test_cli_search_writes_schedule_and_report(tmp_path, capsys):
    folder = tmp_path / "pipe"
    tiny_dit_pipeline(seed=0).save_pretrained(folder)
    out = tmp_path / "out"
    code = main(["search", "--model", str(folder), "--budget", "0.5", "--strategy", "random", "--trials", "3",
                 "--steps", "10", "--samples", "2", "--heldout", "2", "--monotone", "none", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| best |" in printed and "| fora_baseline |" in printed
    schedule = procache_opt.Schedule.load(out / "schedule.json")
    assert schedule.num_steps == 10
    assert json.loads((out / "result.json").read_text())["trials"]
    for name in ("convergence.png", "before_after.png", "summary.md"):
        assert (out / name).stat().st_size > 0


def test_cli_reports_bad_input_without_traceback(capsys):
    assert main(["search", "--model", "no/such/folder", "--no-progress"]) == 2
    assert "error: --model: 'no/such/folder' is neither" in capsys.readouterr().err
    assert main(["search", "--budget", "2"]) == 2
    assert "--budget: must be a fraction of full computation in (0, 1], got 2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--trials", "many"])
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_lists_plugins(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "constrained_sampling" in out and "evolutionary" in out
    assert main(["objectives"]) == 0
    assert "feature_error" in capsys.readouterr().out


def test_multi_objective_search_returns_a_pareto_front():
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.6, strategy="evolutionary", n_trials=8,
                                 multi_objective=True, monotone=None, population_size=4, **FAST)
    front = result.pareto
    assert front and all(t.flops_ratio <= 0.6 for t in front)
    ratios = [t.flops_ratio for t in front]
    assert ratios == sorted(ratios) and [t.value for t in front] == sorted((t.value for t in front), reverse=True)
    with pytest.raises(ValueError, match="multi_objective needs a strategy with an `objectives` argument"):
        procache_opt.search(tiny_dit_pipeline(seed=0), strategy="random", multi_objective=True, monotone=None,
                            **FAST)


def test_per_depth_search_proposes_deep_refreshes_within_budget():
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.6, strategy="random", n_trials=4,
                                 monotone=None, forecast=0, per_depth=True, depth_split=0.5, **FAST)
    assert result.config["space"]["refresh"] == "deep"
    assert all(set(t.schedule.pattern) <= {0, 1, 3} for t in result.trials)
    assert any(3 in t.schedule.pattern for t in result.trials)
    assert result.best_trial.flops_ratio <= 0.6 and "per-depth" in result.summary()
    with pytest.raises(ValueError, match="per_depth: .* needs selective computation on"):
        procache_opt.search(tiny_dit_pipeline(seed=0), per_depth=True, selective=False, **FAST)


def test_searched_schedules_carry_the_model_and_warn_on_another(tmp_path):
    from procache_opt.fingerprint import model_signature

    pipe = tiny_dit_pipeline(seed=0)
    result = procache_opt.search(pipe, budget_flops=0.5, strategy="random", n_trials=2, monotone=None, forecast=0,
                                 **FAST)
    best = result.best
    assert (best.model_class, best.model_fingerprint) == model_signature(pipe.transformer)
    saved = procache_opt.Schedule.load(best.save(tmp_path / "schedule.json"))
    assert saved.model_fingerprint == best.model_fingerprint
    with pytest.warns(UserWarning, match="searched for another model"), procache_opt.apply(
            tiny_dit_pipeline(seed=0, num_layers=2), saved):
        pass


def test_the_phases_run_alone():
    from procache_opt.models import IN_PROCESS
    from procache_opt.search_config import SearchConfig
    from procache_opt.search_phases import Setup, build_space, build_strategy, measure, prepare

    pipe = tiny_dit_pipeline(seed=0)
    prepared = prepare(SearchConfig(num_inference_steps=10, calibration=2, monotone=None, forecast=1), pipe,
                       IN_PROCESS)
    assert prepared.config.guidance_scale == 4.0 and len(prepared.config.calibration) == 2  # defaults filled in
    assert set(prepared.identity()["model"]) == {"class", "fingerprint", "weights", "dtype", "device"}
    assert measure(prepared) == Setup(None, 1)  # nothing to measure: nothing is run
    space = build_space(prepared, Setup(None, 1))
    assert (space.v_min, build_space(prepared, Setup("increasing", 1)).v_min) == (1, 0)  # default_v_min
    first = build_strategy(prepared, space, Setup(None, 1)).ask(1)[0]
    assert first == procache_opt.Schedule.from_dict({**prepared.fora_start().to_dict(), "forecast_order": 1})


def test_the_objective_set_is_built_once_per_search(monkeypatch):
    from procache_opt.objective import OBJECTIVES

    created = []
    original = OBJECTIVES.create
    monkeypatch.setattr(OBJECTIVES, "create", lambda name, **kw: created.append(name) or original(name, **kw))
    procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=3, monotone=None,
                        forecast="auto", **{**FAST, "heldout": 2})
    # one feature_error for the forecast choice, the trials and the held-out check; psnr and latency for the latter
    assert sorted(created) == ["feature_error", "latency", "psnr"]


def test_a_budget_in_measured_time_is_kept_and_stored_for_resume(tmp_path, monkeypatch):
    """cost="measured": the space counts seconds timed on this device; the costs are measured once and stored
    with the search, so a resumed search keeps its budget without timing again."""
    from procache_opt import measured_costs

    monkeypatch.setenv("PROCACHE_OPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(measured_costs, "_MEMORY", {})
    measured = []
    original = measured_costs.measure_step_costs
    monkeypatch.setattr(measured_costs, "measure_step_costs",
                        lambda *args, **kw: measured.append(1) or original(*args, **kw))
    options = {**FAST, "monotone": None, "forecast": 0, "seed": 0}
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.7, cost="measured", strategy="random",
                                 n_trials=3, storage=tmp_path / "run", **options)
    time_line = next(line for line in result.summary_lines if line.startswith("best: time ratio"))
    assert float(time_line.split()[3]) <= 0.7
    assert any(line.startswith("cost: the budget counts time") for line in result.summary_lines)
    assert measured == [1]
    resumed = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.7, cost="measured", strategy="random",
                                  n_trials=4, storage=tmp_path / "run", **options)
    assert measured == [1]  # the stored costs, not a new measurement
    assert [t.schedule for t in resumed.trials[:3]] == [t.schedule for t in result.trials]
    with pytest.raises(Exception, match="cost"):
        procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.7, strategy="random", n_trials=4,
                            storage=tmp_path / "run", **options)


@pytest.mark.parametrize("searched_wins", [False, True])
def test_the_fora_start_point_is_returned_when_the_searched_best_loses_on_heldout(tmp_path, monkeypatch,
                                                                                  searched_wins):
    """The held-out check scores the searched best at half or twice the start point's error: at twice, the
    result returns the start point (saved, so a loaded result does too) and says so; the trials are unchanged."""
    from procache_opt import _search

    real = _search.heldout_check

    def check(prepared, best, forecast):
        scores, images = real(prepared, best, forecast)
        start = scores.get("uniform_baseline", scores["fora_baseline"])["scores"]["feature_error"]["mean"]
        scores["best"]["scores"]["feature_error"]["mean"] = start * (0.5 if searched_wins else 2.0)
        return scores, images

    monkeypatch.setattr(_search, "heldout_check", check)
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=6,
                                 monotone=None, forecast=0, seed=0, **{**FAST, "heldout": 2})
    start, lowest = result.trials[0], min(result.completed, key=lambda t: (t.value, t.trial_id))
    assert lowest.schedule != start.schedule  # the search found something other than the start point
    loaded = procache_opt.SearchResult.load(result.save(tmp_path / "result.json"))
    for r in (result, loaded):
        assert [t.to_dict() for t in r.trials] == [t.to_dict() for t in result.trials]
        expected = lowest if searched_wins else start
        assert r.best_trial.trial_id == expected.trial_id
        assert r.best == expected.schedule.with_model(r.best.model_class, r.best.model_fingerprint)
        assert ("returning the start point" in r.summary()) is not searched_wins
        assert "the FORA start point itself" not in r.summary()  # the calibration best was another schedule


def test_a_search_that_found_nothing_better_than_its_start_point_says_so():
    result = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=1,
                                 monotone=None, forecast=0, seed=0, **FAST)
    assert result.best_trial.trial_id == 0
    assert "best: the FORA start point itself; none of the 0 other schedules tried beat it" in result.summary()
    plain = procache_opt.search(tiny_dit_pipeline(seed=0), budget_flops=0.5, strategy="random", n_trials=1,
                                monotone=None, forecast=0, seed=0, include_baseline=False, **FAST)
    assert "start point itself" not in plain.summary()  # no start point was proposed, so none was found

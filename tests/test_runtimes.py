"""The runtime plugin interface and the cache-dit runtime: search for it, export to it, compare with it.

Tests that run cache-dit itself are skipped when it is not installed (it is the ``cache-dit`` extra, in ``dev``).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import yaml

import procache_opt
from procache_opt import Schedule, SearchConfig
from procache_opt.calibration import Calibration
from procache_opt.cli import main
from procache_opt.compare.cache_dit_rows import SCM, dbcache_families, scm_methods
from procache_opt.compare.measure import Bench, Method, call_kwargs
from procache_opt.evaluate import Evaluator
from procache_opt.flops import residual_cache_costs, step_costs
from procache_opt.identity import resume_conflicts
from procache_opt.runtimes import RUNTIMES, UnsupportedScheduleError, create_runtime
from procache_opt.runtimes.cache_dit import CacheDitRuntime, export_config, scm_schedule
from procache_opt.search_config import ConfigError
from procache_opt.testing import tiny_dit_pipeline

needs_cache_dit = pytest.mark.skipif(importlib.util.find_spec("cache_dit") is None,
                                     reason="cache-dit is not installed: pip install 'procache-opt[cache-dit]'")
STEPS = 8
MASK = Schedule.from_pattern([1, 1, 0, 1, 0, 0, 1, 0])


# -- the interface (no cache-dit needed) --------------------------------------------------------------------------
def test_runtimes_are_plugins_found_by_name() -> None:
    assert {"procache", "cache-dit", "diffusers"} <= set(RUNTIMES.available())
    assert create_runtime("cache-dit", Fn_compute_blocks=2, calibrator="taylorseer").label == \
        "F2B0 + TaylorSeer (order 1)"
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['Fn'\\]"):
        create_runtime("cache-dit", Fn=2)
    with pytest.raises(ValueError, match="Fn_compute_blocks=0 is out of range"):
        create_runtime("cache-dit", Fn_compute_blocks=0)
    create_runtime("procache").check(Schedule.from_pattern([1, 0, 2, 3, 4], forecast_order=1))  # runs everything


def test_cache_dit_refuses_what_it_cannot_express_and_says_what_is_lost() -> None:
    schedule = Schedule.from_pattern([1, 0, 2, 1, 3, 0, 4, 1], forecast_order=1)
    with pytest.raises(UnsupportedScheduleError) as refused:
        schedule.to_cache_dit()
    message = str(refused.value)
    assert "\n" not in message
    for lost in ("1 SELECTIVE step (2) at step 2 would lose ProCache's token refresh", "1 DEEP step (3) at step 4",
                 "1 SHALLOW step (4) at step 6", "forecast_order=1 would lose", "lossy=True"):
        assert lost in message
    export = export_config(schedule, lossy=True)
    config = export.config["cache_config"]
    # SELECTIVE -> cached, DEEP/SHALLOW -> computed; the forecast becomes cache-dit's TaylorSeer calibrator
    assert config["steps_computation_mask"] == [1, 0, 0, 1, 1, 0, 1, 1]
    assert config["steps_computation_policy"] == "static" and config["enable_taylorseer"] is True
    assert len(export.notes) == 4 and all(note.startswith("lossy: ") for note in export.notes)
    assert MASK.to_cache_dit(Fn_compute_blocks=2)["cache_config"]["steps_computation_mask"] == list(MASK.pattern)


def test_export_keeps_the_searched_settings_and_notes_another_runtime() -> None:
    searched = Schedule.from_pattern(MASK.pattern, metadata={"runtime": {"name": "cache-dit", "options": {
        "Fn_compute_blocks": 2, "calibrator": "taylorseer"}}})
    export = export_config(searched, Bn_compute_blocks=1)
    assert export.runtime == CacheDitRuntime(Fn_compute_blocks=2, Bn_compute_blocks=1, calibrator="taylorseer")
    assert export.notes == ()
    other = Schedule.from_pattern(MASK.pattern, metadata={"runtime": {"name": "procache", "options": {}}})
    assert "quality in cache-dit differs" in export_config(other).notes[0]


def test_search_config_checks_the_runtime_before_any_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "runtime: unknown runtime 'nope'": {"runtime": "nope"},
        "runtime: 'diffusers' decides at run time": {"runtime": "diffusers", "runtime_options": {"method": "pab",
                                                                                                  "knob": 2}},
        "per_depth: the cache-dit runtime cannot run per-depth": {"runtime": "cache-dit", "per_depth": True},
        "calibrator='taylorseer'": {"runtime": "cache-dit", "forecast": 1},
        "cost: measured step costs are timed through the procache runtime": {"runtime": "cache-dit",
                                                                             "cost": "measured"},
        "runtime_options: runtime 'cache-dit' got unexpected": {"runtime": "cache-dit", "runtime_options": {"F": 1}},
        "runtime_options: cache-dit runtime option calibrator='dmd'": {"runtime": "cache-dit",
                                                                       "runtime_options": {"calibrator": "dmd"}},
    }
    for message, settings in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
            SearchConfig(**settings).check_plugins()
    monkeypatch.setattr(CacheDitRuntime, "installed", classmethod(lambda cls: False))
    with pytest.raises(ConfigError, match="pip install 'procache-opt\\[cache-dit\\]'"):
        SearchConfig(runtime="cache-dit").check_plugins()


def test_runtime_flags_are_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, message in ((["--per-depth"], "--per-depth: the cache-dit runtime cannot run per-depth"),
                           (["--runtime-option", "Fn_compute_blocks=0"],
                            "--runtime-option: cache-dit runtime option Fn_compute_blocks=0 is out of range"),
                           (["--forecast", "1"], "--forecast: the cache-dit runtime runs forecast orders (0,)")):
        assert main(["search", "--runtime", "cache-dit", *flags, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_the_runtime_is_part_of_the_search_identity() -> None:
    default, cache_dit = SearchConfig(), SearchConfig(runtime="cache-dit", runtime_options={"calibrator": "taylorseer"})
    assert "runtime" not in default.identity()  # searches stored before runtimes existed still resume
    assert resume_conflicts(default.identity(), cache_dit.identity()) == ["runtime", "runtime_options.calibrator"]
    assert SearchConfig.from_dict(cache_dit.to_dict()) == cache_dit


def test_cache_dit_costs_count_the_blocks_a_cached_step_still_runs() -> None:
    transformer = tiny_dit_pipeline().transformer
    one, two = (residual_cache_costs(transformer, STEPS, blocks) for blocks in (1, 2))
    ours = step_costs(transformer, STEPS)
    assert one.full == ours.full and one.reuse[0] < two.reuse[0] < one.full[0]
    per_block = two.reuse[0] - one.reuse[0]
    assert one.full[0] == pytest.approx(one.reuse[0] - per_block + 4 * per_block)  # 4 blocks, embed/final kept
    runtime = CacheDitRuntime(Fn_compute_blocks=1, Bn_compute_blocks=1)
    assert runtime.step_costs(transformer, STEPS, guidance=True) == two


def test_cache_dit_runtime_names_its_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install 'procache-opt\\[cache-dit\\]'"):
        CacheDitRuntime().apply(tiny_dit_pipeline(), MASK)


# -- running cache-dit ------------------------------------------------------------------------------------------
def _generate(pipe: object, calibration: Calibration) -> torch.Tensor:
    return pipe(**call_kwargs(pipe, calibration, STEPS, 4.0)).images  # fresh generators: the same noise each time


@needs_cache_dit
def test_cache_dit_follows_the_mask_and_the_pipeline_is_restored_exactly() -> None:
    pipe = tiny_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    calibration = Calibration((0, 1), (3, 5))
    transformer = pipe.transformer
    before = {name: sorted(vars(m)) for name, m in transformer.named_modules()}
    keys, call = sorted(transformer.state_dict()), type(pipe).__call__
    reference = _generate(pipe, calibration)
    with CacheDitRuntime(calibrator="taylorseer").apply(pipe, MASK) as handle:
        first, second = _generate(pipe, calibration), _generate(pipe, calibration)
        summary = handle.summary()
    assert torch.equal(first, second) and not torch.equal(first, reference)
    assert "steps per generation: 4 computed, 4 cached" in summary and "forecast" in summary
    assert {name: sorted(vars(m)) for name, m in transformer.named_modules()} == before
    assert sorted(transformer.state_dict()) == keys and type(pipe).__call__ is call
    assert torch.equal(_generate(pipe, calibration), reference)
    with CacheDitRuntime(residual_diff_threshold=10.0, max_warmup_steps=2).apply(pipe, None) as handle:
        _generate(pipe, calibration)  # dynamic DBCache: after the warm-up every step is similar enough to cache
        assert "steps per generation: 2 computed, 6 cached" in handle.summary()


@needs_cache_dit
def test_a_search_for_cache_dit_exports_a_file_that_reproduces_its_outputs(tmp_path, capsys) -> None:
    import cache_dit

    pipe = tiny_dit_pipeline(seed=2)
    result = procache_opt.search(pipe, budget_flops=0.6, strategy="random", n_trials=4, num_inference_steps=STEPS,
                                 calibration=2, heldout=None, monotone=None, progress=False, runtime="cache-dit",
                                 runtime_options={"calibrator": "taylorseer"})
    best = result.best
    assert result.config["selective"] is None and best.forecast_order == 0  # what cache-dit can run
    assert 0 in best.pattern and best.metadata["runtime"]["name"] == "cache-dit"
    with result.apply(pipe) as handle:  # the searched runtime, not this project's hooks
        assert type(handle).__name__ == "CacheDitHandle"
    path = tmp_path / "schedule.json"
    best.save(path)
    assert main(["export", "--to", "cache-dit", str(path)]) == 0
    exported = tmp_path / "schedule.cache-dit.yaml"
    assert f"wrote {exported}" in capsys.readouterr().out
    config = yaml.safe_load(exported.read_text())["cache_config"]
    assert config["steps_computation_mask"] == list(best.pattern) and config["enable_taylorseer"] is True

    calibration = Calibration((7, 8), (1, 2))
    searched = Evaluator(pipe, calibration, STEPS, objectives=("psnr",),
                         runtime=CacheDitRuntime(calibrator="taylorseer")).run(best)
    fresh = tiny_dit_pipeline(seed=2)  # as a user would: load the model, enable cache-dit from the file
    fresh.set_progress_bar_config(disable=True)
    cache_dit.enable_cache(fresh, **cache_dit.load_configs(str(exported)))
    assert torch.equal(_generate(fresh, calibration), searched.images)
    cache_dit.disable_cache(fresh)
    assert main(["export", "--to", "cache-dit", str(path), "--out", str(path)]) == 2  # never overwrites the schedule
    assert "was not written by procache-opt export" in capsys.readouterr().err


@needs_cache_dit
def test_cache_dit_rows_run_through_the_bench() -> None:
    masks = {policy: scm_schedule(policy, 50) for policy in ("slow", "medium", "fast", "ultra")}
    computed = [mask.num_full for mask in masks.values()]
    assert computed == sorted(computed, reverse=True) and all(m.actions[0] == 1 for m in masks.values())
    assert [m.family for m in scm_methods(STEPS)] == [SCM] * 8
    assert len(dbcache_families(12)["cache-dit DBCache + TaylorSeer"]) == 12
    assert len(dbcache_families(4)["cache-dit DBCache"]) == 4  # only Fn=1 below 4 blocks
    pipe = tiny_dit_pipeline()
    bench = Bench(pipe, Calibration((5, 6), (1, 2)), STEPS, 4.0, ("feature_error",), timing_samples=1,
                  timing_repeats=1)
    method = Method("cache-dit", "mask", schedule=MASK, runtime=CacheDitRuntime())
    measured, _ = bench.measure(method, time_it=False)
    assert measured.flops_ratio == pytest.approx(residual_cache_costs(pipe.transformer, STEPS, 1).ratio(MASK))
    assert measured.compute_share == pytest.approx((4 * 4 + 4 * 1) / (STEPS * 4))  # F1: one block on cached steps
    assert measured.scores["feature_error"] > 0


@needs_cache_dit
def test_the_comparison_measures_cache_dit_rows_once_and_keeps_the_matched_setting() -> None:
    from procache_opt.compare.baselines import OURS, run_rows

    pipe = tiny_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    steps = 6  # cache-dit's masks exist for 4, 6 and >= 8 steps
    bench = Bench(pipe, Calibration((5,), (1,)), steps, 4.0, ("feature_error",), timing_samples=1, timing_repeats=1)
    ours = {"0.5": Method(OURS, "test", schedule=Schedule.from_pattern([1, 0, 1, 0, 1, 0]))}
    done, grid, said = {}, {}, []
    rows = run_rows(bench, ours, pipe.transformer, done, lambda row, images: done.update({row.key: row}), grid,
                    lambda: None, said.append)
    scm = [r for r in rows if r.family == SCM]
    assert len(scm) == 8 and all(r.group == "fixed" and r.measured.flops_ratio < 1 for r in scm)
    target = next(r for r in rows if r.family == OURS).measured.speedup
    for family in ("cache-dit DBCache", "cache-dit DBCache + TaylorSeer"):
        row = next(r for r in rows if r.family == family and r.group == "0.5")
        assert len(grid[family]) == 4 and row.measured is not None  # Fn=1 with four thresholds (4 blocks)
        assert abs(grid[family][row.setting] - target) == min(abs(v - target) for v in grid[family].values())
        assert row.measured.speedup == grid[family][row.setting]
    said.clear()
    again = run_rows(bench, ours, pipe.transformer, done, lambda row, images: None, grid, lambda: None, said.append)
    assert said == [] and [r.key for r in again] == [r.key for r in rows]  # resumed: nothing measured twice

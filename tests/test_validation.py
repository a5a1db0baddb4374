"""A search refuses what it cannot do right, before doing anything: another search's storage, a model that
outputs NaN, a model that is not a supported pipeline, bad names, options, numbers and paths."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

import procache_opt
from procache_opt.evaluate import Evaluator
from procache_opt.identity import SearchConfigMismatchError
from procache_opt.models import UnsupportedModelTypeError
from procache_opt.search_config import ConfigError, SearchConfig
from procache_opt.search_phases import FullComputationError
from procache_opt.testing import tiny_dit_pipeline

FAST = {"num_inference_steps": 10, "calibration": 2, "heldout": None, "progress": False, "monotone": None,
        "forecast": 0, "strategy": "random", "n_trials": 2}


def _count_evaluations(monkeypatch) -> list:
    calls = []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, s: calls.append(s) or original(self, s))
    return calls


@pytest.mark.parametrize(("change", "differs"), [
    ({"pipe_seed": 1}, r"model.weights \("),  # same architecture and config, other weights
    ({"objective_options": {"feature_error": {"norm": "l1"}}},
     r'objective_options.feature_error.norm \(unset -> "l1"\)\)'),
    ({"dtype": torch.bfloat16}, r'model.dtype \("float32" -> "bfloat16"\)'),
    ({"guidance_scale": 2.0}, r"guidance_scale \(4.0 -> 2.0\)"),
])
def test_resuming_another_search_is_refused_naming_what_differs(tmp_path, monkeypatch, change, differs):
    procache_opt.search(tiny_dit_pipeline(seed=0), storage=str(tmp_path), **FAST)
    calls = _count_evaluations(monkeypatch)
    change = dict(change)
    pipe = tiny_dit_pipeline(seed=change.pop("pipe_seed", 0))
    with pytest.raises(SearchConfigMismatchError, match=f"differs in: .*{differs}") as info:
        procache_opt.search(pipe, storage=str(tmp_path), **{**FAST, **change})
    assert not calls, "a trial was evaluated before the mismatch was found"
    assert str(tmp_path) in str(info.value)
    resumed = procache_opt.search(tiny_dit_pipeline(seed=0), storage=str(tmp_path), **{**FAST, "n_trials": 3})
    assert len(resumed.trials) == 3 and len(calls) == 1  # the same search still resumes


def test_a_store_from_before_the_v_min_default_is_another_search():
    """Until 2026-12-06 ``v_min`` defaulted to 0 and the identity recorded 0; the default is now a rule that
    follows the probe's interval order, recorded unset: such a store is refused, naming the field."""
    from procache_opt.identity import resume_conflicts

    old_default = SearchConfig(budget_flops=0.5, v_min=0).identity()
    assert resume_conflicts(old_default, SearchConfig(budget_flops=0.5).identity()) == ["v_min"]
    assert resume_conflicts(old_default, SearchConfig(budget_flops=0.5, v_min=0).identity()) == []


def test_a_changed_strategy_default_is_another_search():
    from procache_opt.identity import resume_conflicts
    from procache_opt.strategy import STRATEGIES

    implicit = SearchConfig(budget_flops=0.5, strategy="constrained_sampling")
    explicit = SearchConfig(budget_flops=0.5, strategy="constrained_sampling", strategy_options={"num_full": "budget"})
    other = SearchConfig(budget_flops=0.5, strategy="constrained_sampling", strategy_options={"num_full": "any"})
    assert resume_conflicts(implicit.identity(), explicit.identity()) == []
    assert resume_conflicts(implicit.identity(), other.identity()) == ["strategy_options.num_full"]
    stored = implicit.identity()

    base = STRATEGIES.get("constrained_sampling")

    class NextVersion(base):  # the same strategy after a release that changed a default
        def __init__(self, space, seed=0, num_candidates=7, mode="stick_breaking", max_attempts=10_000,
                     num_full="budget"):
            super().__init__(space, seed, num_candidates, mode, max_attempts, num_full)

    STRATEGIES.register("constrained_sampling", NextVersion)
    try:
        assert resume_conflicts(stored, implicit.identity()) == ["strategy_options.num_candidates"]
    finally:
        STRATEGIES.unregister("constrained_sampling")


def test_a_model_that_outputs_nan_is_refused_before_any_trial(monkeypatch):
    pipe = tiny_dit_pipeline(seed=0)
    with torch.no_grad():
        pipe.transformer.proj_out_2.weight.fill_(float("nan"))
    calls = _count_evaluations(monkeypatch)
    with pytest.raises(FullComputationError, match=r"the full computation \(no caching\) already produces NaN"):
        procache_opt.search(pipe, **FAST)
    assert not calls


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="guidance_scale: must be a finite number"):
        procache_opt.search(tiny_dit_pipeline(seed=0), guidance_scale=value, **FAST)


def test_models_are_type_checked_before_being_called():
    called = []

    class Module(torch.nn.Linear):
        def forward(self, *args):  # a module is callable: it must not be taken for a factory
            called.append(args)
            return super().forward(*args)

    with pytest.raises(UnsupportedModelTypeError, match="got a Module; model must be a DiTPipeline"):
        procache_opt.search(Module(2, 2), **FAST)
    with pytest.raises(UnsupportedModelTypeError, match="returned int, not a DiTPipeline"):
        procache_opt.search(lambda: 3, **FAST)
    with pytest.raises(UnsupportedModelTypeError, match="got a bare DiTTransformer2DModel; wrap it"):
        procache_opt.search(tiny_dit_pipeline(seed=0).transformer, **FAST)
    assert not called


def test_the_ray_backend_needs_a_model_it_can_ship():
    with pytest.raises(ConfigError, match="backend: 'ray' ships the model to workers by name"):
        procache_opt.search(tiny_dit_pipeline(seed=0), backend="ray", **FAST)


def test_unsupported_pipelines_are_named_and_never_run():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(4, 4), norm_num_groups=2, layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    runs = []
    unet.register_forward_hook(lambda *a: runs.append(1))
    with pytest.raises(TypeError, match="no pipeline adapter for DDPMPipeline; supported: DiTPipeline"):
        procache_opt.search(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()), **FAST)
    assert not runs


@pytest.mark.parametrize(("settings", "message"), [
    ({"strategy": "bogus"}, "strategy: unknown strategy 'bogus'; available: constrained_sampling"),
    ({"strategy_options": {"num_candidatez": 3}}, r"strategy_options: .*\['num_candidatez'\]; it accepts .*"
                                                   r"'num_candidates'"),
    ({"heldout": -1}, "heldout: must be a number of samples >= 1"),
    ({"num_inference_steps": 1}, "num_inference_steps: must be an integer >= 2"),
    ({"selective": "abc"}, "selective: must be true, false, a SelectiveConfig"),
    ({"forecast": 1.5}, "forecast: must be 'auto' or a forecast order"),
    ({"objectives": {"feature_error": float("nan")}}, "objective: 'feature_error' needs a finite weight"),
    ({"objective_options": {"feature_error": {"nrm": "l1"}}}, r"objective_options: .*\['nrm'\]"),
    ({"model": "no/such/folder"}, "model: 'no/such/folder' is neither a bundled model"),
    ({"dtype": "float8"}, "dtype: must be one of float32"),
])
def test_bad_settings_are_refused_without_loading_anything(settings, message):
    code = (f"import sys; from procache_opt.search_config import SearchConfig\n"
            f"try:\n    SearchConfig(**{settings!r}).validate()\nexcept ValueError as e:\n    print(e)\n"
            f"print(sorted({{'torch', 'diffusers'}} & set(sys.modules)))")
    code = code.replace("nan", "float('nan')")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    seconds = time.perf_counter() - start
    lines = out.stdout.strip().splitlines()
    # Neither torch nor a model was loaded, except that an objective's options are checked against its class,
    # whose module imports torch (the API caller is about to load a model anyway; the CLI sets no such options).
    loaded = "['diffusers', 'torch']" if "objective_options" in settings else "[]"
    assert len(lines) == 2 and lines[1] == loaded, out.stdout + out.stderr
    assert message in lines[0] or __import__("re").search(message, lines[0]), lines[0]
    # Without torch a refusal is a fraction of a second; importing torch alone takes 6-15 s on a loaded machine.
    assert loaded != "[]" or seconds < 10, f"{seconds:.1f} s to refuse a bad setting"


def test_the_config_round_trips_and_is_frozen():
    config = SearchConfig(budget_flops=0.35, strategy="tpe", strategy_options={"n_startup_trials": 8},
                          selective=False, forecast=1, dtype=torch.float16)
    assert SearchConfig.from_dict(config.to_dict()) == config and config.dtype == "float16"
    with pytest.raises(AttributeError):
        config.budget_flops = 0.5  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['budget'\]"):
        SearchConfig.from_dict({"budget": 0.5})

"""Built-in objectives: conformance, behaviour on tiny pipelines, and LPIPS's offline failure."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import procache_opt.objectives as objectives
import pytest
import torch
from procache_opt.objectives.feature_error import FeatureError
from procache_opt.objectives.flops_ratio import FlopsRatio
from procache_opt.objectives.image_metrics import PSNR, SSIM
from procache_opt.objectives.latency import Latency
from procache_opt.objectives.lpips_objective import LPIPSObjective, LPIPSWeightsUnavailableError

from procache_opt import Calibration, Schedule
from procache_opt.conformance.objectives import ObjectiveConformance
from procache_opt.evaluate import Evaluator
from procache_opt.objective import RunOutputs

RANDOM_LPIPS = {"backbone_weights": "random_NOT_LPIPS"}


# -- conformance ---------------------------------------------------------------------------------------------
class TestFeatureErrorConformance(ObjectiveConformance):
    registered_name = "feature_error"

    def create_objective(self) -> FeatureError:
        return FeatureError()


class TestFeatureErrorL1BlocksConformance(ObjectiveConformance):
    registered_name = "feature_error"

    def create_objective(self) -> FeatureError:
        return FeatureError(norm="l1", compare=("latents", "block_1", "model_output"))


class TestRandomLPIPSConformance(ObjectiveConformance):
    registered_name = "lpips"

    def create_objective(self) -> LPIPSObjective:
        return LPIPSObjective(**RANDOM_LPIPS)


class TestPSNRConformance(ObjectiveConformance):
    registered_name = "psnr"

    def create_objective(self) -> PSNR:
        return PSNR()


class TestSSIMConformance(ObjectiveConformance):
    registered_name = "ssim"

    def create_objective(self) -> SSIM:
        return SSIM()


class TestLatencyConformance(ObjectiveConformance):
    registered_name = "latency"
    measures_cost = True
    per_run = True

    def create_objective(self) -> Latency:
        return Latency()


class TestFlopsRatioConformance(ObjectiveConformance):
    registered_name = "flops_ratio"
    measures_cost = True
    per_run = True

    def create_objective(self) -> FlopsRatio:
        return FlopsRatio()


# -- registry ------------------------------------------------------------------------------------------------
def test_available_lists_every_builtin() -> None:
    assert {"feature_error", "lpips", "psnr", "ssim", "latency", "flops_ratio"} <= set(objectives.available())


def test_create_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        objectives.create("feature_error", normm="l1")


# -- on tiny pipelines ---------------------------------------------------------------------------------------
QUALITY = ("feature_error", "psnr", "ssim")


@pytest.mark.parametrize("make", ["tiny_dit_pipeline", "tiny_pixart_pipeline"])
def test_full_scores_best_and_more_reuse_scores_worse(make: str, request: pytest.FixtureRequest) -> None:
    pipe = request.getfixturevalue(make)
    evaluator = Evaluator(pipe, Calibration.default(pipe, num_samples=2), num_inference_steps=6,
                          objectives=[*QUALITY, LPIPSObjective(**RANDOM_LPIPS)])
    full = evaluator.evaluate(Schedule.full(6))
    assert full["feature_error"].mean == pytest.approx(0.0, abs=1e-5)
    assert full["psnr"].mean > 80
    assert full["ssim"].mean == pytest.approx(1.0, abs=1e-4)
    assert full["lpips_random_backbone_NOT_LPIPS"].mean == pytest.approx(0.0, abs=1e-5)
    less = evaluator.evaluate(Schedule.from_pattern([1, 0, 1, 1, 1, 1]))
    more = evaluator.evaluate(Schedule.from_intervals([3, 3]))
    assert 0 < less["feature_error"].mean < more["feature_error"].mean
    assert full["psnr"].mean > less["psnr"].mean > more["psnr"].mean
    assert full["ssim"].mean > more["ssim"].mean
    assert less["lpips_random_backbone_NOT_LPIPS"].mean < more["lpips_random_backbone_NOT_LPIPS"].mean


def test_block_feature_error_compares_the_last_step(tiny_dit_pipeline) -> None:
    # Reusing only at the last step leaves the latents' input to that step exact, but not its block outputs.
    objective = FeatureError(compare=("block_3",))
    evaluator = Evaluator(tiny_dit_pipeline, Calibration.default(tiny_dit_pipeline, num_samples=2),
                          num_inference_steps=4, objectives=[objective])
    assert evaluator.reference().features["block_3"].shape[:2] == (2, 2)  # samples, guidance halves
    assert evaluator.evaluate(Schedule.full(4))["feature_error"].mean == pytest.approx(0.0, abs=1e-6)
    assert evaluator.evaluate(Schedule.from_pattern([1, 1, 1, 0]))["feature_error"].mean > 1e-3


def test_latency_and_flops_ratio_on_a_pipeline(tiny_dit_pipeline) -> None:
    evaluator = Evaluator(tiny_dit_pipeline, Calibration.default(tiny_dit_pipeline, num_samples=1),
                          num_inference_steps=4, objectives=["latency", "flops_ratio"], timing_repeats=2)
    scores = evaluator.evaluate(Schedule.from_intervals([4]))
    assert len(evaluator.reference().seconds) == 2
    assert scores["latency"].per_sample[0] > 0
    assert scores["flops_ratio"].mean == pytest.approx(evaluator.costs.ratio(Schedule.from_intervals([4])))
    assert scores["flops_ratio"].mean < 0.5


# -- objective details ---------------------------------------------------------------------------------------
def _outputs(latents: torch.Tensor | None = None, images: torch.Tensor | None = None) -> RunOutputs:
    return RunOutputs(latents=latents if latents is not None else torch.zeros(1), images=images)


def test_feature_error_is_relative_l2_or_l1() -> None:
    reference = _outputs(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    run = _outputs(torch.tensor([[3.0, 5.0], [1.0, 1.0]]))
    assert FeatureError().score(run, reference).per_sample == pytest.approx((1 / 5, 1.0))
    assert FeatureError(norm="l1").score(run, reference).per_sample == pytest.approx((1 / 7, 1.0))


def test_feature_error_rejects_unknown_targets() -> None:
    with pytest.raises(ValueError, match="block_<index>"):
        FeatureError(compare=("attn_3",))


def test_image_objective_without_images_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="needs 'images'"):
        PSNR().score(_outputs(), _outputs())


def test_psnr_is_capped_for_identical_images() -> None:
    images = torch.rand(2, 3, 8, 8)
    assert PSNR(max_db=60.0).score(_outputs(images=images), _outputs(images=images)).per_sample == (60.0, 60.0)


def test_ssim_window_shrinks_to_small_images() -> None:
    images = torch.rand(2, 3, 7, 7)
    assert SSIM().score(_outputs(images=images), _outputs(images=images)).mean == pytest.approx(1.0, abs=1e-5)


def test_lpips_scales_grayscale_and_small_images() -> None:
    objective = LPIPSObjective(**RANDOM_LPIPS)
    gray = objective._prepare(torch.full((2, 1, 16, 24), 0.75))
    assert gray.shape == (2, 3, 64, 96)
    assert torch.allclose(gray, torch.full_like(gray, 0.5))  # [0, 1] -> [-1, 1]


def test_random_lpips_is_never_called_lpips() -> None:
    assert LPIPSObjective(**RANDOM_LPIPS).name == "lpips_random_backbone_NOT_LPIPS"
    with pytest.raises(ValueError, match="random_NOT_LPIPS"):
        LPIPSObjective(backbone_weights="random")


def test_lpips_offline_names_the_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(LPIPSWeightsUnavailableError) as info:
        LPIPSObjective()
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message


def test_real_lpips_when_its_weights_are_cached() -> None:
    if not (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").exists():
        pytest.skip("AlexNet ImageNet weights are not in the torch hub cache (offline machine)")
    objective = LPIPSObjective()
    images = torch.rand(2, 3, 32, 32)
    assert objective.name == "lpips"
    assert objective.score(_outputs(images=images), _outputs(images=images)).mean == pytest.approx(0.0, abs=1e-6)
    assert objective.score(_outputs(images=images.flip(-1)), _outputs(images=images)).mean > 0.01

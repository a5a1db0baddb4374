"""procache_opt.flops: analytic MAC counts against FlopCounterMode, the DiT paper, StepCosts and the schedule."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.utils.flop_counter import FlopCounterMode

from procache_opt import Action, Schedule, ScheduleMismatchError, SelectiveConfig
from procache_opt.flops import MODULE_KINDS, PRESETS, ModelSpec, count_flops, step_costs
from procache_opt.runtime import apply
from procache_opt.testing import tiny_dit_transformer

TEXT_LENGTH = 5
# A small spec for action-level checks: 8 blocks of width 16 over 64 tokens.
SMALL = ModelSpec(family="dit", num_layers=8, num_heads=2, head_dim=8, in_channels=4, out_channels=8,
                  patch_size=2, sample_size=16)


@pytest.fixture(scope="module")
def tiny_dit() -> DiTTransformer2DModel:
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                 num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()


@pytest.fixture(scope="module")
def tiny_pixart() -> PixArtTransformer2DModel:
    # Width 24 (divisible by 3) so the resolution / aspect-ratio embeddings are on, as in PixArt-α 1024.
    torch.manual_seed(0)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
                                    num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=24,
                                    caption_channels=20, use_additional_conditions=True).eval()


def _use_countable_attention(model: torch.nn.Module) -> None:
    # FlopCounterMode has no formula for the CPU SDPA kernel; the classic processor runs baddbmm/bmm instead.
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())


def _measure(model: torch.nn.Module, **inputs: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, int]:
    """MACs of one forward as FlopCounterMode counts them, in total and per module path."""
    _use_countable_attention(model)
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(**inputs)
    return {path: sum(ops.values()) // 2 for path, ops in counter.get_flop_counts().items()}


def _sum_modules(measured: dict[str, int], pattern: str) -> int:
    return sum(macs for path, macs in measured.items() if re.fullmatch(rf"\w+\.{pattern}", path))


def _check_against_flop_counter(report, measured: dict[str, int], kinds: dict[str, str]) -> None:
    assert report.forward_matmul_macs == pytest.approx(measured["Global"], rel=0.02)
    for kind, pattern in kinds.items():
        assert report.forward_macs[kind] == pytest.approx(_sum_modules(measured, pattern), rel=0.02), kind


def test_dit_forward_matches_flop_counter_mode(tiny_dit):
    measured = _measure(tiny_dit, hidden_states=torch.randn(1, 4, 8, 8), timestep=torch.tensor([7]),
                        class_labels=torch.tensor([3]))
    report = count_flops(tiny_dit, num_inference_steps=1, guidance=False)
    _check_against_flop_counter(report, measured, {"attn": r"transformer_blocks\.\d+\.attn1",
                                                    "ff": r"transformer_blocks\.\d+\.ff", "embed": "pos_embed"})


def test_pixart_forward_matches_flop_counter_mode(tiny_pixart):
    measured = _measure(
        tiny_pixart, hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, TEXT_LENGTH, 20),
        encoder_attention_mask=torch.ones(1, TEXT_LENGTH), timestep=torch.tensor([7]),
        added_cond_kwargs={"resolution": torch.tensor([[64.0, 64.0]]), "aspect_ratio": torch.tensor([[1.0]])},
    )
    spec = ModelSpec.from_config(tiny_pixart.config, text_length=TEXT_LENGTH)
    report = count_flops(spec, num_inference_steps=1, guidance=False)
    _check_against_flop_counter(report, measured, {
        "attn": r"transformer_blocks\.\d+\.attn1", "cross_attn": r"transformer_blocks\.\d+\.attn2",
        "ff": r"transformer_blocks\.\d+\.ff", "adaln": "adaln_single", "final": "proj_out",
        "embed": "(pos_embed|caption_projection)",
    })


@pytest.mark.parametrize(("preset", "paper_gmacs"), [
    ("dit-s-2-256", 6.06), ("dit-b-2-256", 23.01), ("dit-l-2-256", 80.71), ("dit-xl-2-256", 118.64),
])
def test_dit_presets_match_paper_table4(preset, paper_gmacs):
    # Peebles & Xie 2023, Table 4 ("Gflops" there are fvcore MACs); docs/flops.md explains the 0.05% gap.
    report = count_flops(preset, num_inference_steps=1, guidance=False)
    assert report.forward_matmul_macs / 1e9 == pytest.approx(paper_gmacs, rel=1e-3)


def test_pixart_presets():
    high, low = (ModelSpec.from_config(PRESETS[name]) for name in ("pixart-alpha-1024", "pixart-alpha-512"))
    assert (high.num_tokens, high.use_additional_conditions) == (4096, True)
    assert (low.num_tokens, low.use_additional_conditions) == (1024, False)
    assert high.width == 1152 and high.caption_channels == 4096 and high.text_length == 120


def test_accepts_model_config_dict_pipeline_and_legacy_class_name(tiny_dit):
    expected = count_flops(tiny_dit, num_inference_steps=3)
    assert count_flops(tiny_dit.config, num_inference_steps=3) == expected
    assert count_flops(dict(tiny_dit.config), num_inference_steps=3) == expected
    assert count_flops(SimpleNamespace(transformer=tiny_dit), num_inference_steps=3) == expected
    legacy = {**PRESETS["dit-xl-2-256"], "_class_name": "Transformer2DModel"}  # as in the published config.json
    assert count_flops(legacy, num_inference_steps=2) == count_flops("dit-xl-2-256", num_inference_steps=2)


def test_rejects_unknown_inputs():
    with pytest.raises(ValueError, match="known: .*dit-xl-2-256"):
        count_flops("dit-xxl", num_inference_steps=1)
    with pytest.raises(ValueError, match="supported: norm_type"):
        count_flops({"norm_type": "layer_norm"}, num_inference_steps=1)
    with pytest.raises(TypeError, match="diffusers transformer"):
        count_flops(object(), num_inference_steps=1)
    with pytest.raises(ValueError, match="num_inference_steps or a schedule"):
        count_flops(SMALL)
    with pytest.raises(ScheduleMismatchError):
        count_flops(SMALL, Schedule.full(4), num_inference_steps=5)


def test_importing_flops_does_not_import_torch():
    code = "import sys, procache_opt.flops as f; f.count_flops('pixart-alpha-1024', num_inference_steps=2); " \
           "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_report_totals_come_from_step_costs():
    schedule = Schedule.from_intervals([5, 4, 3, 2, 1], selective=SelectiveConfig(score_max_queries=32))
    schedule = schedule.inject_selective()
    report = count_flops(SMALL, schedule)
    costs = step_costs(SMALL, schedule.num_steps, schedule.selective)
    assert report.costs == costs
    assert report.macs_total == costs.total(schedule) == sum(report.per_module.values())
    assert report.macs_total == sum(report.per_action.values())
    assert report.macs_full_total == costs.full_total
    assert report.ratio == pytest.approx(costs.ratio(schedule)) and report.flops_total == 2 * report.macs_total
    assert dict(report.steps_per_action) == {"FULL": 5, "REUSE": 6, "SELECTIVE": 4, "DEEP": 0, "SHALLOW": 0}
    assert set(report.per_module) == set(MODULE_KINDS)


@pytest.mark.parametrize(("max_queries", "queries"), [(32, 32), (24, 22), (1000, 64)])
def test_action_costs(max_queries, queries):
    # The runtime scores every ceil(N / max_queries)-th query: 64 tokens, at most 24 -> stride 3 -> 22 queries.
    selective = SelectiveConfig(score_max_queries=max_queries)
    costs = step_costs(SMALL, 10, selective, guidance=True, batch_size=1)
    full, reuse = count_flops(SMALL, num_inference_steps=1), count_flops(SMALL, [1, 0])
    dropped = ("attn", "cross_attn", "ff")
    # REUSE keeps embeddings, modulation, norms and the output layer and drops every attention and ff matmul.
    assert costs.reuse[0] == sum(v for k, v in full.per_module.items() if k not in dropped)
    assert all(reuse.per_module[k] == full.per_module[k] for k in dropped)
    d, n, deep = SMALL.width, SMALL.num_tokens, range(6, 8)  # deep_start(8) == 6 with deep_fraction 0.25
    received = queries * n * d + SMALL.num_heads * queries * n  # q.k of the strided queries, column sums
    for t in range(10):
        fresh = [selective.num_fresh_tokens(n, t, 10, layer, 8) for layer in deep]
        scoring = len(deep) * received + 4 * n * sum(k > 0 for k in fresh)  # O(N) only where tokens refresh
        assert costs.selective[t] - costs.reuse[t] == 2 * (sum(fresh) * 2 * d * 4 * d + scoring)
    assert costs.selective[0] < costs.selective[-1] < costs.full[0]  # ToCa's schedule: more fresh tokens late


@pytest.mark.parametrize("action", [Action.DEEP, Action.SHALLOW])
def test_per_depth_steps_cost_their_block_group_as_measured(tiny_dit, action):
    """The counted cost of a DEEP / SHALLOW step over REUSE equals what FlopCounterMode measures through the
    runtime, and the two groups partition the blocks."""
    _use_countable_attention(tiny_dit)
    inputs = {"hidden_states": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([7]),
              "class_labels": torch.tensor([3])}

    def second_step_macs(pattern):
        with torch.no_grad(), apply(tiny_dit, Schedule.from_pattern(pattern, depth_split=0.5)) as handle:
            with handle.at_step(0):
                tiny_dit(**inputs)
            with handle.at_step(1), FlopCounterMode(display=False) as counter:
                tiny_dit(**inputs)
        return counter.get_total_flops() // 2

    costs = step_costs(tiny_dit, 2, guidance=False, depth_split=0.5)
    measured = second_step_macs([1, int(action)]) - second_step_macs([1, 0])
    assert measured > 0 and costs.of(action, 1) - costs.reuse[1] == pytest.approx(measured, rel=0.02)
    assert costs.deep[1] + costs.shallow[1] - costs.reuse[1] == costs.full[1]
    with pytest.raises(ValueError, match="counted for 0.5"):
        costs.ratio(Schedule.from_pattern([1, int(action)], depth_split=0.25))


def test_a_one_block_model_is_counted_without_depth_groups():
    costs = step_costs(tiny_dit_transformer(num_layers=1), 4)
    assert costs.deep is None and costs.shallow is None and costs.ratio(Schedule.from_intervals([2, 2])) < 1
    with pytest.raises(ValueError, match="no DEEP entries"):
        costs.of(Action.DEEP, 1)


def test_guidance_and_batch_scale_every_step():
    single = count_flops(SMALL, [1, 0, 2], guidance=False)
    batched = count_flops(SMALL, [1, 0, 2], guidance=True, batch_size=3)
    assert batched.forward_batch == 6 and batched.macs_total == 6 * single.macs_total
    assert batched.forward_macs == single.forward_macs  # per forward of one sample, whatever the batch


def test_rendering():
    report = count_flops("dit-xl-2-256", [1, 0, 2, 1])
    text, markdown = str(report), report.to_markdown()
    for rendered in (text, markdown):
        assert "MACs (FLOPs = 2 × MACs)" in rendered and "1021" in rendered and "selective_ff" in rendered
    assert re.search(r"^FULL +2 +475\.07 G", text, re.MULTILINE)  # 2 steps x 2 samples x 118.77 G
    assert "| REUSE | 1 |" in markdown and "cross_attn" not in markdown  # kinds the model lacks are left out


def test_spec_validation():
    with pytest.raises(ValueError, match="num_layers=0"):
        dataclasses.replace(SMALL, num_layers=0)
    with pytest.raises(ValueError, match="activation_fn"):
        dataclasses.replace(SMALL, activation_fn="relu")
    with pytest.raises(ValueError, match="cross_attention_dim"):
        dataclasses.replace(SMALL, family="pixart")

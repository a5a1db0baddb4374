"""Calibration sets: defaults per pipeline, disjoint splits, validation, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import DDIMScheduler, DiTPipeline

from procache_opt import testing
from procache_opt.calibration import SPLIT_SEED_OFFSET, Calibration, RandomPromptEmbedding
from procache_opt.pipelines import DiTAdapter, adapter_for


def test_dit_default_spreads_valid_labels(tiny_dit_pipeline: DiTPipeline) -> None:
    cal = Calibration.default(tiny_dit_pipeline, num_samples=8)
    assert cal.seeds == tuple(range(8))
    assert cal.conditions == (0, 125, 250, 375, 500, 625, 750, 875)  # 1000 labels, evenly spread
    assert cal.name == "search"


def test_heldout_split_has_other_seeds_and_labels(tiny_dit_pipeline: DiTPipeline) -> None:
    search = Calibration.default(tiny_dit_pipeline, num_samples=8)
    heldout = Calibration.default(tiny_dit_pipeline, num_samples=8, split="heldout")
    assert not set(search.seeds) & set(heldout.seeds)
    assert min(heldout.seeds) == SPLIT_SEED_OFFSET
    assert not set(search.conditions) & set(heldout.conditions)


def test_dit_labels_come_from_id2label() -> None:
    pipe = testing.tiny_dit_pipeline()
    digits = DiTPipeline(pipe.transformer, pipe.vae, DDIMScheduler(), id2label={i: f"digit {i}" for i in range(10)})
    assert DiTAdapter.valid_labels(digits) == list(range(10))
    search = Calibration.default(digits, num_samples=20)
    heldout = Calibration.default(digits, num_samples=20, split="heldout")
    assert sorted(search.conditions) == sorted(heldout.conditions) == sorted(list(range(10)) * 2)
    assert search.conditions != heldout.conditions  # same labels, paired with other seeds in another order


def test_dit_rejects_labels_the_model_does_not_have(tiny_dit_pipeline: DiTPipeline) -> None:
    with pytest.raises(ValueError, match=r"class labels in 0\.\.999"):
        adapter_for(tiny_dit_pipeline).validate(tiny_dit_pipeline, [3, 1000])


def test_pixart_without_text_encoder_defaults_to_random_embeddings(tiny_pixart_pipeline) -> None:
    search = Calibration.default(tiny_pixart_pipeline, num_samples=3)
    heldout = Calibration.default(tiny_pixart_pipeline, num_samples=3, split="heldout")
    assert search.conditions == tuple(RandomPromptEmbedding(seed=i) for i in range(3))
    assert not {c.seed for c in search.conditions} & {c.seed for c in heldout.conditions}
    with pytest.raises(ValueError, match="no text encoder"):
        adapter_for(tiny_pixart_pipeline).validate(tiny_pixart_pipeline, ["a red fox"])


def test_pixart_embeddings_depend_only_on_their_seed(tiny_pixart_pipeline) -> None:
    adapter = adapter_for(tiny_pixart_pipeline)
    pair = adapter.call_kwargs(tiny_pixart_pipeline, [RandomPromptEmbedding(5), RandomPromptEmbedding(6)])
    alone = adapter.call_kwargs(tiny_pixart_pipeline, [RandomPromptEmbedding(6)])
    assert pair["prompt_embeds"].shape == (2, 8, testing.TINY_CAPTION_CHANNELS)
    assert pair["prompt_embeds"][1].equal(alone["prompt_embeds"][0])
    assert not pair["prompt_embeds"][1].equal(pair["negative_prompt_embeds"][1])


def test_unsupported_pipeline_lists_the_supported_ones() -> None:
    with pytest.raises(TypeError, match="DiTPipeline, PixArtAlphaPipeline"):
        Calibration.default(object())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": (), "conditions": ()}, "at least one"),
        ({"seeds": (0, 1), "conditions": (3,)}, "2 seeds but 1 conditions"),
        ({"seeds": (-1,), "conditions": (3,)}, ">= 0"),
        ({"seeds": (0, 1), "conditions": (3, "a cat")}, "mix kinds"),
    ],
)
def test_invalid_sets_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calibration(**kwargs)


def test_conditions_of_unknown_types_are_rejected() -> None:
    with pytest.raises(TypeError, match="RandomPromptEmbedding"):
        Calibration((0,), (True,))


@pytest.mark.parametrize(
    "conditions", [(1, 7), ("a red fox", "a lighthouse"), (RandomPromptEmbedding(3), RandomPromptEmbedding(4, 16))]
)
def test_json_round_trip(conditions: tuple, tmp_path: Path) -> None:
    cal = Calibration((10, 11), conditions, name="mine")
    assert Calibration.from_json(cal.to_json()) == cal
    assert Calibration.load(cal.save(tmp_path / "cal.json")) == cal


def test_unknown_format_version_is_rejected() -> None:
    data = Calibration((0,), (1,)).to_dict() | {"format_version": 99}
    with pytest.raises(ValueError, match="format_version 99"):
        Calibration.from_json(json.dumps(data))


def test_batches_cover_the_set_in_order() -> None:
    cal = Calibration(tuple(range(5)), tuple(range(5)))
    assert [b.seeds for b in cal.batches(2)] == [(0, 1), (2, 3), (4,)]
    assert [b.seeds for b in cal.batches(None)] == [tuple(range(5))]

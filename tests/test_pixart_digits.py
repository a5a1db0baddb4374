"""`pixart-digits`: the bundled text-conditioned model in PixArt-α's form, its tokenizer, training and use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)
from safetensors.torch import load_file
from transformers import T5EncoderModel

from procache_opt import zoo
from procache_opt.pipelines import adapter_for
from procache_opt.zoo.captions import (
    SLOTS_PER_DIGIT,
    TRAIN_TOKENS,
    VOCABULARY,
    caption_batch,
    digit_prompt,
    make_tokenizer,
)
from procache_opt.zoo.quality import class_accuracy, generate, sampling_defaults


@pytest.fixture(scope="module")
def pipe() -> PixArtAlphaPipeline:
    torch.set_num_threads(2)
    pipe = zoo.load("pixart-digits")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_zoo_lists_both_models_and_bundles_pixart_small_in_fp16() -> None:
    assert zoo.list() == ["dit-digits", "pixart-digits"]
    folder = zoo.path("pixart-digits")
    weights = sorted(folder.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"transformer", "vae", "text_encoder"}
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20 * 2**20
    for w in weights:
        assert {t.dtype for t in load_file(w).values()} == {torch.float16}
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "PixArtAlphaPipeline"


def test_loads_offline_in_the_form_of_pixart_alpha(pipe: PixArtAlphaPipeline) -> None:
    t = pipe.transformer
    assert isinstance(pipe, PixArtAlphaPipeline) and isinstance(t, PixArtTransformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.text_encoder, T5EncoderModel)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.solver_order == 2
    assert t.config.norm_type == "ada_norm_single" and t.config.num_layers >= 12
    assert t.config.caption_channels == pipe.text_encoder.config.d_model
    assert t.transformer_blocks[0].attn2 is not None  # cross-attention to the caption tokens
    # float32 everywhere by default: transformers >= 5 would otherwise keep the text encoder in its stored fp16
    assert {m.dtype for m in (t, pipe.vae, pipe.text_encoder)} == {torch.float32}


def test_plain_prompt_call_works_and_is_deterministic(pipe: PixArtAlphaPipeline) -> None:
    """A bare `pipe(prompt)` runs although diffusers has no resolution bin for 32 pixels (the subclass's default)."""
    kwargs = {"num_inference_steps": 6, "output_type": "np"}
    a = pipe(["a handwritten 3"], generator=torch.Generator().manual_seed(1), **kwargs).images
    b = pipe(["a handwritten 3"], generator=torch.Generator().manual_seed(1), **kwargs).images
    assert a.shape == (1, 32, 32, 3) and (a == b).all()


def test_samples_show_the_prompted_digit(pipe: PixArtAlphaPipeline) -> None:
    steps, guidance = sampling_defaults(pipe)
    assert (steps, guidance) == (20, 4.5)
    report = class_accuracy(pipe, per_class=2, num_inference_steps=10, guidance_scale=guidance, batch_size=20)
    assert report.samples == 20
    assert report.accuracy >= 0.7  # chance is 0.1; the full gate (500 samples, 20 steps) is in docs/zoo.md


def test_the_prompt_decides_the_digit_not_its_phrasing(pipe: PixArtAlphaPipeline) -> None:
    from procache_opt.zoo.digits_data import to_digit_features
    from procache_opt.zoo.quality import reference_classifier

    clf = reference_classifier().svc
    kwargs = {"num_inference_steps": 10, "output_type": "np", "guidance_scale": 4.5}
    prompts = ["a handwritten 4", "the digit four", "4", "a handwritten 0", "the digit zero", "0"]
    images = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in range(6)], **kwargs).images
    predicted = clf.predict(to_digit_features(images)).tolist()
    assert sum(p == 4 for p in predicted[:3]) >= 2 and sum(p == 0 for p in predicted[3:]) >= 2


def test_tokenizer_knows_the_digit_vocabulary_and_marks_the_rest_unknown() -> None:
    tok = make_tokenizer()
    ids = tok(["A handwritten 7.", "the digit seven", "", "a cat", "17"]).input_ids
    unk, eos = VOCABULARY.index("<unk>"), VOCABULARY.index("</s>")
    slots = [f"seven_{s}" for s in range(SLOTS_PER_DIGIT)]
    assert [VOCABULARY[i] for i in ids[0]] == ["a", "handwritten", *slots, "<unk>", "</s>"]  # "." is not a word
    assert ids[1][2:] == ids[0][2:-2] + [eos]  # a figure and its word give the same tokens
    assert unk not in ids[1] and ids[2] == [eos] and ids[3][1] == unk and ids[4] == [unk, eos]
    assert digit_prompt(7) == "a handwritten 7"


def test_caption_batch_drops_to_the_empty_caption() -> None:
    ids, mask = caption_batch(torch.tensor([3, 1000]), 1000, make_tokenizer(), torch.Generator().manual_seed(0))
    assert ids.shape == mask.shape == (2, TRAIN_TOKENS)
    assert ids[1].tolist()[0] == VOCABULARY.index("</s>") and mask[1].sum() == 1  # null caption: `</s>` alone
    words = [VOCABULARY[i] for i in ids[0][mask[0].bool()].tolist()]
    assert words[-1] == "</s>" and [f"three_{s}" for s in range(SLOTS_PER_DIGIT)] == words[-1 - SLOTS_PER_DIGIT:-1]


def test_search_calibrates_with_digit_prompts_and_holds_out_other_phrasings(pipe: PixArtAlphaPipeline) -> None:
    adapter = adapter_for(pipe)
    search, heldout = (adapter.default_conditions(pipe, 10, s) for s in ("search", "heldout"))
    assert sorted(search) == [digit_prompt(d) for d in range(10)]
    assert not set(search) & set(heldout) and all(p.startswith("the digit ") for p in heldout)


def test_apply_cli_draws_prompts_and_refuses_labels(tmp_path: Path, capsys) -> None:
    from procache_opt.cli import main
    from procache_opt.schedule import Schedule

    schedule = Schedule.from_pattern([1, 0] * 3).save(tmp_path / "s.json")
    out = tmp_path / "grid.png"
    assert main(["apply", "--model", "pixart-digits", "--schedule", str(schedule), "--prompt", "a handwritten 2",
                 "--prompt", "the digit five", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert main(["apply", "--model", "pixart-digits", "--schedule", str(schedule), "--labels", "3",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # one line, no loading bars: refused from model_index.json before the pipeline loads
    assert len(err) == 1 and err[0].startswith("procache-opt apply: error: --labels:") and "prompts" in err[0]


def test_search_runs_on_pixart_digits() -> None:
    import procache_opt

    result = procache_opt.search("pixart-digits", budget_flops=0.5, strategy="random", n_trials=3, heldout=None,
                                 num_inference_steps=10, calibration=2, progress=False, seed=0)
    assert result.best.num_steps == 10 and 0 < result.best_trial.flops_ratio <= 0.5 + 1e-9


def test_training_writes_a_loadable_pixart_pipeline(tmp_path: Path) -> None:
    """Three steps of the real training code: the folder loads as diffusers' PixArtAlphaPipeline and generates."""
    from procache_opt.zoo.train_pixart_digits import main

    torch.set_num_threads(2)
    main(["--out", str(tmp_path / "px"), "--steps", "3", "--threads", "1"])
    # process-wide settings put back: 2 threads, and subnormal floats not flushed to zero (hypothesis needs them)
    assert torch.get_num_threads() == 2 and (torch.tensor([1e-38]) * 0.01).item() != 0.0
    record = json.loads((tmp_path / "px" / "training.json").read_text())
    assert record["command"].startswith("python -m procache_opt.zoo.train_pixart_digits")
    assert record["config"]["dit"]["steps"] == 3
    loaded = PixArtAlphaPipeline.from_pretrained(tmp_path / "px", local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    images = generate(loaded.to(dtype=torch.float32), [1, 2], num_inference_steps=2)
    assert images.shape == (2, 32, 32, 3)

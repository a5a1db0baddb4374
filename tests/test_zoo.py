"""The bundled `dit-digits` model: loads offline in DiT-XL/2's form, generates, draws the digits asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from safetensors.torch import load_file

from procache_opt import zoo
from procache_opt.zoo.digits_data import digits_dataset, shift, to_digit_features
from procache_opt.zoo.quality import class_accuracy, generate, reference_classifier
from procache_opt.zoo.train_digits import NULL_CLASS, DiTConfig, make_scheduler, make_transformer


@pytest.fixture(scope="module")
def pipe() -> DiTPipeline:
    torch.set_num_threads(2)
    pipe = zoo.load("dit-digits")  # a folder inside the package, read with local_files_only=True
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_list_names_the_bundled_model() -> None:
    assert zoo.list() == ["dit-digits", "pixart-digits"]


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known models: dit-digits"):
        zoo.load("dit-xl")
    with pytest.raises(KeyError) as info:
        zoo.path("dit-xl")
    assert str(info.value).startswith("unknown zoo model 'dit-xl'")


def test_bundle_is_small_safetensors_in_fp16() -> None:
    folder = zoo.path("dit-digits")
    weights = sorted(folder.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"transformer", "vae"}
    assert not list(folder.glob("*/*.bin"))
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20 * 2**20
    for w in weights:
        assert {t.dtype for t in load_file(w).values()} == {torch.float16}


def test_loads_in_the_form_of_dit_xl_2(pipe: DiTPipeline) -> None:
    t = pipe.transformer
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(t, DiTTransformer2DModel)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert t.config.norm_type == "ada_norm_zero" and t.config.num_layers >= 12
    tokens = (t.config.sample_size // t.config.patch_size) ** 2
    assert tokens >= 64
    # room for DiTPipeline's null class 1000 in every block's label table
    table = t.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    assert table.num_embeddings == NULL_CLASS + 1
    sched = pipe.scheduler.config
    assert (sched.beta_start, sched.beta_end, sched.beta_schedule) == (1e-4, 0.02, "linear")
    assert sched.num_train_timesteps == 1000 and not sched.clip_sample
    assert pipe.get_label_ids(["3", "7"]) == [3, 7]
    assert pipe.transformer.dtype == torch.float32


def test_from_pretrained_on_the_folder_works_too() -> None:
    direct = DiTPipeline.from_pretrained(zoo.path("dit-digits"), local_files_only=True)
    assert direct.transformer.config.num_layers == 12


def test_short_generation_is_deterministic_images(pipe: DiTPipeline) -> None:
    a = generate(pipe, [0, 1, 2, 3], num_inference_steps=8, seed=3)
    b = generate(pipe, [0, 1, 2, 3], num_inference_steps=8, seed=3)
    assert a.shape == (4, 32, 32, 3)
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    # a digit is bright strokes on a dark background, not noise or a flat image
    assert 0.05 < a.mean() < 0.6 and a.std() > 0.2


def test_samples_show_the_requested_digit(pipe: DiTPipeline) -> None:
    report = class_accuracy(pipe, per_class=3, num_inference_steps=10, batch_size=30)
    assert report.samples == 30
    assert report.accuracy >= 0.7  # chance is 0.1; the full gate (500 samples, 50 steps) is in docs/zoo.md


def test_reference_classifier_judges_round_tripped_real_digits() -> None:
    ref = reference_classifier()
    assert ref.heldout_accuracy > 0.97
    images, labels = digits_dataset()
    features = to_digit_features((images[:300] / 2 + 0.5).numpy())
    assert (ref.svc.predict(features) == labels[:300].numpy()).mean() > 0.95


def test_shift_fills_with_background() -> None:
    x = torch.zeros(1, 1, 4, 4)
    moved = shift(x, 1, -2)
    assert (moved[0, 0, 0] == -1).all() and (moved[0, 0, :, 2:] == -1).all()
    assert (moved[0, 0, 1:, :2] == 0).all()


def test_fresh_transformer_starts_as_adaln_zero() -> None:
    """DiT's initialisation: every block is the identity and the output is zero before training."""
    model = make_transformer(DiTConfig(num_layers=2), latent_channels=4, latent_size=16).eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        out = model(x, timestep=torch.tensor([10, 900]), class_labels=torch.tensor([1, NULL_CLASS])).sample
    assert out.shape == x.shape and out.abs().max() == 0
    assert make_scheduler().config.beta_schedule == "linear"


def test_training_variants_write_their_noise_schedule_and_depth() -> None:
    """`--beta-schedule cosine` is diffusers' squaredcos_cap_v2 (other betas than linear); `--layers` the depth."""
    from procache_opt.zoo.train_digits import main

    cosine, linear = make_scheduler("cosine"), make_scheduler()
    assert cosine.config.beta_schedule == "squaredcos_cap_v2"
    assert not torch.allclose(cosine.betas, linear.betas)
    with pytest.raises(SystemExit):
        main(["--out", "x", "--beta-schedule", "quadratic"])
    assert make_transformer(DiTConfig(num_layers=3), latent_channels=4, latent_size=16).config.num_layers == 3

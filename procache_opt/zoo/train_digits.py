"""Train `dit-digits`: a small class-conditional latent DiT in the exact form of `facebook/DiT-XL-2-256`.

Reproduce the bundled weights (2 CPU threads; about 15 minutes on an idle 2-core machine)::

    python -m procache_opt.zoo.train_digits --out procache_opt/zoo/dit-digits

Variants for the generality benchmark (another noise schedule, depth or seed; kept out of the package)::

    python -m procache_opt.zoo.train_digits --out .cache/variants/dit-digits-cosine --beta-schedule cosine

Two stages, both seeded:

1. A small `AutoencoderKL` (32x32x3 -> 16x16x4) learns to reconstruct the upscaled scikit-learn digits
   (MSE + a tiny KL term); `scaling_factor` is then set to 1 / std of the latents, as Stable Diffusion's
   0.18215 was chosen for its VAE.
2. A `DiTTransformer2DModel` (ada_norm_zero, patch 2 -> 64 tokens) learns epsilon prediction in that
   latent space with DiT-XL/2's recipe scaled down: linear betas 1e-4..0.02 over 1,000 steps, uniform
   timesteps, MSE on the noise, label dropout 0.1 (null class 1000), AdamW without weight decay, constant
   learning rate, DiT's initialisation (adaLN-Zero), an EMA of the weights used for sampling (bias-
   corrected, see `debiased_ema`, because the run is short).

Deliberate differences from DiT-XL/2, each because the model is tiny or the data are digits:

- epsilon only (`out_channels == in_channels`): DiT-XL/2 also learns the variance for its 250-step DDPM
  sampler; with 50-step DDIM (what ProCache and this project use) the learned variance is never read.
- learning rate 4e-4 instead of 1e-4 and EMA decay 0.999 instead of 0.9999: thousands of steps, not
  hundreds of thousands. Gradient-norm clipping at 1.0 guards the one unattended run.
- random shifts of -2, 0 or 2 px in x and y instead of horizontal flips (a flipped digit is another
  symbol); the VAE sees every shift up to 2 px.
- the DiT learns the VAE's posterior means rather than samples from it (see `encode_shifted`).
- label tables initialised with std 1 instead of 0.02 (see `LABEL_INIT_STD`).
- label dropout is applied once per sample, here, and the per-block dropout of diffusers'
  `LabelEmbedding` is switched off: diffusers gives every block its own label table with its own random
  drop, so in train mode a sample would almost never be unconditional in all 12 blocks at once and the
  null class that guidance needs would never be learned. The original DiT has one shared label embedder.

The run writes the pipeline (fp16 safetensors, EMA weights) and `training.json` (config, losses, times).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

from procache_opt.zoo.digits_data import IMAGE_SIZE, digits_dataset, random_shift, shift

ModelT = TypeVar("ModelT", bound=torch.nn.Module)
#: `DiTPipeline` feeds this class id for the unconditional half of classifier-free guidance.
NULL_CLASS = 1000
NUM_DIGITS = 10
#: DiT initialises its label table with std 0.02. Over a run this short the labels then stay a ~1%
#: perturbation of the timestep embedding and the model ignores them (measured: no difference between
#: true, wrong and null labels after 1,000 steps), so the tables start at PyTorch's default scale instead.
LABEL_INIT_STD = 1.0


@dataclass(frozen=True)
class VAEConfig:
    """Stage 1: the autoencoder. Two resolution levels give DiT-XL's 4-channel latents at half the side."""

    block_out_channels: tuple[int, ...] = (16, 32)
    layers_per_block: int = 1
    latent_channels: int = 4
    steps: int = 250
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6


@dataclass(frozen=True)
class DiTConfig:
    """Stage 2: the transformer and its training recipe.

    Width 64 with 2 heads is the widest that keeps 16 guided images x 50 steps under 2 s on 2 CPU threads
    (measured: width 96 takes about 4 s, 128 about 8 s); 12 blocks and 64 tokens are the issue's minimum.
    """

    num_layers: int = 12
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    patch_size: int = 2
    steps: int = 2500
    batch_size: int = 64
    lr: float = 4e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    shifts: tuple[int, ...] = (-2, 0, 2)
    #: ``"linear"`` (DiT-XL/2's betas 1e-4..0.02) or ``"cosine"`` (diffusers' ``squaredcos_cap_v2``, Nichol &
    #: Dhariwal's schedule), written into the saved scheduler config so sampling uses what training did.
    beta_schedule: str = "linear"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the weights (with the torch version and thread count)."""

    seed: int = 0
    threads: int = 2
    log_every: int = 100
    checkpoint_every: int = 250
    vae: VAEConfig = VAEConfig()
    dit: DiTConfig = DiTConfig()


#: ``DiTConfig.beta_schedule`` -> diffusers' name (the cosine schedule ignores ``beta_start``/``beta_end``).
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def make_scheduler(beta_schedule: str = "linear") -> DDIMScheduler:
    """DiT-XL/2's noise schedule (or the cosine one) and the DDIM sampler the ProCache paper uses."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        clip_sample=False,
        set_alpha_to_one=True,
    )


def make_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A two-level `AutoencoderKL`: 32x32x3 images <-> 16x16x4 latents."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, cfg.block_out_channels[0]),
        sample_size=IMAGE_SIZE,
    )


def make_transformer(cfg: DiTConfig, latent_channels: int, latent_size: int) -> DiTTransformer2DModel:
    """The DiT, initialised as DiT's `initialize_weights` does it (adaLN-Zero: every block starts as the
    identity, the output layer at zero), which diffusers' constructor does not do."""
    model = DiTTransformer2DModel(
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=cfg.num_layers,
        sample_size=latent_size,
        patch_size=cfg.patch_size,
        num_embeds_ada_norm=NULL_CLASS,
        norm_type="ada_norm_zero",
    )
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    proj = model.pos_embed.proj
    torch.nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    torch.nn.init.zeros_(proj.bias)
    for block in model.transformer_blocks:
        emb = block.norm1.emb
        torch.nn.init.normal_(emb.class_embedder.embedding_table.weight, std=LABEL_INIT_STD)
        torch.nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
        torch.nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
        torch.nn.init.zeros_(block.norm1.linear.weight)
        torch.nn.init.zeros_(block.norm1.linear.bias)
    for layer in (model.proj_out_1, model.proj_out_2):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return model


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches (epochs without replacement)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _log(step: int, total: int, losses: list[float], started: float, stage: str, every: int) -> None:
    recent = losses[-every:]
    elapsed = time.perf_counter() - started
    print(
        f"[{stage}] step {step}/{total} loss {sum(recent) / len(recent):.5f} "
        f"{elapsed / step:.3f} s/step elapsed {elapsed / 60:.1f} min",
        flush=True,
    )


def train_vae(
    cfg: VAEConfig, images: torch.Tensor, generator: torch.Generator, log_every: int
) -> tuple[AutoencoderKL, list[float]]:
    """Stage 1: reconstruction (MSE on [-1, 1] pixels) plus `kl_weight` times the KL to N(0, I)."""
    vae = make_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses: list[float] = []
    started = time.perf_counter()
    batches = _batches(len(images), cfg.batch_size, generator)
    for step in range(1, cfg.steps + 1):
        x = random_shift(images[next(batches)], 2, generator)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % log_every == 0:
            _log(step, cfg.steps, losses, started, "vae", log_every)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, losses


def encode_shifted(vae: AutoencoderKL, images: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """Posterior means (S, N, C, h, w) of every image under each of the S = len(shifts)^2 shifts.

    Encoding once up front, instead of every step as DiT's train.py does, makes stage 2 about twice as
    fast on CPU. The DiT learns the posterior means, not samples: after its short training this VAE's
    posterior std is still about half the latents' spread (SD's VAE, trained far longer, is nearly
    deterministic), and sampled latents would bury the digits in noise the DiT cannot tell apart from
    diffusion noise (measured: conditioning stayed unused after 1,250 steps on samples).
    """
    means = []
    with torch.no_grad():
        for dy in shifts:
            for dx in shifts:
                moved = shift(images, dy, dx)
                means.append(torch.cat([vae.encode(chunk).latent_dist.mean for chunk in moved.split(512)]))
    return torch.stack(means)


def debiased_ema(ema: ModelT, init: ModelT, decay: float, step: int) -> ModelT:
    """The EMA without the share `decay**step` that it still gives the random initial weights.

    Started from the initial weights w0, the EMA after k steps is d^k w0 + (1 - d) sum_j d^(k-j) w_j.
    Over DiT-XL/2's 400k steps d^k vanishes; over a few thousand it does not (0.999^1500 = 0.22), and
    the initial share shrinks every prediction towards zero (the adaLN-Zero layers start at zero). So the
    saved weights are (ema - d^k w0) / (1 - d^k): a weighted average of trained weights only, the bias
    correction Adam applies to its moment estimates.
    """
    share = decay**step
    out = copy.deepcopy(ema)
    with torch.no_grad():
        for o, e, w0 in zip(out.parameters(), ema.parameters(), init.parameters(), strict=True):
            o.copy_((e - share * w0) / (1.0 - share))
    return out


def train_denoiser(
    cfg: DiTConfig,
    make_model: Callable[[], torch.nn.Module],
    condition: Callable[[torch.Tensor, torch.Generator], dict],
    vae: AutoencoderKL,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    log_every: int,
    on_checkpoint: Callable[[int, torch.nn.Module, list[float]], None],
    checkpoint_every: int,
) -> tuple[torch.nn.Module, list[float]]:
    """Epsilon prediction on VAE latents; returns the (debiased) EMA model and per-step losses.

    `make_model()` builds a fresh denoiser (called twice: the trained model and its EMA), and
    `condition(labels, generator)` turns a batch of labels, `NULL_CLASS` where the label was dropped, into
    the keyword arguments of its forward: class labels for DiT, caption tokens for PixArt.
    `on_checkpoint(step, ema, losses)` is called every `checkpoint_every` steps. The learning rate is
    constant and the random stream does not depend on the total, so the checkpoint at step k is exactly
    what a run with `--dit-steps k` would produce.
    """
    scale = vae.config.scaling_factor
    model = make_model().train()
    ema = make_model().eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    init = copy.deepcopy(ema)
    means = encode_shifted(vae, images, cfg.shifts)
    scheduler = make_scheduler(cfg.beta_schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses: list[float] = []
    started = time.perf_counter()
    batches = _batches(len(images), cfg.batch_size, generator)
    for step in range(1, cfg.steps + 1):
        idx = next(batches)
        shifts = torch.randint(0, len(means), (len(idx),), generator=generator)
        latents = means[shifts, idx] * scale
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=generator) < cfg.label_dropout] = NULL_CLASS
        kwargs = condition(y, generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(y),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = scheduler.add_noise(latents, noise, t)
        loss = F.mse_loss(model(noisy, timestep=t, **kwargs).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1.0 - cfg.ema_decay)
        losses.append(loss.item())
        if step % log_every == 0:
            _log(step, cfg.steps, losses, started, "dit", log_every)
        if step % checkpoint_every == 0 and step < cfg.steps:
            on_checkpoint(step, debiased_ema(ema, init, cfg.ema_decay, step), losses)
    return debiased_ema(ema, init, cfg.ema_decay, cfg.steps), losses


def latent_size(vae: AutoencoderKL) -> int:
    """Side of the VAE's latents: the image side halved once per resolution level below the first."""
    return IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)


def train_dit(
    cfg: DiTConfig,
    vae: AutoencoderKL,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    log_every: int,
    on_checkpoint: Callable[[int, torch.nn.Module, list[float]], None],
    checkpoint_every: int,
) -> tuple[DiTTransformer2DModel, list[float]]:
    """Stage 2 for `dit-digits`: `train_denoiser` with class labels as the condition."""
    def make_model() -> DiTTransformer2DModel:
        model = make_transformer(cfg, vae.config.latent_channels, latent_size(vae))
        for module in model.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0  # dropped once per sample instead (see the module docstring)
        return model

    return train_denoiser(cfg, make_model, lambda y, _: {"class_labels": y}, vae, images, labels, generator,
                          log_every, on_checkpoint, checkpoint_every)


def build_pipeline(
    transformer: DiTTransformer2DModel, vae: AutoencoderKL, beta_schedule: str = "linear"
) -> DiTPipeline:
    """Assemble the `DiTPipeline`; `id2label` maps the digit names "0".."9" so `get_label_ids` works."""
    id2label = {str(i): str(i) for i in range(NUM_DIGITS)}
    scheduler = make_scheduler(beta_schedule)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label)
    pipe.register_to_config(id2label=id2label)  # DiTPipeline does not record it, so save_pretrained would not
    return pipe


def save(
    out: Path, cfg: TrainConfig, vae: AutoencoderKL, ema: DiTTransformer2DModel, losses: dict, minutes: dict
) -> dict:
    """Write the fp16 pipeline and `training.json` (config, times, final losses) to `out`."""
    pipe = build_pipeline(copy.deepcopy(ema), copy.deepcopy(vae), cfg.dit.beta_schedule).to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    command = (
        f"python -m procache_opt.zoo.train_digits --out {out} "
        f"--seed {cfg.seed} --vae-steps {cfg.vae.steps} --dit-steps {cfg.dit.steps} "
        f"--layers {cfg.dit.num_layers} --beta-schedule {cfg.dit.beta_schedule}"
    )
    return write_record(out, command, cfg, vae, losses, minutes)


def write_record(
    out: Path, command: str, cfg: object, vae: AutoencoderKL, losses: dict[str, list[float]], minutes: dict
) -> dict:
    """Write `training.json` (command, config, times, final losses, the loss curve) next to the weights."""
    tail = 200
    dit_losses = losses["dit"]
    record = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "torch": torch.__version__,
        "minutes": {k: round(v, 2) for k, v in minutes.items()},
        "final_loss": {k: sum(v[-tail:]) / len(v[-tail:]) for k, v in losses.items()},
        "final_loss_note": f"mean over the last {tail} training steps",
        "scaling_factor": vae.config.scaling_factor,
        "dit_loss_every_100": [
            round(sum(dit_losses[i : i + 100]) / 100, 5) for i in range(0, len(dit_losses) - 99, 100)
        ],
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


@contextlib.contextmanager
def training_settings(threads: int) -> Iterator[None]:
    """``threads`` torch threads and denormals flushed to zero (they cost up to 10x in the zero-initialised
    layers on CPU) while training. Both are process-wide, so both are put back after: a notebook or a test
    session that trains a model goes on with its own settings (hypothesis refuses to run with denormals off)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def train(cfg: TrainConfig, out: Path, checkpoint_dir: Path | None = None) -> dict:
    """Run both stages and `save` the result to `out`; intermediate EMA pipelines go to `checkpoint_dir`."""
    with training_settings(cfg.threads):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        images, labels = digits_dataset()

        t0 = time.perf_counter()
        vae, vae_losses = train_vae(cfg.vae, images, generator, cfg.log_every)
        t1 = time.perf_counter()

        def checkpoint(step: int, ema: DiTTransformer2DModel, dit_losses: list[float]) -> None:
            if checkpoint_dir is not None:
                partial = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, steps=step))
                minutes = {"vae": (t1 - t0) / 60, "dit": (time.perf_counter() - t1) / 60}
                save(
                    checkpoint_dir / f"step-{step}",
                    partial,
                    vae,
                    ema,
                    {"vae": vae_losses, "dit": dit_losses},
                    minutes,
                )

        transformer, dit_losses = train_dit(
            cfg.dit, vae, images, labels, generator, cfg.log_every, checkpoint, cfg.checkpoint_every
        )
        minutes = {"vae": (t1 - t0) / 60, "dit": (time.perf_counter() - t1) / 60}
        return save(out, cfg, vae, transformer, {"vae": vae_losses, "dit": dit_losses}, minutes)


def main(argv: list[str] | None = None) -> None:
    """Command line; the defaults are the bundled model's settings, the step flags exist for smoke runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the pipeline")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--vae-steps", type=int, default=VAEConfig.steps)
    parser.add_argument("--dit-steps", type=int, default=DiTConfig.steps)
    parser.add_argument("--layers", type=int, default=DiTConfig.num_layers, help="DiT blocks (num_layers)")
    parser.add_argument("--beta-schedule", choices=sorted(BETA_SCHEDULES), default=DiTConfig.beta_schedule,
                        help="noise schedule: linear betas (DiT-XL/2) or cosine (squaredcos_cap_v2)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="also save every 250 DiT steps here"
    )
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        seed=args.seed,
        vae=dataclasses.replace(VAEConfig(), steps=args.vae_steps),
        dit=dataclasses.replace(DiTConfig(), steps=args.dit_steps, num_layers=args.layers,
                                beta_schedule=args.beta_schedule),
    )
    record = train(cfg, args.out, args.checkpoint_dir)
    print(json.dumps({k: v for k, v in record.items() if k != "dit_loss_every_100"}, indent=2))


if __name__ == "__main__":
    main()

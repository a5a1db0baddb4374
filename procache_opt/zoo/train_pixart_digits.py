"""Train `pixart-digits`: a small text-conditioned latent model in the exact form of PixArt-α (512 px).

Reproduce the bundled weights (10,000 steps on 1 CPU thread, 79 minutes; `training.json` has the record)::

    python -m procache_opt.zoo.train_pixart_digits --out procache_opt/zoo/pixart-digits

The pipeline is a `PixArtAlphaPipeline` of diffusers' own classes: `PixArtTransformer2DModel` (adaLN-single,
cross-attention to the caption tokens, 12 blocks of width 64, patch 2 -> 64 tokens), the `AutoencoderKL` of
`dit-digits` (not retrained: the same 16 x 16 x 4 latents), `DPMSolverMultistepScheduler` (DPM-Solver++,
order 2, PixArt-α's scheduler config, 20 steps when sampling), and the tiny T5 encoder and word-level
tokenizer of `procache_opt.zoo.captions` in place of T5-XXL.

PixArt-α's recipe (Chen et al. 2023, arXiv 2310.00426, section 3 and appendix), scaled down as `dit-digits`
scales down DiT's: linear betas 1e-4..0.02 over 1,000 steps, epsilon prediction, uniform timesteps, caption
dropout 0.1 (the empty caption, which is PixArt's negative prompt), AdamW, an EMA of the weights for sampling,
adaLN-single with a per-block learned `scale_shift_table`, zero-initialised adaLN and output layers. The
loop, the shifts and the EMA bias correction are those of
`train_digits` (`train_denoiser`). Differences from PixArt-α, each for the same reasons as in `train_digits`
(tiny model, short run, digits): no learned variance (DPM-Solver never reads it), learning rate 4e-4 and no
weight decay (PixArt: 2e-5 and 0.03 over 10^5+ steps), the caption projection initialised with Xavier's
scale instead of std 0.02 (see `make_pixart_transformer`), no multi-aspect or resolution conditions (one size),
and the text encoder is trained with the transformer (PixArt freezes T5; a frozen random encoder would have to
be learned around, a trained one is simply the digit table the prompts need).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)
from transformers import T5EncoderModel

from procache_opt.zoo.captions import caption_batch, make_text_encoder, make_tokenizer
from procache_opt.zoo.digits_data import digits_dataset
from procache_opt.zoo.train_digits import (
    NULL_CLASS,
    DiTConfig,
    latent_size,
    train_denoiser,
    training_settings,
    write_record,
)

#: The sampler of PixArt-α's `scheduler/scheduler_config.json` (and of the ProCache paper's PixArt runs).
SCHEDULER_CONFIG = {
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "prediction_type": "epsilon",
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
    "use_karras_sigmas": False,
    "thresholding": False,
    "steps_offset": 0,
}


@dataclass(frozen=True)
class PixArtDigitsConfig:
    """Everything that determines the weights (with the torch version, the thread count and the VAE)."""

    seed: int = 0
    threads: int = 1
    log_every: int = 100
    checkpoint_every: int = 500
    #: The bundled model whose VAE is reused (frozen).
    vae_from: str = "dit-digits"
    #: Channels of the caption tokens (T5-XXL: 4,096).
    caption_channels: int = 32
    dit: DiTConfig = DiTConfig(steps=10000)


class CaptionedDenoiser(torch.nn.Module):
    """The trained pair: caption tokens -> text encoder -> PixArt transformer, as the pipeline calls them."""

    def __init__(self, transformer: PixArtTransformer2DModel, text_encoder: T5EncoderModel) -> None:
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder

    def forward(
        self, noisy: torch.Tensor, timestep: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> object:
        captions = self.text_encoder(input_ids, attention_mask=attention_mask)[0]
        return self.transformer(
            noisy,
            encoder_hidden_states=captions,
            encoder_attention_mask=attention_mask,
            timestep=timestep,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )


def make_pixart_transformer(cfg: DiTConfig, caption_channels: int, latent_channels: int,
                            latent_side: int) -> PixArtTransformer2DModel:
    """The transformer, initialised as PixArt-α's `initialize_weights` does it."""
    width = cfg.num_attention_heads * cfg.attention_head_dim
    model = PixArtTransformer2DModel(
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=cfg.num_layers,
        cross_attention_dim=width,
        sample_size=latent_side,
        patch_size=cfg.patch_size,
        caption_channels=caption_channels,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    proj = model.pos_embed.proj
    torch.nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    torch.nn.init.zeros_(proj.bias)
    emb = model.adaln_single.emb.timestep_embedder
    for layer in (emb.linear_1, emb.linear_2):
        torch.nn.init.normal_(layer.weight, std=0.02)
    # The caption projection keeps the Xavier init above: with PixArt's std 0.02 the caption tokens stayed a ~1%
    # signal and the model ignored the prompt (measured: 10% digit accuracy after 1,000 steps, images for
    # "a handwritten 0" and "... 1" 0.012 apart), as dit-digits' label table did (`train_digits.LABEL_INIT_STD`).
    cross_outputs = [block.attn2.to_out[0] for block in model.transformer_blocks]
    for layer in (model.adaln_single.linear, model.proj_out, *cross_outputs):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return model


def make_scheduler() -> DPMSolverMultistepScheduler:
    """PixArt-α's DPM-Solver++ sampler (the noise schedule is `train_digits`' linear one)."""
    return DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)


def build_pipeline(denoiser: CaptionedDenoiser, vae: AutoencoderKL) -> PixArtAlphaPipeline:
    """Assemble the `PixArtAlphaPipeline` (diffusers' class, so `save_pretrained` records it by name)."""
    return PixArtAlphaPipeline(
        tokenizer=make_tokenizer(),
        text_encoder=denoiser.text_encoder,
        vae=vae,
        transformer=denoiser.transformer,
        scheduler=make_scheduler(),
    )


def load_vae(name: str) -> AutoencoderKL:
    """The frozen VAE of a bundled model, in float32."""
    from procache_opt import zoo

    return zoo.load(name).vae.to(torch.float32).eval().requires_grad_(False)


def save(out: Path, cfg: PixArtDigitsConfig, vae: AutoencoderKL, ema: CaptionedDenoiser, losses: dict,
         minutes: dict) -> dict:
    """Write the fp16 pipeline and `training.json` to `out`."""
    pipe = build_pipeline(copy.deepcopy(ema), copy.deepcopy(vae)).to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    command = (f"python -m procache_opt.zoo.train_pixart_digits --out {out} --seed {cfg.seed} "
               f"--steps {cfg.dit.steps} --threads {cfg.threads}")
    return write_record(out, command, cfg, vae, losses, minutes)


def train(cfg: PixArtDigitsConfig, out: Path, checkpoint_dir: Path | None = None) -> dict:
    """Train the transformer and text encoder on the frozen VAE's latents and `save` to `out`."""
    with training_settings(cfg.threads):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        images, labels = digits_dataset()
        vae = load_vae(cfg.vae_from)
        tokenizer = make_tokenizer()

        def make_model() -> CaptionedDenoiser:
            transformer = make_pixart_transformer(cfg.dit, cfg.caption_channels, vae.config.latent_channels,
                                                   latent_size(vae))
            return CaptionedDenoiser(transformer, make_text_encoder(cfg.caption_channels))

        def condition(y: torch.Tensor, gen: torch.Generator) -> dict:
            input_ids, attention_mask = caption_batch(y, NULL_CLASS, tokenizer, gen)
            return {"input_ids": input_ids, "attention_mask": attention_mask}

        started = time.perf_counter()

        def checkpoint(step: int, ema: CaptionedDenoiser, losses: list[float]) -> None:
            if checkpoint_dir is not None:
                partial = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, steps=step))
                save(checkpoint_dir / f"step-{step}", partial, vae, ema, {"dit": losses},
                     {"dit": (time.perf_counter() - started) / 60})

        ema, losses = train_denoiser(cfg.dit, make_model, condition, vae, images, labels, generator,
                                     cfg.log_every, checkpoint, cfg.checkpoint_every)
        return save(out, cfg, vae, ema, {"dit": losses}, {"dit": (time.perf_counter() - started) / 60})


def main(argv: list[str] | None = None) -> None:
    """Command line; the defaults are the bundled model's settings, `--steps` exists for smoke runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the pipeline")
    parser.add_argument("--seed", type=int, default=PixArtDigitsConfig.seed)
    parser.add_argument("--steps", type=int, default=PixArtDigitsConfig().dit.steps, help="training steps")
    parser.add_argument("--threads", type=int, default=PixArtDigitsConfig.threads,
                        help="torch CPU threads (1 on a machine shared with another job: 2 threads then spin)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="also save every 500 steps here")
    args = parser.parse_args(argv)
    base = PixArtDigitsConfig()
    cfg = dataclasses.replace(base, seed=args.seed, threads=args.threads,
                              dit=dataclasses.replace(base.dit, steps=args.steps))
    record = train(cfg, args.out, args.checkpoint_dir)
    print(json.dumps({k: v for k, v in record.items() if k != "dit_loss_every_100"}, indent=2))


if __name__ == "__main__":
    main()

"""Feature dynamics of `dit-digits` over denoising steps and depth (ProCache, Section 3).

Measures, for one guided 50-step DDIM generation:

1. the relative change of every transformer block's output between consecutive steps,
   ||h_t - h_{t-1}|| / ||h_{t-1}||, as a (step x block) map;
2. the same for the guided noise prediction eps_t = u + g (c - u), the quantity a step-level cache reuses;
3. how an error injected at one step propagates to the final latents: (a) a random perturbation of the
   guided noise prediction with 5% of its norm, (b) reusing the previous step's prediction instead of
   computing it (what a cached step does). Reported as the relative error of the final latents.

Writes docs/figures/feature_dynamics.png and prints the numbers quoted in
benchmarks/results/feature_dynamics.md::

    python benchmarks/feature_dynamics.py [--images 8] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from diffusers import DiTPipeline

from procache_opt import zoo

STEPS = 50
GUIDANCE = 4.0
PERTURBATION = 0.05

#: Edits the transformer's raw output (cond and uncond halves) at the step it is called for.
OutputEdit = Callable[[int, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _relative_change(seq: list[torch.Tensor]) -> np.ndarray:
    """||x_t - x_{t-1}|| / ||x_{t-1}|| per step t >= 2, averaged over the batch."""
    out = []
    for prev, cur in zip(seq[:-1], seq[1:], strict=True):
        diff = (cur - prev).flatten(1).norm(dim=1) / prev.flatten(1).norm(dim=1).clamp_min(1e-12)
        out.append(diff.mean().item())
    return np.asarray(out)


def run(
    pipe: DiTPipeline, labels: list[int], seed: int, edit: OutputEdit | None = None, record: bool = False
) -> tuple[torch.Tensor, list[list[torch.Tensor]], list[torch.Tensor]]:
    """One generation; returns the final latents and (if `record`) block outputs and guided eps per step."""
    transformer = pipe.transformer
    blocks: list[list[torch.Tensor]] = [[] for _ in transformer.transformer_blocks]
    guided: list[torch.Tensor] = []
    state = {"step": 0, "prev": None}
    handles = []
    if record:
        for i, block in enumerate(transformer.transformer_blocks):
            handles.append(
                block.register_forward_hook(lambda _m, _a, out, i=i: blocks[i].append(out.detach()))
            )

    def on_transformer(_module, _args, output):
        sample = output.sample
        if edit is not None:
            sample = edit(state["step"], sample, state["prev"])
            output.sample = sample
        state["prev"] = sample.detach().clone()
        cond, uncond = sample.chunk(2)
        guided.append((uncond + GUIDANCE * (cond - uncond)).detach())
        state["step"] += 1
        return output

    handles.append(transformer.register_forward_hook(on_transformer))
    latents: list[torch.Tensor] = []  # what the VAE decodes (up to its scaling factor): the final latents
    handles.append(
        pipe.vae.post_quant_conv.register_forward_pre_hook(lambda _m, a: latents.append(a[0].detach()))
    )
    try:
        pipe(
            class_labels=labels,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
    finally:
        for h in handles:
            h.remove()
    return latents[0], blocks, guided


def perturb_at(step: int, seed: int) -> OutputEdit:
    """Add noise with PERTURBATION x the output's norm (same on both halves, so guided eps moves by it)."""

    def edit(i: int, sample: torch.Tensor, _prev: torch.Tensor | None) -> torch.Tensor:
        if i != step:
            return sample
        half = sample.chunk(2)[0]
        noise = torch.randn(half.shape, generator=torch.Generator().manual_seed(seed))
        scale = PERTURBATION * half.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
        noise = noise * scale.view(-1, 1, 1, 1)
        return sample + torch.cat([noise, noise])

    return edit


def reuse_at(step: int) -> OutputEdit:
    """Return the previous step's output at `step`: one cached (reused) step, everything else computed."""

    def edit(i: int, sample: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        return prev if i == step and prev is not None else sample

    return edit


def main(argv: list[str] | None = None) -> None:
    """Measure, print and plot; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="dit-digits", help="zoo name or pipeline folder")
    parser.add_argument("--inject-stride", type=int, default=2, help="inject an error at every n-th step")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/feature_dynamics.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pipe = DiTPipeline.from_pretrained(args.model) if Path(args.model).is_dir() else zoo.load(args.model)
    pipe.set_progress_bar_config(disable=True)
    labels = [i % 10 for i in range(args.images)]

    reference, blocks, guided = run(pipe, labels, args.seed, record=True)
    block_change = np.stack([_relative_change(b) for b in blocks], axis=1)  # (STEPS - 1, layers)
    eps_change = _relative_change(guided)

    def final_error(edit: OutputEdit) -> float:
        z = run(pipe, labels, args.seed, edit=edit)[0]
        return ((z - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)).mean().item()

    inject_steps = list(range(1, STEPS, args.inject_stride))
    perturbed = np.asarray([final_error(perturb_at(s, 1000 + s)) for s in inject_steps])
    reused = np.asarray([final_error(reuse_at(s)) for s in inject_steps])

    np.set_printoptions(precision=4, suppress=True, linewidth=140)
    layers = block_change.shape[1]
    thirds = np.array_split(np.arange(STEPS - 1), 3)
    print("block output relative change, mean over blocks, by step (steps 2..50):")
    print(block_change.mean(axis=1))
    for name, idx in zip(("early", "middle", "late"), thirds, strict=True):
        print(f"{name:>6} steps {idx[0] + 2}-{idx[-1] + 2}: per block {block_change[idx].mean(axis=0)}")
    print("per block, all steps:", block_change.mean(axis=0))
    print("guided eps relative change by step (2..50):")
    print(eps_change)
    print("inject steps (0-based):", inject_steps)
    print(f"final-latent rel. error after a {PERTURBATION:.0%} eps perturbation:", perturbed)
    print("final-latent rel. error after reusing eps once:", reused)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    im = axes[0].imshow(
        block_change.T,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        extent=(1.5, STEPS + 0.5, -0.5, layers - 0.5),
    )
    axes[0].set(xlabel="denoising step (1 = noisiest)", ylabel="block", title="block output: relative change")
    fig.colorbar(im, ax=axes[0])
    steps = np.arange(2, STEPS + 1)
    for i in range(0, layers, max(1, layers // 4)):
        axes[1].plot(steps, block_change[:, i], label=f"block {i}")
    axes[1].plot(steps, block_change[:, -1], label=f"block {layers - 1}")
    axes[1].plot(steps, eps_change, "k--", label="guided eps")
    axes[1].set(yscale="log", xlabel="denoising step", ylabel="relative change", title="change per step")
    axes[1].legend(fontsize=8)
    axes[2].plot(inject_steps, perturbed, "o-", label=f"{PERTURBATION:.0%} eps perturbation")
    axes[2].plot(inject_steps, reused, "s-", label="reuse previous eps")
    axes[2].set(
        yscale="log",
        xlabel="step of the injected error (0 = noisiest)",
        ylabel="final latent rel. error",
        title="error propagation",
    )
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

"""Models, schedules and timers shared by the runtime benchmarks (``runtime_speedup.py`` on CPU, ``gpu_suite.py``).

Models have random weights (speed does not depend on weight values) at the sizes of the papers' models:

| size | class | blocks x width | tokens | notes |
| --- | --- | --- | --- | --- |
| ``dit-s2`` | DiT | 12 x 384 | 256 | DiT-S/2, the CPU benchmark's model |
| ``dit-xl2`` | DiT | 28 x 1152 | 256 | DiT-XL/2 at 256 px (``facebook/DiT-XL-2-256``) |
| ``pixart-s`` | PixArt-α | 12 x 384 | 256 | PixArt's block and conditioning at DiT-S/2 width, 120 text tokens |
| ``pixart-alpha-1024`` | PixArt-α | 28 x 1152 | 4096 | PixArt-XL-2-1024-MS, 120 T5 tokens, resolution conditions |
| ``tiny-dit``, ``tiny-pixart`` | | 4 x 32 | 64 | ``--smoke`` runs of the GPU suite on a CPU |

DiT pipelines run 50 DDIM steps, PixArt pipelines 20 DPM-Solver++ steps (the ProCache paper's settings). A
4-channel one-level VAE stands in for the real one: the benchmarks time the denoising loop, and PixArt runs
return latents.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)

from procache_opt import Action, Schedule
from procache_opt.flops import count_flops
from procache_opt.pipelines import resolution_binning_kwargs
from procache_opt.runtime.context import score_steps
from procache_opt.testing import tiny_vae

DIT_STEPS, PIXART_STEPS = 50, 20

AUTHORS_DIT = [1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0,
               2, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
"""``cal_type.py`` in the authors' DiT-ProCache (denoising order): 17 FULL, 10 SELECTIVE, 23 REUSE. It equals
``inject_selective()`` of its FULL/REUSE part, which is what the "+ selective" rows run."""


@dataclass(frozen=True)
class Size:
    family: str  # "dit" or "pixart"
    layers: int
    heads: int
    head_dim: int
    sample: int  # latent side
    patch: int
    caption_tokens: int = 0
    caption_channels: int = 0

    @property
    def tokens(self) -> int:
        return (self.sample // self.patch) ** 2

    @property
    def steps(self) -> int:
        return DIT_STEPS if self.family == "dit" else PIXART_STEPS


SIZES = {
    "dit-s2": Size("dit", 12, 6, 64, 32, 2),
    "dit-xl2": Size("dit", 28, 16, 72, 32, 2),
    "pixart-s": Size("pixart", 12, 6, 64, 32, 2, caption_tokens=120, caption_channels=4096),
    "pixart-alpha-1024": Size("pixart", 28, 16, 72, 128, 2, caption_tokens=120, caption_channels=4096),
    "tiny-dit": Size("dit", 4, 2, 16, 16, 2),
    "tiny-pixart": Size("pixart", 4, 2, 24, 16, 2, caption_tokens=8, caption_channels=32),
}


def pipeline(size: Size, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> Any:
    """A ``DiTPipeline`` or ``PixArtAlphaPipeline`` of ``size`` with random weights, progress bar off."""
    torch.manual_seed(seed)
    common = {"num_attention_heads": size.heads, "attention_head_dim": size.head_dim, "in_channels": 4,
              "out_channels": 8, "num_layers": size.layers, "sample_size": size.sample, "patch_size": size.patch}
    if size.family == "dit":
        transformer = DiTTransformer2DModel(**common)
        pipe = DiTPipeline(transformer=transformer.eval(), vae=tiny_vae(seed=seed), scheduler=DDIMScheduler())
    else:
        transformer = PixArtTransformer2DModel(**common, cross_attention_dim=size.heads * size.head_dim,
                                               caption_channels=size.caption_channels, norm_num_groups=1)
        pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(num_levels=4, seed=seed),
                                   transformer=transformer.eval(), scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    if device != "cpu":
        pipe = pipe.to(device)
    # (diffusers warns on any .to(dtype=...), even to the dtype the model has)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def call_kwargs(size: Size, pipe: Any, images: int) -> dict[str, Any]:
    """Arguments of one generation of ``images`` images with classifier-free guidance (batch ``2 * images``)."""
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    generator = torch.Generator().manual_seed(0)
    if size.family == "dit":
        return {"class_labels": [207 + i for i in range(images)], "guidance_scale": 4.0, "generator": generator,
                "num_inference_steps": size.steps, "output_type": "pt"}
    shape = (images, size.caption_tokens, size.caption_channels)
    embeds = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    mask = torch.ones(images, size.caption_tokens, dtype=torch.long, device=device)
    side = size.sample * pipe.vae_scale_factor
    return {"prompt_embeds": embeds[0], "prompt_attention_mask": mask, "negative_prompt_embeds": embeds[1],
            "negative_prompt_attention_mask": mask, "negative_prompt": None, "guidance_scale": 4.5,
            "generator": generator, "num_inference_steps": size.steps, "height": side, "width": side,
            "output_type": "latent", **resolution_binning_kwargs(pipe)}


def schedules(size: Size) -> dict[str, Schedule]:
    """The benchmark's schedules for ``size``'s family: full computation first, then cached ones."""
    if size.family == "dit":
        authors = Schedule.from_pattern([1 if a == 1 else 0 for a in AUTHORS_DIT])
        cached = {
            "FORA 2": Schedule.from_intervals([2] * 25),
            "ProCache-like 0.5": Schedule.from_intervals([3] * 5 + [2] * 15 + [1] * 5),
            "FORA 3": Schedule.from_intervals([3] * 16 + [2]),
            "ProCache authors' DiT": authors,
            "FORA 4": Schedule.from_intervals([4] * 12 + [2]),
            "ProCache-like 0.25": Schedule.from_intervals([6] + [5] * 3 + [4] * 5 + [3] * 3),
        }
        forecast = ("FORA 3 + forecast", Schedule.from_intervals([3] * 16 + [2], forecast_order=1))
    else:
        cached = {
            "FORA 2": Schedule.from_intervals([2] * 10),
            "FORA 3": Schedule.from_intervals([3] * 6 + [2]),
            "ProCache-like 7/20": Schedule.from_intervals([4, 3, 3, 3, 3, 2, 2]),
        }
        forecast = ("FORA 3 + forecast", Schedule.from_intervals([3] * 6 + [2], forecast_order=1))
    out = {"FULL": Schedule.full(size.steps)}
    for name, schedule in cached.items():
        out[name] = schedule
        if schedule.inject_selective() != schedule:  # FORA 2 has no REUSE run to inject into
            out[name + " + selective"] = schedule.inject_selective()
    out[forecast[0]] = forecast[1]
    return out


def flops_ratio(pipe: Any, schedule: Schedule) -> float:
    return count_flops(pipe.transformer, schedule).ratio


class CallTimer:
    """Per-call times of the transformer, read with plain torch hooks outside the runtime's own hooks.

    On a CPU: wall clock and the thread's CPU time (``time.thread_time``; the model runs on this thread), since a
    shared machine inflates wall clock but not CPU time. On CUDA: events recorded on the current stream, read after
    the generation (no synchronisation inside the loop).
    """

    def __init__(self, module: torch.nn.Module, cuda: bool) -> None:
        self.cuda = cuda
        self._marks: list[Any] = []
        self._handles = [module.register_forward_pre_hook(lambda *_: self._mark()),
                         module.register_forward_hook(lambda *_: self._mark())]

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append((time.perf_counter(), time.thread_time()))

    def run(self, generate: Callable[[], Any]) -> tuple[float, float, list[float]]:
        """Seconds of the denoising loop of one generation (wall, CPU or wall again on CUDA), and of each call."""
        self._marks = []
        generate()
        marks = self._marks
        if self.cuda:
            torch.cuda.synchronize()
            loop = marks[0].elapsed_time(marks[-1]) / 1e3
            return loop, loop, [a.elapsed_time(b) / 1e3 for a, b in zip(marks[::2], marks[1::2], strict=True)]
        (wall0, cpu0), (wall1, cpu1) = marks[0], marks[-1]
        calls = [b[1] - a[1] for a, b in zip(marks[::2], marks[1::2], strict=True)]
        return wall1 - wall0, cpu1 - cpu0, calls

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def call_kinds(schedule: Schedule, seconds: list[float]) -> dict[str, list[float]]:
    """Per-call seconds grouped by what the call did: FULL (+ scoring), REUSE, SELECTIVE (early / late half)."""
    kinds: dict[str, list[float]] = defaultdict(list)
    calls_per_step = len(seconds) // schedule.num_steps
    scored = score_steps(schedule.actions)
    for index, value in enumerate(seconds):
        step = index // calls_per_step
        action = schedule.actions[step]
        kind = action.name + (" + scoring" if scored[step] else "")
        if action == Action.SELECTIVE:
            kind += " (early)" if step < schedule.num_steps // 2 else " (late)"
        kinds[kind].append(value)
    return kinds


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_benchmark_args(doc: str, script: str, reuse: bool = False) -> tuple[argparse.Namespace, str, str]:
    """``--repeats`` and ``--out`` of a CPU benchmark, the command line to record, and the load average now.

    Sets one torch thread: the reports compare CPU time of one thread, which a shared machine does not inflate.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    if reuse:
        parser.add_argument("--reuse", action="store_true", help="time the schedules of the last run again")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = f"python benchmarks/{script} --repeats {args.repeats}" + (f" --out {args.out}" if args.out else "")
    command += " --reuse" if getattr(args, "reuse", False) else ""
    return args, command, load_average()


def load_average() -> str:
    """The machine's 1/5/15-minute load averages: on a shared machine, what else was running."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())

"""Measured wall-clock speedup of the caching runtime next to the analytic (FLOPs) speedup.

A DiT-S/2-sized transformer (hidden 384, 12 blocks, 6 heads, patch 2, 32x32x4 latents: 256 tokens) with
random weights (speed does not depend on weight values) runs 50 DDIM steps with batched classifier-free
guidance (batch 2) in diffusers' ``DiTPipeline``. Schedules: uniform FORA intervals 2, 3, 4, ProCache-like
non-uniform ones (long intervals early, short late; the authors' shipped DiT-XL/2 pattern for ~0.35), each
with and without selective computation (``Schedule.inject_selective``).

Only the denoising loop is timed: from the start of the first transformer call to the end of the last one
(plain PyTorch forward hooks on the transformer). The VAE decode that follows is identical for every schedule
and is excluded (the pipeline uses a tiny VAE anyway). Each round runs every schedule once, in the same order;
one warm-up round is discarded; speedups are ratios of medians over the rounds of this one run.

Usage:
    python benchmarks/runtime_speedup.py --repeats 3 --out benchmarks/results/runtime_speedup.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from procache_opt import Action, Schedule
from procache_opt.flops import count_flops
from procache_opt.runtime import apply
from procache_opt.runtime.context import score_steps
from procache_opt.testing import tiny_vae

NUM_STEPS = 50

AUTHORS_DIT = [1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0,
               2, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
"""``cal_type.py`` in the authors' DiT-ProCache (denoising order): 17 FULL, 10 SELECTIVE, 23 REUSE. It equals
``inject_selective()`` of its FULL/REUSE part, which is what the table's "+ selective" row runs."""

CACHED = {
    "FORA 2": Schedule.from_intervals([2] * 25),
    "ProCache-like 0.5": Schedule.from_intervals([3] * 5 + [2] * 15 + [1] * 5),
    "FORA 3": Schedule.from_intervals([3] * 16 + [2]),
    "ProCache authors' DiT": Schedule.from_pattern([1 if a == 1 else 0 for a in AUTHORS_DIT]),
    "FORA 4": Schedule.from_intervals([4] * 12 + [2]),
    "ProCache-like 0.25": Schedule.from_intervals([6] + [5] * 3 + [4] * 5 + [3] * 3),
}


def dit_s2_pipeline(seed: int = 0) -> DiTPipeline:
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, num_layers=12, sample_size=32,
                                        patch_size=2, in_channels=4, out_channels=8).eval()
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(seed=seed), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


class LoopTimer:
    """Per-call wall-clock and CPU times of the transformer (plain torch hooks, outside the runtime's own hooks).

    CPU time (``time.thread_time``; the model runs on this thread) is reported next to wall-clock time because
    the benchmark machine is shared: time spent descheduled inflates wall-clock time but not CPU time.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[float, float, float, float]] = []
        self._start = (0.0, 0.0)
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _before(self, *_: object) -> None:
        self._start = (time.perf_counter(), time.thread_time())

    def _after(self, *_: object) -> None:
        self.calls.append((*self._start, time.perf_counter(), time.thread_time()))

    def run(self, pipe: DiTPipeline) -> tuple[tuple[float, float], list[float]]:
        """(wall, CPU) seconds of the loop of one generation, and CPU seconds of each transformer call."""
        self.calls = []
        pipe(class_labels=[207], guidance_scale=4.0, num_inference_steps=NUM_STEPS,
             generator=torch.Generator().manual_seed(0), output_type="pt")
        (wall0, cpu0, _, _), (_, _, wall1, cpu1) = self.calls[0], self.calls[-1]
        return (wall1 - wall0, cpu1 - cpu0), [end - start for _, start, _, end in self.calls]


def schedules() -> dict[str, Schedule]:
    out = {"FULL": Schedule.full(NUM_STEPS)}
    for name, schedule in CACHED.items():
        out[name] = schedule
        if schedule.inject_selective() != schedule:  # FORA 2 has no REUSE run to inject into
            out[name + " + selective"] = schedule.inject_selective()
    return out


def measure(repeats: int) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[list[float]]]]:
    pipe = dit_s2_pipeline()
    timer = LoopTimer(pipe.transformer)
    loops: dict[str, list[tuple[float, float]]] = defaultdict(list)
    calls: dict[str, list[list[float]]] = defaultdict(list)
    for round_index in range(repeats + 1):
        for name, schedule in schedules().items():
            with apply(pipe, schedule):
                loop, per_call = timer.run(pipe)
            if round_index > 0:  # round 0 is the warm-up
                loops[name].append(loop)
                calls[name].append(per_call)
            print(f"round {round_index} {name:36s} wall {loop[0]:7.2f} s  CPU {loop[1]:7.2f} s", flush=True)
    return loops, calls


def step_breakdown(calls: dict[str, list[list[float]]], table: dict[str, Schedule]) -> dict[str, float]:
    """Median CPU seconds of one transformer call by kind, over all schedules and rounds."""
    kinds: dict[str, list[float]] = defaultdict(list)
    for name, runs in calls.items():
        schedule = table[name]
        scored = _scoring_steps(schedule)
        for per_call in runs:
            for step, seconds in enumerate(per_call):
                action = schedule.actions[step]
                kind = action.name + (" + scoring" if step in scored else "")
                if action == Action.SELECTIVE:
                    kind += " (early)" if step < NUM_STEPS // 2 else " (late)"
                kinds[kind].append(seconds)
    return {kind: statistics.median(values) for kind, values in sorted(kinds.items())}


def _scoring_steps(schedule: Schedule) -> set[int]:
    return {step for step, needed in enumerate(score_steps(schedule.actions)) if needed}


def report(loops: dict[str, list[tuple[float, float]]], calls: dict[str, list[list[float]]], repeats: int,
           command: str) -> str:
    table = schedules()
    transformer = dit_s2_pipeline().transformer
    wall, cpu = ({name: statistics.median(run[i] for run in runs) for name, runs in loops.items()} for i in (0, 1))
    lines = [
        "# Runtime speedup: measured wall clock vs analytic FLOPs",
        "",
        f"- Machine: {platform.processor() or platform.machine()} ({_cpu_name()}), 2 cores shared with other jobs;"
        f" torch {torch.__version__} with {torch.get_num_threads()} thread(s); diffusers {diffusers.__version__};"
        f" Python {platform.python_version()}.",
        "- Model: DiTTransformer2DModel, DiT-S/2 size (hidden 384, 12 blocks, 6 heads, patch 2, 256 tokens), random"
        " weights; DiTPipeline, DDIM, 50 steps, guidance 4.0 batched (batch 2 per forward), fp32, CPU.",
        "- Timed: the denoising loop only (first transformer call start to last call end); the VAE decode is identical"
        " for every schedule and excluded.",
        f"- Protocol: 1 warm-up round discarded, then {repeats} rounds running every schedule once in the same order;"
        " median per schedule; speedups are ratios of medians from this one run.",
        f"- Command: `{command}`",
        "",
        f"Full computation: {wall['FULL']:.2f} s wall clock, {cpu['FULL']:.2f} s CPU per 50-step loop (medians).",
        "",
        "| schedule | FULL/SEL/REUSE | FLOPs ratio | analytic speedup | wall speedup | CPU speedup | wall / analytic"
        " | CPU / analytic |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, schedule in table.items():
        ratio = count_flops(transformer, schedule).ratio
        by_wall, by_cpu = wall["FULL"] / wall[name], cpu["FULL"] / cpu[name]
        counts = "/".join(str(schedule.pattern.count(int(a))) for a in (Action.FULL, Action.SELECTIVE, Action.REUSE))
        lines.append(f"| {name} | {counts} | {ratio:.3f} | {1 / ratio:.2f}x | {by_wall:.2f}x | {by_cpu:.2f}x "
                     f"| {by_wall * ratio:.2f} | {by_cpu * ratio:.2f} |")
    lines += ["", "Median CPU seconds of one transformer call (batch 2), by kind, over all schedules and rounds:", "",
              "| call | seconds | share of a FULL call |", "| --- | --- | --- |"]
    breakdown = step_breakdown(calls, table)
    for kind, seconds in breakdown.items():
        lines.append(f"| {kind} | {seconds:.4f} | {seconds / breakdown['FULL']:.3f} |")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = f"python benchmarks/runtime_speedup.py --repeats {args.repeats} --threads {args.threads}"
    if args.out:
        command += f" --out {args.out}"
    with torch.no_grad():
        loops, calls = measure(args.repeats)
    text = report(loops, calls, args.repeats, command)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

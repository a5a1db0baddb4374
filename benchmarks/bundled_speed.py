"""Speed of searched schedules on the bundled model, measured, and speed at equal quality.

1. The README's default search (``procache_opt.search("dit-digits")``: budget 0.5, ``constrained_sampling``).
2. ``tpe`` searches (30 trials, seed 0) at lower budgets, in counted FLOPs and in time measured on this CPU
   (``cost="measured"``: the budget prices each action at its measured seconds, see
   ``procache_opt/measured_costs.py``).
3. Every schedule's held-out error (``feature_error`` on the 16 held-out samples, the search's default) next to
   FORA-2's as published (reuse as cached; the paper's 2x regime).
4. Every schedule's measured speed: CPU time of a whole pipeline call of 8 images with guidance (batch 16), and
   of its denoising loop alone (the part the FLOPs count covers), one torch thread, interleaved rounds after a
   warm-up round; medians. The analytic speedup is ``1 / FLOPs ratio``.

The targets (issue "REUSE steps at the cost of their arithmetic"): the default search's best schedule at least
0.85 of its analytic speedup; the fastest searched schedule whose held-out error is no worse than FORA-2's at
least 3x faster than the full computation.

The searched schedules are saved next to the report (``bundled_speed_schedules.json``); ``--reuse`` times those
again without searching (on 2026-12-06 the searches took 6 minutes, the timing 1).

Usage:
    python benchmarks/bundled_speed.py --out benchmarks/results/bundled_speed.md [--reuse]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import _speed
import torch

import procache_opt
from procache_opt import Calibration, Schedule, zoo
from procache_opt.compare.report import machine_facts
from procache_opt.evaluate import Evaluator
from procache_opt.runtime import apply

BUDGETS = {"flops": (0.35, 0.3, 0.27, 0.25, 0.22), "measured": (0.4, 0.35, 0.3)}
IMAGES = 8
FORA_2 = Schedule.from_intervals([2] * 25)


def searched() -> dict[str, Schedule]:
    schedules = {"default search (0.5, constrained_sampling)": procache_opt.search("dit-digits", progress=False).best}
    for cost, budgets in BUDGETS.items():
        for budget in budgets:
            result = procache_opt.search("dit-digits", budget_flops=budget, cost=cost, strategy="tpe", n_trials=30,
                                         seed=0, progress=False)
            schedules[f"tpe at {budget} ({'time' if cost == 'measured' else 'FLOPs'})"] = result.best
    return schedules


def heldout_errors(pipe: Any, schedules: dict[str, Schedule]) -> dict[str, float]:
    evaluator = Evaluator(pipe, Calibration.default(pipe, num_samples=16, split="heldout"), num_inference_steps=50)
    return {name: evaluator.evaluate(schedule)["feature_error"].mean for name, schedule in schedules.items()}


def timings(pipe: Any, schedules: dict[str, Schedule],
            repeats: int) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Median (whole call, denoising loop) CPU seconds of each schedule, FULL included, and where a step's time
    goes (:func:`step_split`, from FORA-2's timed rounds)."""
    kwargs = {"class_labels": [i % 10 for i in range(IMAGES)], "guidance_scale": 4.0, "num_inference_steps": 50,
              "generator": torch.Generator().manual_seed(0), "output_type": "pt"}
    timer = _speed.CallTimer(pipe.transformer, cuda=False)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in schedules}
    fora_rounds: list[tuple[float, list[float]]] = []
    for round_index in range(repeats + 1):
        for name, schedule in schedules.items():
            with apply(pipe, schedule):
                start = time.thread_time()
                _, loop, calls = timer.run(lambda: pipe(**kwargs))
                whole = time.thread_time() - start
            if round_index:
                runs[name].append((whole, loop))
                if schedule == FORA_2:
                    fora_rounds.append((loop, calls))
            print(f"round {round_index} {name:45s} call {whole:6.2f} s  loop {loop:6.2f} s", flush=True)
    timer.remove()
    seconds = {name: (_speed.median([r[0] for r in rs]), _speed.median([r[1] for r in rs]))
               for name, rs in runs.items()}
    return seconds, step_split(fora_rounds)


def step_split(rounds: list[tuple[float, list[float]]]) -> dict[str, float]:
    """Median CPU seconds of a FULL and of a REUSE transformer call, and of the loop's work outside the
    transformer per step (guidance, scheduler step), from FORA-2's rounds (25 calls of each kind)."""
    kinds = [_speed.call_kinds(FORA_2, calls) for _, calls in rounds]
    return {"FULL": _speed.median([v for k in kinds for v in k["FULL"]]),
            "REUSE": _speed.median([v for k in kinds for v in k["REUSE"]]),
            "outside": _speed.median([(loop - sum(calls)) / FORA_2.num_steps for loop, calls in rounds])}


def report(schedules: dict[str, Schedule], errors: dict[str, float], seconds: dict[str, tuple[float, float]],
           split: dict[str, float], pipe: Any, command: str, load: str) -> str:
    full_call, full_loop = seconds["FULL"]
    fora = errors["FORA 2 (published)"]
    lines = [
        "# Searched schedules on the bundled model: measured speed and speed at equal quality",
        "",
        f"- Machine: {machine_facts()}; torch {torch.__version__}, 1 thread; load average at the start {load}, "
        f"at the end {_speed.load_average()}.",
        f"- `dit-digits` (12 blocks, 64 tokens), 50 DDIM steps, guidance 4; timed: {IMAGES} images per call "
        "(batch 16), CPU time, median of the timed rounds after a warm-up round; held-out error: feature_error "
        "(relative L2 of the final latents) on the 16 held-out samples.",
        f"- Command: `{command}`",
        "",
        f"Full computation: {full_call:.2f} s per call, {full_loop:.2f} s of it the denoising loop.",
        "",
        f"Where a step's time goes (FORA-2's rounds, medians): a FULL transformer call {split['FULL'] * 1e3:.1f} ms, a "
        f"REUSE call {split['REUSE'] * 1e3:.2f} ms ({split['REUSE'] / split['FULL']:.1%}), and "
        f"{split['outside'] * 1e3:.2f} ms per step in the loop outside the transformer (guidance, scheduler step), "
        "which every step pays and no cache removes.",
        "",
        "| schedule | pattern | FLOPs ratio | analytic | measured (call) | measured (loop) | loop / analytic "
        "| held-out error | vs FORA-2's error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, schedule in schedules.items():
        ratio = _speed.flops_ratio(pipe, schedule)
        call, loop = seconds[name]
        lines.append(f"| {name} | `{schedule}` | {ratio:.3f} | {1 / ratio:.2f}x | {full_call / call:.2f}x "
                     f"| {full_loop / loop:.2f}x | {full_loop / loop * ratio:.2f} | {errors[name]:.4f} "
                     f"| {errors[name] / fora:.2f}x |")
    default = next(name for name in schedules if name.startswith("default"))
    ratio = _speed.flops_ratio(pipe, schedules[default])
    efficiency = full_loop / seconds[default][1] * ratio
    good = [name for name in schedules if name.startswith(("tpe", "default")) and errors[name] <= fora]
    fastest = max(good, key=lambda name: full_call / seconds[name][0], default=None)
    lines += ["",
              f"- Target 1: the default search's best schedule at least 0.85 of its analytic speedup (denoising "
              f"loop): {efficiency:.2f} {'met' if efficiency >= 0.85 else 'MISSED'}.",
              ]
    if fastest is None:
        lines.append("- Target 2: no searched schedule reached FORA-2's held-out error.")
    else:
        speed = full_call / seconds[fastest][0]
        lines.append(f"- Target 2: the fastest searched schedule with a held-out error no worse than FORA-2's "
                     f"({fora:.4f}) is `{fastest}` (error {errors[fastest]:.4f}): {speed:.2f}x faster than the "
                     f"full computation, whole call measured ({full_loop / seconds[fastest][1]:.2f}x the loop): "
                     f"{'met' if speed >= 3 else 'MISSED'} (target 3x).")
    return "\n".join(lines) + "\n"


SAVED = Path(__file__).parent / "results" / "bundled_speed_schedules.json"


def main() -> None:
    args, command, load = _speed.cpu_benchmark_args(__doc__, "bundled_speed.py", reuse=True)
    if args.reuse:
        found = {name: Schedule.from_dict(data) for name, data in json.loads(SAVED.read_text()).items()}
    else:
        found = searched()
        SAVED.write_text(json.dumps({name: schedule.to_dict() for name, schedule in found.items()}, indent=1))
    schedules = {"FULL": Schedule.full(50), "FORA 2 (published)": FORA_2, **found}
    pipe = zoo.load("dit-digits")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        errors = heldout_errors(pipe, schedules)
        seconds, split = timings(pipe, schedules, args.repeats)
    text = report(schedules, errors, seconds, split, pipe, command, load)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

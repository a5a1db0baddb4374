"""Throughput of the Ray backend: evaluations per second with 1 and 2 workers, and Ray's per-evaluation overhead.

Every configuration evaluates the same schedules (drawn uniformly from the model's space within a 0.5 FLOPs
budget) with the real evaluator (``EvaluationSpec.build_evaluator``: the pipeline on a calibration set, scored
by feature error against full computation). Torch runs one thread per process, in the driver and in every
worker, so that 2 workers on 2 cores do not fight over threads.

* ``local``: the evaluator in this process, one schedule after another (``LocalBackend``).
* ``ray, N workers``: a ``RayBackend`` with N workers, all schedules submitted at once. Worker start-up (model
  loading, full-computation reference) is timed separately and excluded from the rate.
* overhead: the same three configurations with an evaluator that returns at once, so the time per evaluation
  is what Ray's submit / schedule / return path costs on top of the evaluation itself.
* machine ceiling: a pure-Python busy loop in 2 processes versus 1 (``multiprocessing``, no Ray, no torch):
  the most any 2-worker setup can gain on this machine at the time (a shared machine gives less than 2x).

Usage:
    python benchmarks/ray_throughput.py --model dit-digits --out benchmarks/results/ray_throughput.md
    python benchmarks/ray_throughput.py --model tiny      # procache_opt.testing.tiny_dit_pipeline (random weights)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from procache_opt.backends.base import Backend
from procache_opt.backends.local import LocalBackend
from procache_opt.backends.ray_backend import RayBackend
from procache_opt.calibration import Calibration
from procache_opt.models import load_pipeline
from procache_opt.objective import Score
from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.spec import EvaluationSpec


@dataclass(frozen=True)
class NullSpec:
    """An evaluator that does no work: what remains is the backend's own cost per evaluation."""

    def build_evaluator(self) -> NullSpec:
        return self

    def evaluate(self, schedule: Schedule) -> dict[str, Score]:
        return {"loss": Score.of([float(sum(schedule.pattern))])}


def _spin(_: int) -> float:
    total = 0
    for i in range(3_000_000):
        total += i
    return float(total)


def machine_ceiling(rounds: int) -> list[float]:
    """Per round: rate of 4 busy loops spread over 2 processes divided by their rate in 1 process."""
    ratios = []
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, range(2), chunksize=1)  # start both processes before timing
        for _ in range(rounds):
            start = time.perf_counter()
            pool.map(_spin, range(4), chunksize=4)  # one chunk: all four in one process, one after another
            serial = time.perf_counter() - start
            start = time.perf_counter()
            pool.map(_spin, range(4), chunksize=1)
            ratios.append(serial / (time.perf_counter() - start))
    return ratios


def _time(backend: Backend, schedules: list[Schedule]) -> tuple[float, list[float]]:
    """Wall seconds to evaluate every schedule (all submitted at once), and each evaluation's own duration."""
    start = time.perf_counter()
    for i, schedule in enumerate(schedules):
        backend.submit(i, schedule)
    outcomes = []
    while len(outcomes) < len(schedules):
        outcomes += backend.wait()
    wall = time.perf_counter() - start
    failed = [o.error for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"evaluations failed: {failed[:3]}")
    return wall, [o.duration_s for o in outcomes]


def _measure(makers: dict[str, Callable[[], Backend]], schedules: list[Schedule],
             rounds: int) -> list[dict[str, Any]]:
    """Start every backend once, then time them in interleaved rounds (rotating the order each round).

    The machine is shared: interleaving spreads drifts in background load over all configurations instead of
    penalising whichever ran last; the report gives medians over rounds.
    """
    backends, setup = {}, {}
    try:
        for name, make in makers.items():
            start = time.perf_counter()
            backends[name] = make()
            setup[name] = time.perf_counter() - start
            _time(backends[name], schedules[:2])  # warm-up: first calls allocate and initialise lazily
        walls: dict[str, list[float]] = {name: [] for name in makers}
        durations: dict[str, list[float]] = {name: [] for name in makers}
        names = list(makers)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                wall, inner = _time(backends[name], schedules)
                walls[name].append(wall)
                durations[name] += inner
    finally:
        for backend in backends.values():
            backend.close()
    n = len(schedules)
    return [{"config": name, "setup_s": setup[name], "evals": n, "rounds": rounds,
             "evals_per_s": statistics.median(n / w for w in walls[name]),
             "rates": [n / w for w in walls[name]], "eval_s": statistics.median(durations[name]),
             "per_eval_wall_s": statistics.median(walls[name]) / n} for name in makers]


def _model_path(model: str, workdir: Path) -> str:
    """A path or zoo name every worker can load; ``tiny`` saves the random-weight tiny DiT to ``workdir``."""
    if model != "tiny":
        return model
    from procache_opt.testing import tiny_dit_pipeline

    tiny_dit_pipeline(seed=0).save_pretrained(workdir / "tiny-dit")
    return str(workdir / "tiny-dit")


def _makers(spec: Any) -> dict[str, Callable[[], Backend]]:
    """The three configurations; each builds its own evaluator(s), so setup times compare like with like."""
    return {
        "local": lambda: LocalBackend(spec.build_evaluator().evaluate),
        "ray, 1 worker": lambda: RayBackend(spec, num_workers=1, resources_per_worker={"CPU": 1}),
        "ray, 2 workers": lambda: RayBackend(spec, num_workers=2, resources_per_worker={"CPU": 1}),
    }


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[float]]:
    torch.set_num_threads(1)
    path = _model_path(args.model, workdir)
    pipe = load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    spec = EvaluationSpec(model=path, calibration=Calibration.default(pipe, num_samples=args.samples),
                          objectives={"feature_error": 1.0}, num_inference_steps=args.steps)
    evaluator = spec.build_evaluator(pipe)
    space = ScheduleSpace(args.steps, max_flops_ratio=0.5, costs=evaluator.costs, v_max=4)
    rng = np.random.default_rng(0)
    schedules = [space.sample(rng) for _ in range(args.evals)]
    # 3 logical CPUs on 2 cores: the 1- and 2-worker backends stay up together between interleaved rounds;
    # only one of them evaluates at any time.
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    try:
        ceiling = machine_ceiling(args.rounds)
        real = _measure(_makers(spec), schedules, args.rounds)
        null = _measure(_makers(NullSpec()), schedules * 10, args.rounds)
        ceiling += machine_ceiling(args.rounds)
    finally:
        ray.shutdown()
    return real, null, ceiling


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| configuration | setup (s) | evaluations / s (median) | per round | median evaluation (ms) | "
             "wall per evaluation (ms) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rates = ", ".join(f"{x:.3g}" for x in r["rates"])
        lines.append(f"| {r['config']} | {r['setup_s']:.2f} | {r['evals_per_s']:.3g} | {rates} | "
                     f"{1000 * r['eval_s']:.2f} | {1000 * r['per_eval_wall_s']:.2f} |")
    return lines


def report(real: list[dict[str, Any]], null: list[dict[str, Any]], ceiling: list[float],
           args: argparse.Namespace) -> str:
    by, nby = {r["config"]: r for r in real}, {r["config"]: r for r in null}
    # Paired by round: both ran minutes apart at most, under about the same background load.
    per_round = [b / a for a, b in zip(by["ray, 1 worker"]["rates"], by["ray, 2 workers"]["rates"], strict=True)]
    speedup = statistics.median(per_round)
    vs_local = by["ray, 2 workers"]["evals_per_s"] / by["local"]["evals_per_s"]
    overhead = by["ray, 1 worker"]["per_eval_wall_s"] - by["local"]["per_eval_wall_s"]
    null_overhead = nby["ray, 1 worker"]["per_eval_wall_s"] - nby["local"]["per_eval_wall_s"]
    command = (f"python benchmarks/ray_throughput.py --model {args.model} --evals {args.evals} --steps {args.steps} "
               f"--samples {args.samples} --rounds {args.rounds}")
    return "\n".join([
        "# Ray backend throughput",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, shared: load average "
        f"{args.load[0]:.1f} before and {os.getloadavg()[0]:.1f} after the run",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}",
        f"- model: `{args.model}`" + (" (`procache_opt.testing.tiny_dit_pipeline`, random weights, 16 px)"
                                       if args.model == "tiny" else ""),
        f"- evaluation: {args.steps} steps x {args.samples} calibration samples, feature_error, {args.evals} "
        f"schedules within a 0.5 FLOPs budget per round, {args.rounds} interleaved rounds; torch 1 thread per process",
        f"- command: `{command}`",
        "",
        "## Real evaluator",
        "",
        *_table(real),
        "",
        f"- 2 workers vs 1 worker: **{speedup:.2f}x** evaluations per second (median of the per-round ratios "
        + ", ".join(f"{x:.2f}x" for x in per_round) + "; target >= 1.6x); 2 workers vs local: "
        f"{vs_local:.2f}x.",
        f"- Machine ceiling, 2 processes vs 1 (busy loop, before and after the timings): "
        f"**{statistics.median(ceiling):.2f}x** (median; " + ", ".join(f"{x:.2f}x" for x in ceiling) + "); "
        f"Ray's 2 workers reach {speedup / statistics.median(ceiling):.0%} of it.",
        f"- Ray's cost per evaluation with one worker, minus local: {1000 * overhead:+.1f} ms.",
        "",
        "## Null evaluator (returns at once: the backend's own cost)",
        "",
        *_table(null),
        "",
        f"- Ray's submit/schedule/return path costs {1000 * null_overhead:.2f} ms per evaluation (1 worker minus "
        "local).",
        "- Setup is paid once per search: starting the workers, each loading the model and computing the "
        "full-computation reference itself (the local evaluator computes it in the untimed warm-up instead).",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dit-digits", help="zoo name, pipeline folder, or `tiny`")
    parser.add_argument("--evals", type=int, default=16, help="schedules per configuration and round")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--samples", type=int, default=4, help="calibration samples per evaluation")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args()
    args.load = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        real, null, ceiling = run(args, Path(workdir))
    text = report(real, null, ceiling, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

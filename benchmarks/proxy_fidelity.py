"""Proxy fidelity: does the cheap objective rank schedules the way expensive image metrics do?

A search scores hundreds of schedules, so it uses a cheap proxy: ``feature_error`` (relative L2 error of
the final latents, no VAE decode) on a few search-split samples. What matters for a search is that the proxy
*ranks* schedules like the metrics one reports, on samples the search never saw: here PSNR and SSIM of the
decoded images on a held-out split. LPIPS needs torchvision's ImageNet backbone weights, which cannot be
downloaded on the offline machine this ran on, so it is not measured.

Candidates: ``--per-budget`` schedules for each budget of FULL steps, drawn uniformly from
``ScheduleSpace`` (decreasing, increasing and unconstrained interval order, with and without selective
computation). For each proxy the script reports Spearman's rank correlation (``scipy.stats.spearmanr``)
with each expensive metric, written as losses (``-PSNR``, ``-SSIM``) so that +1 is perfect agreement:

* over all candidates (budgets mixed: a proxy that knows only the budget already scores well here),
* within each budget (what a fixed-budget search needs), averaged over budgets,
* for ``Calibration.default(pipe, k)`` with k = 2, 4, 8, and for random k-subsets of the 8 samples
  (median and 10-90 % range over subsets), to show how the proxy's reliability grows with k.

Runs on one CPU thread by default: on a shared 2-core machine, two threads spin against each other and a
16-sample generation takes 10x longer.

Usage:
    python benchmarks/proxy_fidelity.py --out benchmarks/results/proxy_fidelity.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from procache_opt import Calibration, Schedule
from procache_opt.evaluate import Evaluator
from procache_opt.space import ScheduleSpace

ORDERS: tuple[tuple[str | None, bool], ...] = (
    ("decreasing", False), ("decreasing", True), ("increasing", False), ("increasing", True),
    (None, False), (None, True),
)
"""(interval order, selective) of the schedules drawn for each budget."""


def candidates(num_steps: int, budgets: Sequence[int], per_budget: int, v_max: int, seed: int) -> list[Schedule]:
    """``per_budget`` distinct schedules per budget, cycling through :data:`ORDERS`."""
    rng = np.random.default_rng(seed)
    out: list[Schedule] = []
    for budget in budgets:
        drawn: dict[tuple[int, ...], Schedule] = {}
        for i in range(100 * per_budget):
            if len(drawn) == per_budget:
                break
            monotone, selective = ORDERS[i % len(ORDERS)]
            space = ScheduleSpace(num_steps, num_full=budget, v_max=v_max, monotone=monotone, selective=selective)
            schedule = space.sample(rng)
            drawn.setdefault(schedule.pattern, schedule)
        out += drawn.values()
    return out


def spearman(proxy: Sequence[float], target: Sequence[float]) -> float:
    return float(spearmanr(proxy, target).statistic)


def within_budget(proxy: np.ndarray, target: np.ndarray, groups: np.ndarray) -> float:
    """Mean Spearman correlation inside each budget group."""
    return float(np.mean([spearman(proxy[groups == g], target[groups == g]) for g in np.unique(groups)]))


def machine() -> str:
    """CPU model, core count and load: timings on a shared machine mean little without the load."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, load average {load} at the end"


def load_pipeline(name: str) -> Any:
    if name == "tiny":  # smoke test of this script
        from procache_opt.testing import tiny_dit_pipeline

        return tiny_dit_pipeline()
    from procache_opt import zoo

    pipe = zoo.load(name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dit-digits")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[25, 17, 12, 9])
    parser.add_argument("--per-budget", type=int, default=6)
    parser.add_argument("--v-max", type=int, default=7)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--subsets", type=int, default=200, help="random k-subsets per k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    pipe = load_pipeline(args.model)
    schedules = candidates(args.steps, args.budgets, args.per_budget, args.v_max, args.seed)
    budgets = np.array([s.num_full for s in schedules])
    common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale}
    search = {k: Evaluator(pipe, Calibration.default(pipe, k), objectives=objectives, **common)
              for k, objectives in ((2, ["feature_error"]), (4, ["feature_error"]), (8, ["feature_error", "psnr"]))}
    heldout = Evaluator(pipe, Calibration.default(pipe, args.heldout, split="heldout"),
                        objectives=["feature_error", "psnr", "ssim"], **common)

    seconds: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], dict]) -> dict:
        start = time.perf_counter()
        result = fn()
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
        return result

    for evaluator in (*search.values(), heldout):
        evaluator.reference()
    rows = []
    for schedule in schedules:
        row = {k: timed(f"search split, {k} samples: {', '.join(o.name for o in e.objectives)}",
                        lambda e=e, s=schedule: e.evaluate(s)) for k, e in search.items()}
        row["heldout"] = timed(f"heldout ({args.heldout})", lambda s=schedule: heldout.evaluate(s))
        row["flops"] = heldout.costs.ratio(schedule)
        rows.append(row)
        print(f"{schedule}  fe8={row[8]['feature_error'].mean:.4f}  psnr={row['heldout']['psnr'].mean:.2f}",
              flush=True)

    targets = {
        "-PSNR held-out": np.array([-r["heldout"]["psnr"].mean for r in rows]),
        "-SSIM held-out": np.array([-r["heldout"]["ssim"].mean for r in rows]),
        "feature_error held-out": np.array([r["heldout"]["feature_error"].mean for r in rows]),
    }
    proxies = {f"feature_error, default k={k}": np.array([r[k]["feature_error"].mean for r in rows]) for k in search}
    proxies["-PSNR, default k=8"] = np.array([-r[8]["psnr"].mean for r in rows])
    proxies["FLOPs ratio (no samples)"] = np.array([r["flops"] for r in rows])

    lines = [
        "# Proxy fidelity: cheap objective vs. expensive metrics",
        "",
        f"Command: `{' '.join(['python benchmarks/proxy_fidelity.py', *(sys.argv[1:] if argv is None else argv)])}`",
        f"Machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s); "
        f"total {time.perf_counter() - started:.0f} s.",
        "",
        f"Model `{args.model}`, {args.steps} steps, guidance {args.guidance_scale}; {len(schedules)} candidate "
        f"schedules ({args.per_budget} per budget of FULL steps {args.budgets}, v_max {args.v_max}; FLOPs ratios "
        f"{min(r['flops'] for r in rows):.2f}..{max(r['flops'] for r in rows):.2f}). Expensive metrics on "
        f"{args.heldout} held-out samples (`Calibration.default(pipe, {args.heldout}, split='heldout')`). "
        "LPIPS is not measured: its AlexNet weights cannot be downloaded offline.",
        "",
        "## Spearman rank correlation with the expensive metrics (+1 = same ranking)",
        "",
        "| proxy | " + " | ".join(f"{t}: all | {t}: within budget" for t in targets) + " |",
        "| --- |" + " ---: | ---: |" * len(targets),
    ]
    for name, proxy in proxies.items():
        cells = [f"{spearman(proxy, t):.3f} | {within_budget(proxy, t, budgets):.3f}" for t in targets.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", "## Random k-subsets of the 8 search samples (feature_error)", "",
              f"Median and 10-90 % range of Spearman over {args.subsets} random subsets per k.", "",
              "| k | " + " | ".join(f"{t}: all | {t}: within budget" for t in targets) + " |",
              "| ---: |" + " ---: | ---: |" * len(targets)]
    per_sample = np.array([r[8]["feature_error"].per_sample for r in rows])  # (schedules, 8)
    rng = np.random.default_rng(args.seed)
    for k in (1, 2, 4):
        subsets = [rng.choice(per_sample.shape[1], size=k, replace=False) for _ in range(args.subsets)]
        cells = []
        for t in targets.values():
            for corr in (spearman, lambda p, t: within_budget(p, t, budgets)):
                values = [corr(per_sample[:, idx].mean(axis=1), t) for idx in subsets]
                q10, q50, q90 = np.percentile(values, [10, 50, 90])
                cells.append(f"{q50:.3f} ({q10:.2f}..{q90:.2f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")

    lines += ["", "## Cost of each objective (seconds per schedule)", "", "| evaluation | s / schedule |",
              "| --- | ---: |"]
    lines += [f"| {label} | {total / len(schedules):.2f} |" for label, total in seconds.items()]
    lines += ["", "## Candidates", "", "| pattern | FULL | FLOPs ratio | feature_error k=8 | PSNR held-out | "
              "SSIM held-out |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| `{s}` | {s.num_full} | {r['flops']:.3f} | {r[8]['feature_error'].mean:.4f} "
              f"| {r['heldout']['psnr'].mean:.2f} "
              f"| {r['heldout']['ssim'].mean:.4f} |" for s, r in zip(schedules, rows, strict=True)]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()

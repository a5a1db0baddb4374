"""Generality suite: the default search and ``tpe`` on models and step counts other than ``dit-digits`` at 50.

Rows (``--rows``; each row's numbers are cached as JSON in ``--cache``, so rows run one at a time, resume after
an interruption, and a row added later, such as ``pixart-20`` once ``procache_opt.zoo`` bundles
``pixart-digits``, is appended to the same report):

- ``dit-50``, ``dit-25``: ``dit-digits`` at 50 and 25 DDIM steps;
- ``cosine-50``, ``deep-50``: variants trained with ``procache_opt.zoo.train_digits`` (cosine noise schedule
  and another seed; 8 blocks and another seed), at 50 DDIM steps, read from ``.cache/variants`` (never bundled);
- ``pixart-20``: ``pixart-digits`` at 20 DPM-Solver++ steps (skipped while the zoo does not have it).

Each search is ``procache_opt.search(model, budget, strategy, num_inference_steps=steps, seed=0)`` with every
other setting at its default (README: interval-order probe, forecast choice, FORA start point first, 30 trials,
held-out check on 16 samples). Every schedule is judged on those 16 held-out samples with
``search_quality``'s judge. Targets per (row, budget, strategy), printed as met/missed:

1. held-out error <= 0.6x that of the best FORA schedule as published (``baselines.fora``, reuse as cached)
   whose FLOPs are not lower (``search_quality._comparator``);
2. <= 0.9x the FORA start point, i.e. FORA with the search's forecast order at the budget's FLOPs;
3. counted FLOPs within 2% of the budget, unless the smaller schedule beats the start point;
4. never worse than the FORA start point (the search returns it when its best loses on held-out samples).

For the default strategy, the search runs once more with the other interval direction (``monotone``) and
once with the other forecast order, the rest as chosen, to say whether the probe's choices were right.

Usage (from the repository root)::

    python benchmarks/generality.py                      # every available row, resumes from .cache/generality
    python benchmarks/generality.py --rows pixart-20     # add one row later
    python benchmarks/generality.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from graph_strategy import _load
from search_quality import TARGET, _comparator, _judge

import procache_opt
from procache_opt import zoo
from procache_opt.baselines import fora
from procache_opt.calibration import Calibration
from procache_opt.evaluate import Evaluator
from procache_opt.models import load_pipeline

VARIANTS = Path(".cache/variants")
#: Row name -> (model reference, sampling steps).
ROWS: dict[str, tuple[str, int]] = {
    "dit-50": ("dit-digits", 50),
    "dit-25": ("dit-digits", 25),
    "cosine-50": (str(VARIANTS / "dit-digits-cosine"), 50),
    "deep-50": (str(VARIANTS / "dit-digits-8blocks"), 50),
    "pixart-20": ("pixart-digits", 20),
}
STRATEGIES = ("constrained_sampling", "tpe")
#: Target 2: error ratio to the FORA start point (FORA with the same forecast at the same FLOPs).
START_TARGET = 0.9
#: Target 3: counted FLOPs at least this share of the budget.
FLOPS_SHARE = 0.98
HELDOUT = 16
OTHER_DIRECTION = {"decreasing": "increasing", "increasing": "decreasing", None: "decreasing"}


def _available(name: str) -> bool:
    model = ROWS[name][0]
    return model in zoo.list() or Path(model).is_dir()


def _search(model: str, steps: int, budget: float, strategy: str, **options: Any) -> procache_opt.SearchResult:
    return procache_opt.search(model, budget, strategy, num_inference_steps=steps, seed=0, progress=False,
                               **options)


def _cell(judge: Evaluator, result: procache_opt.SearchResult, fora_rows: dict[int, dict[str, float]],
          budget: float) -> dict[str, Any]:
    """One search judged against FORA as published and against its start point, with the four targets."""
    best, start = result.best, result.trials[0].schedule
    searched = dataclasses.replace(result, chosen_trial=None).best
    ours, uniform = _judge(judge, best), _judge(judge, start)
    k, comparator = _comparator(fora_rows, ours["flops"])
    return {
        "pattern": str(best), "forecast": best.forecast_order, "ours": ours, "start": uniform,
        "start_pattern": str(start), "fora_k": k, "fora": comparator,
        "searched_error": _judge(judge, searched)["error"], "fell_back": result.chosen_trial is not None,
        "probe": result.heldout.get("probe", {}).get("direction"),
        "forecast_chosen": result.heldout.get("forecast", {}).get("order"),
        "targets": {
            "fora": ours["error"] <= TARGET * comparator["error"],
            "start": ours["error"] <= START_TARGET * uniform["error"],
            "flops": ours["flops"] >= FLOPS_SHARE * budget or ours["error"] < uniform["error"],
            "never_worse": ours["error"] <= uniform["error"],
        },
        "search_s": sum(result.seconds.values()),
    }


def run_row(name: str, cache: Path, budgets: Sequence[float]) -> dict[str, Any]:
    """Run (or resume) one row; the cache file is rewritten after every search."""
    model, steps = ROWS[name]
    path = cache / f"{name}.json"
    row = json.loads(path.read_text()) if path.exists() else {"model": model, "steps": steps, "cells": {}}
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    judge: Evaluator | None = None
    fora_rows: dict[int, dict[str, float]] = {}

    def save() -> None:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=1))

    for budget in budgets:
        for strategy in STRATEGIES:
            key = f"{budget:g}/{strategy}"
            if key in row["cells"]:
                continue
            t0 = time.perf_counter()
            result = _search(model, steps, budget, strategy)
            if judge is None:
                judge = Evaluator(pipe, Calibration.default(pipe, num_samples=HELDOUT, split="heldout"), steps,
                                  result.config["guidance_scale"], objectives=("feature_error", "psnr", "latency"),
                                  timing_repeats=1)
                fora_rows = {k: _judge(judge, fora(steps, k)) for k in range(2, 7)}
                row["fora"] = {str(k): v for k, v in fora_rows.items()}
            cell = _cell(judge, result, fora_rows, budget)
            if strategy == STRATEGIES[0]:  # the other probe choices, each with the rest as chosen
                direction, order = cell["probe"], cell["forecast_chosen"] or 0
                other_dir = _search(model, steps, budget, strategy, heldout=None, forecast=order,
                                    monotone=OTHER_DIRECTION[direction])
                other_order = _search(model, steps, budget, strategy, heldout=None, forecast=1 - order,
                                      monotone=direction)
                cell["other_direction"] = {"monotone": OTHER_DIRECTION[direction],
                                           "error": _judge(judge, other_dir.best)["error"]}
                cell["other_forecast"] = {"order": 1 - order, "error": _judge(judge, other_order.best)["error"]}
            cell["wall_s"] = time.perf_counter() - t0
            row["cells"][key] = cell
            save()
            print(f"{name} {key}: error {cell['ours']['error']:.4g} vs FORA-{cell['fora_k']} "
                  f"{cell['fora']['error']:.4g}, start point {cell['start']['error']:.4g}; targets {cell['targets']}",
                  flush=True)
    row["load"] = _load()
    save()
    return row


def _yes(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _cell_order(item: tuple[str, Any]) -> tuple[float, int]:
    """Budgets from the largest, then strategies in `STRATEGIES` order, however the cells were run."""
    budget, strategy = item[0].split("/")
    return -float(budget), STRATEGIES.index(strategy)


def report(rows: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        "# Generality suite (held-out)",
        "",
        f"_Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch "
        f"{torch.__version__}, CPU only._",
        "",
        f"Targets: (1) error <= {TARGET}x the best published FORA schedule with no fewer FLOPs; (2) <= "
        f"{START_TARGET}x the FORA start point (FORA with the search's forecast, the budget's FLOPs); (3) FLOPs "
        f">= {FLOPS_SHARE:.0%} of the budget unless smaller is better than the start point; (4) never worse than "
        f"the start point. Errors: feature_error on {HELDOUT} held-out samples. `fell back`: the search's best lost "
        "to the start point on held-out samples and the start point was returned.",
        "",
    ]
    for name, row in rows.items():
        lines += [f"## {name}: `{row['model']}`, {row['steps']} steps (load average at the end: "
                  f"{row.get('load', 'n/a')})", "",
                  "FORA as published: " + ", ".join(f"FORA-{k} FLOPs {r['flops']:.3f} error {r['error']:.4g}"
                                                   for k, r in row.get("fora", {}).items()), "",
                  "| budget | strategy | FLOPs | error | FORA comparator | (1) | start point error | (2) | (3) | (4) "
                  "| fell back | probe: monotone, forecast | other monotone error | other forecast error | s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, c in sorted(row["cells"].items(), key=_cell_order):
            budget, strategy = key.split("/")
            t = c["targets"]
            od, of = c.get("other_direction"), c.get("other_forecast")
            lines.append(
                f"| {budget} | {strategy} | {c['ours']['flops']:.3f} | {c['ours']['error']:.4g} | "
                f"FORA-{c['fora_k']} {c['fora']['error']:.4g} | {_yes(t['fora'])} | {c['start']['error']:.4g} | "
                f"{_yes(t['start'])} | {_yes(t['flops'])} | {_yes(t['never_worse'])} | "
                f"{'yes' if c['fell_back'] else 'no'} | {c['probe']}, {c['forecast_chosen']} | "
                + (f"{od['monotone']}: {od['error']:.4g} | order {of['order']}: {of['error']:.4g}" if od else "- | -")
                + f" | {c['wall_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--budgets", default="0.5,0.35")
    parser.add_argument("--cache", type=Path, default=Path(".cache/generality"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generality.md"))
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known: {', '.join(ROWS)}")
    torch.set_num_threads(args.threads)
    if not args.report_only:
        for name in names:
            if _available(name):
                run_row(name, args.cache, [float(b) for b in args.budgets.split(",")])
            else:
                print(f"skipping {name}: {ROWS[name][0]} is not available", flush=True)
    rows = {n: json.loads((args.cache / f"{n}.json").read_text()) for n in ROWS if (args.cache / f"{n}.json").exists()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, "python benchmarks/generality.py --rows " + ",".join(rows)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The ``graph`` strategy (LeMiCa, arXiv 2511.00090) against the other strategies on ``dit-digits``.

Three runs of :func:`procache_opt.compare.compare` (the harness of ``docs/results.md``: one measured space
for every search, the FORA start point first, the same calibration and held-out samples), baselines off:

1. ``constrained_sampling``, ``tpe``, ``evolutionary`` and ``random`` with ``--trials`` evaluations each (the
   FORA start point included), ``--seeds`` seeds;
2. ``graph`` with the same evaluations: it measures ``options_for_budget`` = ``trials - 5`` segments and
   interpolates the others;
3. ``graph`` measuring every segment of the space (LeMiCa's way), as many evaluations as that takes.

The report puts both in one table per budget: held-out quality of each search's best schedule, evaluations,
and evaluations and evaluation seconds until the best-so-far calibration loss is within 5% of the best any
search found at that budget (probes count as evaluations; their losses never count). It also checks LeMiCa's
premise on this model: how well the sum (and the worst) of the measured segment errors predicts the real loss
of every schedule the other strategies evaluated (Spearman rank correlation).

``graph`` is deterministic (one calibration set, no randomness unless no path exists), so its runs use one
seed: more would repeat the same search. Run from the repository root::

    python benchmarks/graph_strategy.py                 # resumes into runs/graph-strategy
    python benchmarks/graph_strategy.py --report-only   # rewrite the report from the finished runs
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procache_opt.strategies.graph import GraphStrategy
from scipy import stats as sps

from procache_opt.compare import compare
from procache_opt.compare.report import machine_facts
from procache_opt.compare.result import Cell, CompareResult
from procache_opt.compare.stats import summarize, target_loss, time_to_target
from procache_opt.space import ScheduleSpace

FULL = "graph, every segment"


def _runs(args: argparse.Namespace) -> dict[str, tuple[list[str], int, int]]:
    """The three comparisons by folder name: (strategies, evaluations per search, seeds)."""
    return {"equal": (args.strategies.split(","), args.trials, args.seeds), "graph": (["graph"], args.trials, 1),
            "full": (["graph"], args.full_trials, 1)}


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other jobs on the machine slow every search alike)."""
    path = Path("/proc/loadavg")
    return ", ".join(path.read_text().split()[:3]) if path.exists() else "unknown"


def _graph(cell: Cell, n_trials: int) -> GraphStrategy:
    """The cell's graph strategy rebuilt from its stored trials (weights measured, candidates chosen)."""
    space = ScheduleSpace.from_dict(cell.result.config["space"])
    strategy = GraphStrategy(space, **GraphStrategy.options_for_budget(n_trials))
    strategy.tell(cell.result.trials)  # it learns from the probes' results only
    return strategy


def _segments(space: ScheduleSpace, schedule: Any) -> list[tuple[int, int]]:
    intervals = space.intervals(schedule)
    starts = [sum(intervals[:i]) for i in range(len(intervals))]
    return list(zip(starts, intervals, strict=True))


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def _strategy_rows(cells: dict[str, list[Cell]], budget: float) -> list[str]:
    target = target_loss(min(c.result.best_trial.value for group in cells.values() for c in group))
    rows = []
    for label, group in cells.items():
        quality = summarize([c.heldout["feature_error"] for c in group])
        psnr = summarize([c.heldout["psnr"] for c in group])
        reached = [r for r in (time_to_target(c.result.trials, target) for c in group) if r is not None]
        evals = (f"{statistics.median(r[0] for r in reached):g} ({len(reached)}/{len(group)})" if reached
                 else f"not reached (0/{len(group)})")
        seconds = _fmt(statistics.median(r[1] for r in reached), 3) if reached else "n/a"
        trials = statistics.median(len(c.result.trials) for c in group)
        probes = statistics.median(sum(t.probe for t in c.result.trials) for c in group)
        rows.append(
            f"| {budget:g} | {label} | {len(group)} | {trials:g} ({probes:g} probes) | "
            f"{_fmt(quality.mean)} ± {_fmt(quality.std, 2)} | {_fmt(psnr.mean)} | "
            f"{statistics.mean(c.result.best_trial.value for c in group):.4g} | "
            f"{statistics.mean(c.result.best_trial.flops_ratio for c in group):.3f} | {evals} | {seconds} | "
            f"{statistics.mean(c.wall_s for c in group):.0f} | "
            f"{statistics.mean(sum(t.duration_s for t in c.result.trials) for c in group):.0f} |")
    return rows


def _candidate_rows(cell: Cell, label: str) -> list[str]:
    rows = []
    for t in cell.result.trials:
        note = t.schedule.metadata.get("graph")
        if note:
            rows.append(f"| {cell.budget:g} | {label} | `{t.schedule}` | {note['order']} | {note['total']:.4g} | "
                        f"{note['worst']:.4g} | {t.value:.4g} | {t.flops_ratio:.3f} |")
    return rows


def _premise_rows(full: Cell, others: Sequence[Cell], n_trials: int) -> list[str]:
    """How well the measured segment errors predict real losses: Spearman over every other schedule evaluated."""
    strategy = _graph(full, n_trials)
    weights, space = strategy.weights(), strategy.space
    seen: dict[Any, tuple[float, float, float]] = {}
    for t in (t for c in others for t in c.result.trials if t.candidate):
        segments = _segments(space, t.schedule)
        if t.schedule.pattern not in seen and all(s in weights for s in segments):
            errors = [weights[s] for s in segments]
            seen[t.schedule.pattern] = (math.fsum(errors), max(errors), t.value)
    if len(seen) < 3:
        return [f"| {full.budget:g} | {len(seen)} | n/a | n/a | n/a |"]
    total, worst, real = zip(*seen.values(), strict=True)
    ratio = statistics.median(r / p for p, r in zip(total, real, strict=True) if p > 0)
    return [f"| {full.budget:g} | {len(seen)} | {sps.spearmanr(total, real).statistic:.2f} | "
            f"{sps.spearmanr(worst, real).statistic:.2f} | {ratio:.2f} |"]


def _section(title: str, caption: str, columns: list[str]) -> list[str]:
    """A report section's heading, caption and table header."""
    return ["", f"## {title}", "", caption, "", "| " + " | ".join(columns) + " |",
            "|" + " --- |" * len(columns)]


def report(results: dict[str, CompareResult], command: str, elapsed_s: float | None,
           loads: tuple[str, str]) -> str:
    equal, graph, full = results["equal"], results["graph"], results["full"]
    facts = machine_facts()
    setup = equal.setup
    lines = [
        "# The `graph` strategy (LeMiCa) against the other strategies on `dit-digits`", "",
        f"_Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f"; {elapsed_s / 60:.0f} minutes" if elapsed_s else "") + "._", "",
        "## Set-up", "",
        f"- Model `dit-digits`, 50 DDIM steps, guidance 4; search objective `feature_error` (final latents, "
        f"{equal.config.calibration} calibration samples); every best schedule judged on {equal.config.heldout} "
        "held-out samples (`feature_error`, `psnr`).",
        f"- Interval order `{setup.get('monotone')}` and forecast order {setup.get('forecast')}, measured once "
        "(the search's own probe and forecast choice) and shared by every search.",
        f"- Equal budgets: {equal.config.n_trials} evaluations per search, the FORA start point included, "
        f"{equal.config.seeds} seeds; `graph` with the same budget measures at most "
        f"{GraphStrategy.options_for_budget(graph.config.n_trials)['max_probes']} segments "
        "(`options_for_budget`) and interpolates the others. Full measurement: `graph` with up to "
        f"{full.config.n_trials} evaluations. `graph` runs once per setting: it is deterministic.",
        f"- Machine: {facts['cpu']}, {facts['cores']} cores, GPU {facts['gpu']}; torch {facts['torch']} "
        f"({facts['torch threads']} thread), diffusers {facts['diffusers']}. Shared with other jobs: load average "
        f"(1, 5, 15 min) {loads[0]} at the start of this run, {loads[1]} at the end. Seconds are noisy; compare "
        "them within one table only.",
        *_section("Strategies", "Per budget: searches, trials per search (median; probes among them), held-out "
                  "`feature_error` of the best schedule (mean ± sd over seeds), held-out PSNR, best calibration loss, "
                  "FLOPs ratio, evaluations and cumulative evaluation seconds until the best-so-far calibration loss "
                  "is within 5% of the best any search found at that budget (median over the seeds that reached "
                  "it), wall seconds per search and evaluation seconds per search.",
                  ["budget", "strategy", "searches", "trials", "held-out feature_error", "held-out PSNR",
                   "calibration loss", "FLOPs ratio", "evals to 5%", "eval s to 5%", "search s", "eval s"]),
    ]
    for budget in equal.config.budgets:
        cells = {s: equal.cells_at(budget, s) for s in equal.config.strategies}
        cells[f"graph, {graph.config.n_trials} evaluations"] = graph.cells_at(budget, "graph")
        cells[FULL] = full.cells_at(budget, "graph")
        lines += _strategy_rows({k: v for k, v in cells.items() if v}, budget)
    lines += _section("The paths `graph` proposed", "Each candidate with what the DP predicted from the segment "
                      "errors (sum and worst segment) and its real calibration loss. The first candidate is the "
                      "lexicographic-minimax best, the second the min-sum best, then the next points down each front.",
                      ["budget", "run", "pattern", "order", "predicted sum", "predicted worst", "real loss",
                       "FLOPs ratio"])
    for budget in equal.config.budgets:
        for cell in full.cells_at(budget, "graph"):
            lines += _candidate_rows(cell, FULL)
        for cell in graph.cells_at(budget, "graph"):
            lines += _candidate_rows(cell, f"graph, {graph.config.n_trials} evaluations")
    lines += _section("LeMiCa's premise on this model", "Does caching error add up over segments? For every "
                      "distinct schedule the other strategies evaluated at a budget, the sum and the worst of its "
                      "segments' measured errors (from the full-measurement run) against its real calibration loss: "
                      "Spearman rank correlation, and the median ratio real / sum.",
                      ["budget", "schedules", "Spearman (sum)", "Spearman (worst)", "median real / sum"])
    for budget in equal.config.budgets:
        for cell in full.cells_at(budget, "graph"):
            lines += _premise_rows(cell, equal.cells_at(budget), full.config.n_trials)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,0.35")
    parser.add_argument("--strategies", default="constrained_sampling,tpe,evolutionary,random",
                        help="compared with graph, which runs separately")
    parser.add_argument("--trials", type=int, default=24, help="evaluations per search in the equal comparison")
    parser.add_argument("--full-trials", type=int, default=400, help="the cap for graph measuring every segment")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/graph-strategy"))
    parser.add_argument("--report", type=Path, default=Path("benchmarks/results/graph_strategy.md"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",")]
    common = {"budgets": budgets, "calibration": args.calibration, "heldout": args.heldout, "baselines": False,
              "heldout_objectives": ("feature_error", "psnr")}
    start, load_start = time.perf_counter(), _load()
    for name, (strategies, trials, seeds) in _runs(args).items():
        if not args.report_only:
            compare("dit-digits", strategies=strategies, n_trials=trials, seeds=seeds, out=args.out / name, **common)
    results = {name: CompareResult.load(args.out / name) for name in _runs(args)}
    command = (f"python benchmarks/graph_strategy.py --budgets {args.budgets} --strategies {args.strategies} "
               f"--trials {args.trials} --full-trials {args.full_trials} --seeds {args.seeds} --threads {args.threads}")
    text = report(results, command, None if args.report_only else time.perf_counter() - start,
                  (load_start, _load()))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()

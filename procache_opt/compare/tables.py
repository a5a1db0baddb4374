"""The comparison's tables: strategies over seeds, paired tests between strategies, and the baselines.

Every number comes from :mod:`procache_opt.compare.stats`; this module only chooses rows and formats cells.
"""

from __future__ import annotations

import math
import statistics

from procache_opt.compare.baselines import OURS, Row
from procache_opt.compare.export import Table
from procache_opt.compare.result import CompareResult
from procache_opt.compare.stats import (
    TEST_CHOICE,
    holm,
    paired_test,
    pairs,
    summarize,
    target_loss,
    time_to_target,
)

__all__ = ["baseline_table", "lower_is_better", "paired_table", "seed_values", "strategy_table",
           "trials_table"]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def seed_values(result: CompareResult, budget: float, strategy: str, metric: str) -> dict[int, float]:
    """Held-out ``metric`` of each seed's best schedule."""
    return {c.seed: c.heldout[metric] for c in result.cells_at(budget, strategy)}


def strategy_table(result: CompareResult) -> Table:
    """Per budget and strategy: best held-out quality over seeds (mean ± sd, 95% CI) and time to target."""
    config = result.config
    quality, extra = config.quality, config.heldout_objectives[1:]
    columns = ["budget", "strategy", "seeds", f"held-out {quality} (mean ± sd)", "95% CI",
               *(f"held-out {m} (mean ± sd)" for m in extra), "FLOPs ratio", "evals to 5%", "eval s to 5%",
               "search s"]
    rows = []
    for budget in config.budgets:
        cells = result.cells_at(budget)
        if not cells:
            continue
        target = target_loss(min(c.result.best_trial.value for c in cells))
        for strategy in config.strategies:
            mine = result.cells_at(budget, strategy)
            if not mine:
                continue
            q = summarize([c.heldout[quality] for c in mine])
            others = [summarize([c.heldout[m] for c in mine]) for m in extra]
            reached = [r for r in (time_to_target(c.result.trials, target) for c in mine) if r is not None]
            evals = f"{statistics.median(r[0] for r in reached):g} ({len(reached)}/{len(mine)})" if reached else \
                f"not reached (0/{len(mine)})"
            seconds = _fmt(statistics.median(r[1] for r in reached), 3) if reached else "n/a"
            rows.append((
                f"{budget:g}", strategy, str(q.n), f"{_fmt(q.mean)} ± {_fmt(q.std, 2)}",
                f"[{_fmt(q.ci_low)}, {_fmt(q.ci_high)}]", *(f"{_fmt(s.mean)} ± {_fmt(s.std, 2)}" for s in others),
                f"{statistics.mean(c.result.best_trial.flops_ratio for c in mine):.3f}", evals, seconds,
                _fmt(statistics.mean(c.wall_s for c in mine), 3),
            ))
    return Table("strategies", tuple(columns), tuple(rows), caption=(
        f"Best schedule of each search, judged on {config.heldout} held-out samples ({quality}: "
        f"{'lower' if lower_is_better(quality) else 'higher'} is better); "
        f"mean ± sd and Student-t 95% CI over seeds; evaluations (median, seeds that reached it) and cumulative "
        f"evaluation seconds until the best-so-far calibration loss is within 5% of the best any search found "
        f"at that budget."))


def paired_table(result: CompareResult) -> Table:
    """Every pair of strategies per budget, paired over the seeds both finished."""
    config = result.config
    quality = config.quality
    rows = []
    for budget in config.budgets:
        tests = []
        for a, b in pairs(config.strategies):
            va, vb = seed_values(result, budget, a, quality), seed_values(result, budget, b, quality)
            common = sorted(set(va) & set(vb))
            if len(common) >= 2:
                tests.append((a, b, paired_test([va[s] for s in common], [vb[s] for s in common])))
        adjusted = holm([t.p_value for _, _, t in tests])
        for (a, b, t), p_holm in zip(tests, adjusted, strict=True):
            rows.append((f"{budget:g}", a, b, str(t.n), _fmt(t.mean_diff, 3), t.test, _fmt(t.statistic, 3),
                         _fmt(t.p_value, 3), _fmt(p_holm, 3)))
    return Table("paired_tests", ("budget", "A", "B", "seeds", f"mean Δ {quality} (A − B)", "test", "statistic",
                                  "p", "p (Holm)"), tuple(rows), caption=(
        f"Paired tests of held-out {quality} between strategies over seeds: {TEST_CHOICE}. Negative Δ: A better."))


def _ours(rows: list[Row], group: str) -> Row | None:
    return next((r for r in rows if r.group == group and r.family == OURS and r.measured), None)


def lower_is_better(objective: str) -> bool:
    """Whether smaller values of a registered objective are better (losses) or worse (PSNR, SSIM)."""
    from procache_opt.objective import OBJECTIVES

    return OBJECTIVES.create(objective).direction == "minimize"


def _verdict(row: Row, ours: Row | None, quality: str) -> str:
    """Plain words: is this baseline better or worse than the searched schedule in quality, faster or slower?

    ``wins`` marks a baseline with better mean quality *and* a higher speedup; the p-value (paired over the
    held-out samples) says whether the quality difference is more than noise.
    """
    if row.family == OURS:
        return "(ours)"
    if ours is None or row.measured is None:
        return ""
    q_row, q_ours = row.measured.scores[quality], ours.measured.scores[quality]
    better = q_row < q_ours if lower_is_better(quality) else q_row > q_ours
    words = "better" if better else "equal" if q_row == q_ours else "worse"
    speed = "faster" if row.measured.speedup > ours.measured.speedup else "slower"
    p = paired_test(row.measured.per_sample[quality], ours.measured.per_sample[quality]).p_value
    prefix = "baseline wins: " if better and speed == "faster" else ""
    return f"{prefix}{words} quality (p={p:.2g}), {speed}"


def baseline_table(result: CompareResult) -> Table:
    """Every baseline row with counted FLOPs, branch-evaluation share, measured speedup and held-out quality."""
    config = result.config
    quality, metrics = config.quality, config.heldout_objectives
    rows = []
    groups = [f"{b:g}" for b in config.budgets]
    order = {g: i for i, g in enumerate([*groups, "fixed"])}
    for row in sorted(result.rows, key=lambda r: (order.get(r.group, len(order)), r.family != OURS)):
        # Budget-independent rows are judged against the searched schedule of the nearest budget by FLOPs.
        group = row.group if row.group != "fixed" else _nearest_group(row, groups)
        if row.measured is None:
            rows.append((row.group, row.family, row.setting, "n/a", "n/a", "n/a", *("n/a" for _ in metrics),
                         row.reason))
            continue
        m = row.measured
        verdict = _verdict(row, _ours(result.rows, group), quality)
        if row.group == "fixed" and verdict and row.family != OURS:
            verdict = f"vs budget {group}: {verdict}"
        rows.append((row.group, row.family, row.setting, _fmt(m.flops_ratio, 3), f"{m.compute_share:.3f}",
                     f"{m.speedup:.2f}x", *(_fmt(m.scores[k]) for k in metrics), verdict))
    return Table("baselines", ("budget", "method", "setting", "FLOPs ratio", "branch evals", "speedup",
                               *(f"held-out {k}" for k in metrics), "verdict"), tuple(rows), caption=(
        f"Baselines against the best searched schedule at each budget, on {config.heldout} held-out samples. "
        f"FLOPs ratio: counted (n/a where the counter does not apply); branch evals: attention and feed-forward "
        f"layers actually run, as a share of full computation; speedup: median over {config.timing_repeats} "
        f"back-to-back (full, method) timings in the same run; verdict p: paired test over held-out samples."))


def _nearest_group(row: Row, groups: list[str]) -> str:
    flops = row.measured.flops_ratio if row.measured and row.measured.flops_ratio is not None else 1.0
    return min(groups, key=lambda g: abs(float(g) - flops))


def trials_table(result: CompareResult) -> Table:
    """Every raw trial of every search, in evaluation order (for CSV: too long for a paper's table)."""
    rows = [
        (f"{c.budget:g}", c.strategy, str(c.seed), str(t.trial_id), str(t.schedule), t.status.value,
         _fmt(t.value, 6), _fmt(t.flops_ratio, 4), f"{t.duration_s:.3f}")
        for c in result.cells for t in sorted(c.result.trials, key=lambda t: t.trial_id)
    ]
    return Table("trials", ("budget", "strategy", "seed", "trial", "pattern", "status", "calibration loss",
                            "FLOPs ratio", "seconds"), tuple(rows), caption="Every evaluated schedule.")

"""Aggregate a comparison over seeds: means, confidence intervals, time-to-target and paired tests.

Pure numpy/scipy on plain numbers, so every formula here is tested on known values.

* Confidence intervals are Student-t intervals of the mean over seeds, ``mean +- t(0.975, n-1) * sd / sqrt(n)``
  (sample sd, ``ddof=1``): with 5 seeds the normal approximation (1.96) would be far too narrow (t = 2.78).
* Paired tests compare two strategies on the same seeds (same calibration and held-out samples). With fewer
  than :data:`WILCOXON_MIN_N` pairs a paired t-test is used; from there on the Wilcoxon signed-rank test. The
  exact two-sided Wilcoxon test on n pairs cannot give p below ``2 / 2**n``: 0.0625 for n = 5, so it could
  never reject at the 5% level with 5 seeds; the t-test can, at the price of assuming roughly normal
  differences. p-values are also reported Holm-adjusted over all pairs of a budget.
* "Time to target": the first evaluation (and the cumulative evaluation seconds) at which a search's
  best-so-far loss is within 5% of the best loss any search found at that budget.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from procache_opt.strategy import TrialResult

__all__ = [
    "PairedTest", "Summary", "TEST_CHOICE", "WILCOXON_MIN_N", "best_so_far", "holm", "paired_test", "pairs",
    "summarize", "target_loss", "time_to_target",
]

#: Pairs from which the Wilcoxon signed-rank test replaces the paired t-test (see the module docstring).
WILCOXON_MIN_N = 6

TEST_CHOICE = (
    f"paired t-test for fewer than {WILCOXON_MIN_N} seeds (the exact Wilcoxon signed-rank test cannot reach "
    f"p < 0.05 with 5 pairs: its smallest two-sided p is 2/2^5 = 0.0625), Wilcoxon signed-rank otherwise; the exact "
    f"sign test where every seed differs by the same amount (zero variance, e.g. deterministic strategies)"
)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and Student-t 95% interval of values over seeds."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sd (``ddof=1``) and t-interval; with one value the sd and interval are NaN (nothing to say)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize() needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of ``a`` against ``b`` (``mean_diff = mean(a - b)``)."""

    test: str
    n: int
    mean_diff: float
    statistic: float
    p_value: float


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test (n < :data:`WILCOXON_MIN_N`) or Wilcoxon signed-rank test of ``a`` against ``b``.

    Identical samples (every difference zero) give p = 1: there is no evidence of a difference, while scipy
    would return NaN (t-test) or raise (Wilcoxon). Differences that are all the same non-zero value (two
    deterministic strategies, or one against a strategy that always returns its start point) have zero
    variance, so the t statistic is infinite and scipy's p is 0 whatever ``n``; the exact two-sided sign test
    is used there instead (p = 2 * 0.5**n: 0.25 for 3 seeds), which says what ``n`` such pairs can show.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"paired_test needs two equally long samples of at least 2 values, got {x.size}, {y.size}")
    diff = x - y
    test = "paired t" if x.size < WILCOXON_MIN_N else "Wilcoxon"
    if not np.any(diff):
        return PairedTest(test, int(x.size), 0.0, 0.0, 1.0)
    if np.all(diff == diff[0]):
        return PairedTest("sign", int(x.size), float(diff.mean()), float(x.size), min(1.0, 2.0 * 0.5**x.size))
    result = sps.ttest_rel(x, y) if test == "paired t" else sps.wilcoxon(x, y)
    return PairedTest(test, int(x.size), float(diff.mean()), float(result.statistic), float(result.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), controlling the family-wise error rate."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def best_so_far(trials: Sequence[TrialResult]) -> tuple[list[float], list[float]]:
    """Best loss after each evaluation (``inf`` until one completes), and cumulative evaluation seconds.

    Measurement probes (``TrialResult.probe``) cost evaluations and seconds but their losses never count.
    """
    best, seconds, running, elapsed = [], [], math.inf, 0.0
    for trial in sorted(trials, key=lambda t: t.trial_id):
        if trial.candidate:
            running = min(running, trial.value)
        elapsed += trial.duration_s
        best.append(running)
        seconds.append(elapsed)
    return best, seconds


def target_loss(best_found: float, tolerance: float = 0.05) -> float:
    """The loss that counts as "within ``tolerance`` of the best found" (relative; losses here are >= 0)."""
    return best_found + tolerance * abs(best_found)


def time_to_target(trials: Sequence[TrialResult], target: float) -> tuple[int, float] | None:
    """(evaluations, cumulative evaluation seconds) until the best-so-far loss is at most ``target``."""
    best, seconds = best_so_far(trials)
    for index, (value, elapsed) in enumerate(zip(best, seconds, strict=True)):
        if value <= target:
            return index + 1, elapsed
    return None


def pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of names, in the given order."""
    return list(itertools.combinations(names, 2))

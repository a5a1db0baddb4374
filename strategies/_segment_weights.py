"""Which segments the ``graph`` strategy measures, in which rounds, and the weights of those it has not.

Measuring every segment a member can use is LeMiCa's way (arXiv 2511.00090): one run per edge. On 50 steps
that is 200-400 runs, more than an evaluation budget of a few dozen allows. So the strategy measures coarse to
fine: a spread-out subset first (every length's first and last start, the rest evenly in between), then
subsets twice as large, up to every segment or ``max_probes``; after each round it proposes the best paths
under the weights known so far. Unmeasured segments are interpolated: linearly in the start step for a
measured length, linearly in the length between measured lengths, and in proportion to the reused steps
beyond them. The premise is that a segment's error changes smoothly along denoising, as the feature drift
does (``benchmarks/results/feature_dynamics.md``); it is an approximation that full measurement does not need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["Segment", "estimate_weights", "plan_probes", "probe_rounds"]

#: ``(start step, length)``: one FULL step at ``start``, then ``length - 1`` reused steps.
Segment = tuple[int, int]


def _spread(n: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n)``, evenly spread: the first and the last for ``k >= 2``, the middle
    one for ``k == 1``."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _share(total: int, sizes: list[int], floor: int) -> list[int]:
    """``total`` probes over groups of ``sizes`` (``total >= floor * len(sizes)``): ``floor`` each (at most the
    group), the rest where the fewest per member are measured (ties to the earlier group)."""
    quotas = [min(floor, size) for size in sizes]
    for _ in range(min(total, sum(sizes)) - sum(quotas)):
        open_groups = [i for i, size in enumerate(sizes) if quotas[i] < size]
        quotas[min(open_groups, key=lambda i: (quotas[i] / sizes[i], i))] += 1
    return quotas


def plan_probes(segments: Sequence[Segment], max_probes: int | None) -> list[Segment]:
    """The segments to measure, sorted: all of them, or at most ``max_probes`` spread over lengths and starts.

    The shortest and the longest length are always among the measured ones (when ``max_probes >= 2``), so
    estimates interpolate between lengths rather than extrapolate, and with ``max_probes >= 4`` each measured
    length has its first and last start measured, so estimates interpolate along the steps too.
    """
    if max_probes is None or len(segments) <= max_probes:
        return sorted(segments)
    starts: dict[int, list[int]] = {}
    for start, length in sorted(segments):
        starts.setdefault(length, []).append(start)
    lengths = sorted(starts)
    floor = 2 if max_probes >= 4 else 1
    chosen = [lengths[i] for i in _spread(len(lengths), min(len(lengths), max(max_probes // floor, 1)))]
    quotas = _share(max_probes, [len(starts[n]) for n in chosen], floor)
    return sorted((starts[n][i], n) for n, quota in zip(chosen, quotas, strict=True)
                  for i in _spread(len(starts[n]), quota))


def probe_rounds(segments: Sequence[Segment], max_probes: int | None, first_round: int | None) -> list[list[Segment]]:
    """The segments to measure, round by round, until every segment (or ``max_probes`` of them) is measured.

    Round ``i`` adds the segments of :func:`plan_probes` with ``first_round * 2**i`` probes that are not
    measured yet (the plans are spread anew at each size, so a round adds more than the size doubles), the last
    round those of the plan at the cap; ``first_round=None`` measures in one round. No round repeats a segment.
    """
    cap = len(segments) if max_probes is None else min(max_probes, len(segments))
    sizes, size = [], first_round or cap
    while size < cap:
        sizes.append(size)
        size *= 2
    sizes.append(cap)
    rounds: list[list[Segment]] = []
    measured: set[Segment] = set()
    for size in sizes:
        new = [seg for seg in plan_probes(segments, size) if seg not in measured][:cap - len(measured)]
        if new:
            rounds.append(new)
            measured.update(new)
    return rounds


def estimate_weights(segments: Sequence[Segment], measured: Mapping[Segment, float]) -> dict[Segment, float]:
    """A weight for every segment: its measurement (``inf`` for a failed run), else an interpolation.

    Failed measurements are not interpolated from. A segment gets no weight (and no path uses it) when no
    length has a finite measurement.
    """
    points: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for length in sorted({n for _, n in measured}):
        finite = sorted((s, w) for (s, n), w in measured.items() if n == length and math.isfinite(w))
        if finite:
            points[length] = (np.array([s for s, _ in finite], float), np.array([w for _, w in finite], float))
    out: dict[Segment, float] = {}
    for start, length in segments:
        if (start, length) in measured:
            out[(start, length)] = float(measured[(start, length)])
        elif points:
            out[(start, length)] = _interpolate(points, start, length)
    return out


def _interpolate(points: dict[int, tuple[np.ndarray, np.ndarray]], start: int, length: int) -> float:
    def at(n: int) -> float:
        return float(np.interp(start, *points[n]))

    if length in points:
        return at(length)
    below = max((n for n in points if n < length), default=None)
    above = min((n for n in points if n > length), default=None)
    if below is not None and above is not None:
        share = (length - below) / (above - below)
        return (1 - share) * at(below) + share * at(above)
    nearest = below if below is not None else above
    return at(nearest) * (length - 1) / max(nearest - 1, 1)  # error grows with the steps reused

"""``latency``: measured wall-clock time relative to full computation.

Counted FLOPs overstate speed-ups: token selection, cache reads and writes and attention-map scoring cost
time that FLOP counts ignore, and peers' users found wall-clock gains well below FLOPs ratios
(``docs/architecture.md``, "cost accounting"). This objective lets a search optimise the real thing.
"""

from __future__ import annotations

import statistics

from procache_opt.objective import Objective, RunOutputs, Score

__all__ = ["Latency"]


class Latency(Objective):
    """Median seconds of the cached pipeline call divided by the median of the full computation's.

    The evaluator times ``timing_repeats`` calls on the first calibration batch after one untimed warm-up
    call, decoding included (what a user waits for). Latency belongs to the run, not to a sample: the
    score holds one value (the ratio of medians; ``RunOutputs.seconds`` keeps every repeat). Below 1 is
    faster than full computation.
    """

    name = "latency"
    direction = "minimize"
    needs = frozenset({"timing"})

    def score(self, run: RunOutputs, reference: RunOutputs) -> Score:
        if not run.seconds or not reference.seconds:
            raise ValueError(
                "latency needs timings of the run and of the reference; the evaluator times runs only when an "
                "objective declares needs={'timing'}"
            )
        return Score.of([statistics.median(run.seconds) / statistics.median(reference.seconds)])

"""cache-dit's rows of a comparison: its hand-written step masks, and its dynamic DBCache tuned to a matched speed.

* SCM (steps computation mask) rows, budget-independent: each of cache-dit's four policies
  (``cache_dit.steps_mask(mask_policy=...)``: slow, medium, fast, ultra), run through the cache-dit runtime with
  ``Fn_compute_blocks=1, Bn_compute_blocks=0`` (F1B0; cache-dit's default F8B0 ran slower than no cache on
  ``dit-digits``), static policy (every masked step is cached), with and without cache-dit's TaylorSeer calibrator.
* DBCache rows, one per budget and calibrator setting: dynamic caching (a step is cached when the first blocks'
  residual changed by less than ``residual_diff_threshold``) over Fn in {1, 4, 8} (Bn 0; those below the model's
  block count) and four thresholds,
  the setting whose measured speedup is closest to the searched schedule's kept (as for diffusers' caches).

Without cache-dit installed the rows say so (``pip install 'procache-opt[cache-dit]'``) instead of failing the
comparison.
"""

from __future__ import annotations

import itertools

from procache_opt.compare.measure import Method
from procache_opt.runtimes import Runtime
from procache_opt.runtimes.cache_dit import SCM_POLICIES, CacheDitRuntime, scm_schedule

__all__ = ["DBCACHE_BLOCKS", "DBCACHE_THRESHOLDS", "SCM", "dbcache_families", "scm_methods"]

#: Family name of the hand-written mask rows.
SCM = "cache-dit SCM (hand-written mask)"
#: Fn_compute_blocks tried for dynamic DBCache (Bn 0): the smallest, a third of a 12-block model, cache-dit's default.
DBCACHE_BLOCKS = (1, 4, 8)
#: residual_diff_threshold tried for dynamic DBCache: from cache-dit's default (0.08) down and up.
DBCACHE_THRESHOLDS = (0.04, 0.08, 0.16, 0.32)
_CALIBRATORS = (None, "taylorseer")


def scm_methods(num_steps: int) -> list[Method]:
    """Each cache-dit mask policy, F1B0, with and without TaylorSeer (needs cache-dit: the masks are its own)."""
    methods = []
    for calibrator, policy in itertools.product(_CALIBRATORS, SCM_POLICIES):
        schedule = scm_schedule(policy, num_steps)
        runtime = CacheDitRuntime(calibrator=calibrator)
        methods.append(Method(SCM, f"{policy}, {schedule.num_full} of {num_steps} steps computed, {runtime.label}",
                              schedule=schedule, runtime=runtime))
    return methods


def dbcache_families(num_blocks: int) -> dict[str, dict[str, Runtime]]:
    """Dynamic DBCache settings by family (without and with TaylorSeer), each by its setting in words; only Fn
    values below the model's ``num_blocks`` (computing every block at every step would cache nothing)."""
    families: dict[str, dict[str, Runtime]] = {}
    for calibrator in _CALIBRATORS:
        family = "cache-dit DBCache" + (" + TaylorSeer" if calibrator else "")
        families[family] = {
            f"F{fn}B0, threshold={threshold:g}": CacheDitRuntime(Fn_compute_blocks=fn, calibrator=calibrator,
                                                                 residual_diff_threshold=threshold)
            for fn, threshold in itertools.product(DBCACHE_BLOCKS, DBCACHE_THRESHOLDS) if fn < num_blocks
        }
    return families

"""Built-in objectives, registered by name under the entry-point group ``procache_opt.objectives``.

========================  =========  ============  =================================================
name                      direction  needs         what it measures
========================  =========  ============  =================================================
``feature_error``         minimize   latents       relative L2/L1 error of latents or block outputs
``lpips``                 minimize   images        LPIPS (Zhang et al. 2018), AlexNet or VGG
``psnr``                  maximize   images        peak signal-to-noise ratio in dB
``ssim``                  maximize   images        structural similarity (Wang et al. 2004)
``latency``               minimize   timing        measured wall-clock time relative to full compute
``flops_ratio``           minimize   (nothing)     counted FLOPs relative to full compute
========================  =========  ============  =================================================

Example:
    >>> import procache_opt.objectives as objectives
    >>> "feature_error" in objectives.available()
    True
    >>> objectives.create("feature_error", norm="l1").name
    'feature_error'
"""

from __future__ import annotations

from typing import Any

from procache_opt.objective import OBJECTIVES, Objective

__all__ = ["available", "create"]


def available() -> list[str]:
    """Sorted names of every registered objective (built-in, third-party and run-time registered)."""
    return OBJECTIVES.available()


def create(name: str, **kwargs: Any) -> Objective:
    """Instantiate the objective called ``name``; unknown names and keyword arguments raise."""
    return OBJECTIVES.create(name, **kwargs)

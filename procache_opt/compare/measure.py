"""Judge any acceleration method the same way: held-out quality, counted FLOPs, and speedup timed in pairs.

A *method* is anything that changes how the pipeline computes a generation: a caching schedule (ours, FORA,
ToCa-style) run by a runtime (this project's hooks by default, or cache-dit), a runtime that decides at run time
what to skip (diffusers' caches, cache-dit's dynamic DBCache), or fewer denoising steps. :class:`Bench` runs each
through :meth:`procache_opt.runtimes.Runtime.apply` (no branch per runtime) on the held-out
calibration set (same noise, same labels) and scores its outputs against the 50-step full computation with
the same objectives, so every row of the comparison is measured by one code path.

Speedup is timed *in the same run* as the full computation: each repeat times one full-computation call and
one call of the method back to back, and the reported speedup is the median of the per-repeat ratios. On a
shared machine the absolute seconds drift with the load; a ratio of neighbouring calls drifts much less.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from procache_opt._timing import timed_call
from procache_opt.calibration import Calibration
from procache_opt.evaluate import EvaluatedRun, Evaluator
from procache_opt.flops import step_costs
from procache_opt.pipelines import adapter_for
from procache_opt.runtimes import Runtime
from procache_opt.runtimes.procache import ProCacheRuntime
from procache_opt.schedule import Schedule

__all__ = ["Bench", "Measured", "Method", "call_kwargs"]

Kind = Literal["schedule", "steps", "runtime"]


@dataclass(frozen=True)
class Method:
    """One acceleration method with one setting.

    Attributes:
        family: Row group in the report (``"FORA"``, ``"MagCache"``, ...).
        setting: The setting in words (``"interval=3"``).
        schedule: For caching schedules: what the runtime runs.
        steps: For fewer denoising steps: how many.
        runtime: What runs the schedule (``None``: this project's runtime), or, without a schedule, a runtime that
            decides at run time what to skip (diffusers' caches, cache-dit's dynamic DBCache).
    """

    family: str
    setting: str
    schedule: Schedule | None = None
    steps: int | None = None
    runtime: Runtime | None = None

    def __post_init__(self) -> None:
        if (self.steps is not None) == (self.schedule is not None or self.runtime is not None):
            raise ValueError(f"Method {self.family!r} needs either steps, or a schedule and/or a runtime")

    @property
    def kind(self) -> Kind:
        return "schedule" if self.schedule is not None else "steps" if self.steps is not None else "runtime"

    @property
    def executor(self) -> Runtime:
        """The runtime that executes the method (this project's, unless it names another)."""
        return self.runtime if self.runtime is not None else ProCacheRuntime()

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "setting": self.setting, "kind": self.kind,
                "pattern": str(self.schedule) if self.schedule is not None else None,
                "runtime": self.executor.name if self.steps is None else None}


@dataclass(frozen=True)
class Measured:
    """What :class:`Bench` measured for one method.

    Attributes:
        flops_ratio: Counted FLOPs against full computation, ``None`` where the counter does not apply (runtimes
            that decide at run time what to skip).
        compute_share: Transformer branch evaluations (self-attention and feed-forward layers actually run)
            against full computation, counted on the held-out run; applies to every method.
        speedup: Median over repeats of (full-computation seconds / method seconds), timed back to back.
        scores: Mean of each objective on the held-out set.
        per_sample: Per-sample values of each objective (for paired statistics).
    """

    flops_ratio: float | None
    compute_share: float
    speedup: float
    scores: dict[str, float]
    per_sample: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        return {"flops_ratio": self.flops_ratio, "compute_share": self.compute_share, "speedup": self.speedup,
                "scores": self.scores, "per_sample": self.per_sample}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measured:
        return cls(data["flops_ratio"], data["compute_share"], data["speedup"], dict(data["scores"]),
                   {k: list(v) for k, v in data["per_sample"].items()})


class Bench:
    """Held-out scoring and paired timing for every method of a comparison.

    Args:
        pipe: The pipeline (a DiT pipeline for diffusers' caches and cache-dit).
        heldout: The held-out calibration set (never seen by a search).
        num_inference_steps: Steps of the full computation every method is compared with.
        guidance_scale: Classifier-free guidance scale.
        objectives: Objective names scored on the held-out set.
        timing_samples: Samples per timed call (the first ones of ``heldout``).
        timing_repeats: Timed (full, method) pairs per method, after one untimed warm-up pair.
        mag_ratios: MagCache's calibration for this model (see ``diffusers_caches.mag_ratios``).
    """

    def __init__(self, pipe: Any, heldout: Calibration, num_inference_steps: int, guidance_scale: float,
                 objectives: tuple[str, ...], timing_samples: int, timing_repeats: int,
                 mag_ratios: tuple[float, ...] | None = None) -> None:
        self.pipe = pipe
        self.heldout = heldout
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.objectives = objectives
        self.timing_samples = timing_samples
        self.timing_repeats = timing_repeats
        self.mag_ratios = mag_ratios
        self.evaluator = self._evaluator(num_inference_steps)
        self._full_costs = step_costs(pipe.transformer, num_inference_steps, guidance=guidance_scale > 1)

    def reference(self) -> EvaluatedRun:
        """The full computation on the held-out set."""
        return self.evaluator.reference()

    def measure(self, method: Method, time_it: bool = True) -> tuple[Measured, torch.Tensor | None]:
        """Score ``method`` on the held-out set (and time it); also return its decoded images.

        The images are ``None`` unless an objective needs them (e.g. ``psnr``): decoding costs time.
        """
        run = self.run(method)
        scores = self.evaluator.score(run)
        reference = self.reference()
        share = sum(run.block_evaluations.values()) / max(1, sum(reference.block_evaluations.values()))
        measured = Measured(
            flops_ratio=self.flops_ratio(method),
            compute_share=share,
            speedup=self.speedup(method) if time_it else float("nan"),
            scores={name: s.mean for name, s in scores.items()},
            per_sample={name: list(s.per_sample) for name, s in scores.items()},
        )
        return measured, run.images

    def run(self, method: Method) -> EvaluatedRun:
        """The method's outputs on the held-out set (same seeds and labels as the reference)."""
        if method.steps is None:
            return self.evaluator.run_with(method.executor, method.schedule)
        # Fewer steps: the plain pipeline's "reference" at k steps is that method's output.
        return self._evaluator(method.steps).reference()

    def flops_ratio(self, method: Method) -> float | None:
        """Counted FLOPs against the full computation (``None`` for runtimes that decide at run time)."""
        if method.schedule is not None:
            costs = method.executor.step_costs(self.pipe.transformer, self.num_inference_steps,
                                               selective=method.schedule.selective, guidance=self.guidance_scale > 1)
            return costs.ratio(method.schedule)
        if method.steps is not None:
            fewer = step_costs(self.pipe.transformer, method.steps, guidance=self.guidance_scale > 1)
            return fewer.full_total / self._full_costs.full_total
        return None

    def speedup(self, method: Method) -> float:
        """Median of (full seconds / method seconds) over back-to-back timed pairs (one warm-up pair first)."""
        ratios = []
        for repeat in range(1 + self.timing_repeats):
            full = self._seconds(contextlib.nullcontext, self.num_inference_steps)
            fast = self._seconds(lambda: self._context(method), method.steps or self.num_inference_steps)
            if repeat:
                ratios.append(full / fast)
        return float(statistics.median(ratios))

    # -- internals ----------------------------------------------------------------------------------------
    def _evaluator(self, steps: int) -> Evaluator:
        return Evaluator(self.pipe, self.heldout, num_inference_steps=steps, guidance_scale=self.guidance_scale,
                         objectives=self.objectives)

    def _context(self, method: Method) -> contextlib.AbstractContextManager[Any]:
        if method.steps is not None:
            return contextlib.nullcontext()
        return method.executor.apply(self.pipe, method.schedule)

    def _seconds(self, context: Callable[[], contextlib.AbstractContextManager[Any]], steps: int) -> float:
        """Seconds of one generation of the first ``timing_samples`` held-out samples, decoding included."""
        first = next(self.heldout.batches(self.timing_samples))
        kwargs = call_kwargs(self.pipe, first, steps, self.guidance_scale)
        with context(), torch.no_grad():
            return timed_call(self.pipe, kwargs)


def call_kwargs(pipe: Any, calibration: Calibration, steps: int, guidance_scale: float) -> dict[str, Any]:
    """Pipeline arguments that generate ``calibration`` exactly as the :class:`Evaluator` does (CPU generators)."""
    return {
        **adapter_for(pipe).call_kwargs(pipe, calibration.conditions),
        "generator": [torch.Generator().manual_seed(seed) for seed in calibration.seeds],
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "output_type": "pt",
    }

"""Everything a worker needs to build its own evaluator: plain, picklable data.

A Ray worker receives an :class:`EvaluationSpec` once, loads the model and computes the full-computation
reference once, then evaluates many schedules. The driver never ships a pipeline per trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from procache_opt.models import ModelSpec, load_pipeline
from procache_opt.runtimes import DEFAULT_RUNTIME, create_runtime
from procache_opt.schedule import SelectiveConfig
from procache_opt.scoring import ObjectiveSet

if TYPE_CHECKING:
    from procache_opt.calibration import Calibration
    from procache_opt.evaluate import Evaluator

__all__ = ["EvaluationSpec"]


@dataclass(frozen=True)
class EvaluationSpec:
    """How to evaluate schedules: which model, on which calibration set, scored by which objectives.

    Attributes:
        model: A zoo name, a local pipeline folder or a picklable factory (see ``procache_opt.models``).
        calibration: The (seed, condition) pairs every schedule is scored on.
        objectives: Objective names and weights (``ObjectiveSet.from_spec``).
        objective_options: Keyword arguments per objective name.
        num_inference_steps: Denoising steps of every run.
        guidance_scale: Classifier-free guidance scale.
        selective: Selective-computation settings (for FLOPs counting).
        depth_split: ``Schedule.depth_split`` of per-depth schedules (for FLOPs counting).
        device: Torch device for the pipeline (``None``: leave where it is).
        dtype: Torch dtype name, e.g. ``"float16"`` (``None``: leave as loaded).
        cache_dir: Folder for the on-disk reference cache (``None``: memory only).
        runtime: The runtime that executes schedules (a name in ``procache_opt.runtimes.RUNTIMES``).
        runtime_options: Its options.
    """

    model: ModelSpec
    calibration: Calibration
    objectives: Mapping[str, float]
    objective_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    selective: SelectiveConfig = field(default_factory=SelectiveConfig)
    depth_split: float = 0.5
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | None = None
    runtime: str = DEFAULT_RUNTIME
    runtime_options: Mapping[str, Any] = field(default_factory=dict)

    def objective_set(self) -> ObjectiveSet:
        return ObjectiveSet.from_spec(dict(self.objectives), self.objective_options)

    def build_evaluator(self, pipe: Any = None, objectives: ObjectiveSet | None = None, **options: Any) -> Evaluator:
        """Load the model (unless ``pipe`` is given) and wrap it in an evaluator (``options``: its other arguments).

        ``objectives`` are the instances to score with; by default they are built from :attr:`objectives` (a Ray
        worker builds its own once). A search passes its one set, so LPIPS loads its network once per search.
        """
        import torch

        from procache_opt.evaluate import Evaluator

        runtime = create_runtime(self.runtime, **self.runtime_options)
        if pipe is None:
            dtype = getattr(torch, self.dtype) if self.dtype else None
            pipe = load_pipeline(self.model, device=self.device, dtype=dtype)
        costs = runtime.step_costs(pipe.transformer, self.num_inference_steps, guidance=self.guidance_scale > 1,
                                   selective=self.selective, depth_split=self.depth_split)
        return Evaluator(
            pipe,
            self.calibration,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            objectives=(objectives or self.objective_set()).objectives,
            costs=costs,
            cache_dir=self.cache_dir,
            runtime=runtime,
            **options,
        )

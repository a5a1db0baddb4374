"""Run a pipeline under a schedule on a calibration set and score it against full computation.

The full-computation reference of a calibration set is computed once, kept in memory and, with
``cache_dir``, on disk; every schedule is then run through :func:`procache_opt.runtime.apply` on the same seeds
and conditions and scored by each objective. The reference runs every step FULL through that same runtime, so
its FULL steps are bit for bit those of every schedule run (the runtime's conditioning tables round like a GEMM
with more rows, 1e-7 relative to the plain pipeline); its timing is the plain pipeline's, what a user runs
without caching. Only what the objectives need is computed: decoded images, intermediate features and timings
cost extra.

Example:
    >>> from procache_opt import Calibration, Schedule
    >>> from procache_opt.testing import tiny_dit_pipeline
    >>> pipe = tiny_dit_pipeline()
    >>> ev = Evaluator(pipe, Calibration.default(pipe, num_samples=2), num_inference_steps=4)
    >>> ev.evaluate(Schedule.full(4))["feature_error"].mean
    0.0
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from procache_opt._capture import capture, check_feature_names
from procache_opt._reference_cache import ReferenceCache
from procache_opt._replay import recording, replayable_calls, replaying
from procache_opt._timing import timed_call
from procache_opt.calibration import Calibration
from procache_opt.costs import StepCosts
from procache_opt.objective import OBJECTIVES, Objective, RunOutputs, Score
from procache_opt.pipelines import adapter_for
from procache_opt.runtime import apply
from procache_opt.runtimes import Runtime
from procache_opt.runtimes.procache import ProCacheRuntime
from procache_opt.schedule import Schedule

__all__ = ["Evaluator", "EvaluatedRun", "NonFiniteOutputError", "Scores"]


class Scores(dict[str, Score]):
    """Scores by objective name, plus ``facts``: what the run measured that is not an objective.

    ``facts["block_evaluations"]`` is :attr:`EvaluatedRun.block_evaluations` and ``facts["block_evaluations_full"]``
    what full computation runs of each (steps x blocks). ``backends.run_evaluation`` copies the facts into
    the trial's ``extra``, so every stored trial says how much of the transformer it actually ran.
    """

    def __init__(self, scores: dict[str, Score], facts: dict[str, Any]) -> None:
        super().__init__(scores)
        self.facts = facts


class NonFiniteOutputError(FloatingPointError):
    """A run produced NaN or infinite outputs (the engine records the trial as failed)."""


@dataclass
class EvaluatedRun(RunOutputs):
    """:class:`RunOutputs` plus how much of the transformer actually ran.

    Attributes:
        block_evaluations: Per pipeline call (one batch), how many times a block's self-attention
            (``"attention"``: its query projection ran) and feed-forward (``"feed_forward"``: its first layer
            ran, on all tokens or, on SELECTIVE steps, on the refreshed ones) were computed rather than reused.
            Full computation runs ``num_inference_steps * num_blocks`` of each.
        tapes: For the full-computation reference only, the transformer's outputs of each batch's pipeline call
            in call order, which :mod:`procache_opt._replay` hands back to schedules that begin the same way.
    """

    block_evaluations: dict[str, int] = field(default_factory=dict)
    tapes: list[list[Any]] = field(default_factory=list, repr=False)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Named tensors and string metadata, as the reference cache stores them (timings are not kept)."""
        tensors = {"latents": self.latents, **{f"feature.{k}": v for k, v in self.features.items()}}
        if self.images is not None:
            tensors["images"] = self.images
        return tensors, {"block_evaluations": json.dumps(self.block_evaluations)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> EvaluatedRun:
        features = {k.removeprefix("feature."): v for k, v in tensors.items() if k.startswith("feature.")}
        return cls(latents=tensors["latents"], images=tensors.get("images"), features=features,
                   block_evaluations=json.loads(metadata.get("block_evaluations", "{}")))


class Evaluator:
    """Scores schedules on one calibration set against the pipeline's full computation.

    Args:
        pipe: A supported diffusers pipeline (see :mod:`procache_opt.pipelines`).
        calibration: The (seed, condition) pairs every run uses.
        num_inference_steps: Denoising steps of every run (the schedules' length).
        guidance_scale: Classifier-free guidance scale.
        objectives: Objective instances or registered names (``procache_opt.objectives.available()``).
        costs: Per-step MACs for ``RunOutputs.flops_ratio``; by default counted by the runtime from the
            transformer's config with the default :class:`~procache_opt.schedule.SelectiveConfig`.
        batch_size: Samples per pipeline call (``None``: all at once). Results do not depend on it beyond
            floating-point rounding: every sample has its own seeded generator.
        cache_dir: Folder for the on-disk reference cache (``None``: memory only).
        timing_repeats: Timed pipeline calls per run when an objective needs ``"timing"``.
        timing_samples: Samples per timed call (``None``: the first batch); fewer keeps timing cheap.
        replay: Keep the reference's transformer outputs and replay them for the leading FULL steps of a
            schedule instead of recomputing them (:mod:`procache_opt._replay`; the results are identical), for
            runtimes that allow it (``Runtime.replays_full_steps``).
        runtime: What executes the schedules (:mod:`procache_opt.runtimes`; default: this project's hooks). The
            full-computation reference always runs through this project's runtime.
    """

    def __init__(self, pipe: Any, calibration: Calibration, num_inference_steps: int = 50,
                 guidance_scale: float = 4.0, objectives: Iterable[Objective | str] = ("feature_error",),
                 costs: StepCosts | None = None, batch_size: int | None = None,
                 cache_dir: str | Path | None = None, timing_repeats: int = 3,
                 timing_samples: int | None = None, replay: bool = True, runtime: Runtime | None = None) -> None:
        if num_inference_steps < 1 or (batch_size is not None and batch_size < 1) or timing_repeats < 1:
            raise ValueError(
                f"need num_inference_steps >= 1, batch_size >= 1 (or None) and timing_repeats >= 1; got "
                f"{num_inference_steps}, {batch_size}, {timing_repeats}"
            )
        self.pipe = pipe
        if hasattr(pipe, "set_progress_bar_config"):
            # An evaluator runs the pipeline hundreds of times; a bar per call would bury the search's own.
            pipe.set_progress_bar_config(disable=True)
        self.calibration = calibration
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.timing_repeats = timing_repeats
        self.timing_samples = timing_samples
        self.replay = replay
        self.runtime = runtime if runtime is not None else ProCacheRuntime()
        self._warm = False
        self.adapter = adapter_for(pipe)
        self.adapter.validate(pipe, calibration.conditions)
        self.objectives = tuple(OBJECTIVES.create(o) if isinstance(o, str) else o for o in objectives)
        names = [o.name for o in self.objectives]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"objectives need distinct names, got {names}")
        self.needs = frozenset().union(*(o.needs for o in self.objectives))
        # Objectives that need features name them in a ``features`` attribute (e.g. ``("block_3",)``).
        self.features = tuple(dict.fromkeys(
            f for o in self.objectives if "features" in o.needs for f in getattr(o, "features", ())
        ))
        check_feature_names(pipe.transformer, self.features)
        self.costs = costs or self.runtime.step_costs(pipe.transformer, num_inference_steps,
                                                      guidance=guidance_scale > 1)
        self._cache = None if cache_dir is None else ReferenceCache(
            cache_dir, pipe, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            calibration=calibration,
        )
        self._reference: EvaluatedRun | None = None

    # -- public API ---------------------------------------------------------------------------------------
    def reference(self) -> EvaluatedRun:
        """The full computation on the calibration set (computed once, then reused)."""
        if self._reference is None:
            self._reference = self._load_reference()
        if self._reference is None:
            with apply(self.pipe, Schedule.full(self.num_inference_steps)):
                self._reference = self._generate("the full-computation reference", record=self.replay)
            if self._cache is not None:
                self._cache.save(*self._reference.to_tensors())
        if "timing" in self.needs and not self._reference.seconds:
            self._reference.seconds = self._time()
        return self._reference

    def run(self, schedule: Schedule) -> EvaluatedRun:
        """Run the calibration set with ``schedule`` applied by :attr:`runtime`; collect what the objectives need."""
        schedule.check_compatible(num_steps=self.num_inference_steps)
        run = self.run_with(self.runtime, schedule)
        run.flops_ratio = self.costs.ratio(schedule)
        return run

    def run_with(self, runtime: Runtime, schedule: Schedule | None = None) -> EvaluatedRun:
        """Run the calibration set under ``runtime`` (following ``schedule``, or deciding itself with ``None``)."""
        runtime.check(schedule)
        replay = schedule if runtime.replays_full_steps else None
        with runtime.apply(self.pipe, schedule):
            run = self._generate(f"schedule {schedule}" if schedule is not None else runtime.label, replay_for=replay)
            if "timing" in self.needs:
                run.seconds = self._time()
        return run

    def measured_costs(self, log: Any = None) -> StepCosts:
        """Each action's seconds per step on this pipeline's device, for the timing batch (cached per device and
        model, see :mod:`procache_opt.measured_costs`); :attr:`costs` stays the counted FLOPs."""
        from procache_opt.measured_costs import measure_step_costs

        first = next(self.calibration.batches(self.timing_samples or self.batch_size))
        return measure_step_costs(self.pipe, self.costs, self._call_kwargs(first), log=log)

    def score(self, run: RunOutputs) -> dict[str, Score]:
        """Each objective's per-sample values for ``run`` against the reference, by objective name."""
        reference = self.reference()
        return {o.name: o.score(run, reference) for o in self.objectives}

    def evaluate(self, schedule: Schedule) -> Scores:
        """``score(run(schedule))`` with the run's block evaluations: what the engine calls for every trial."""
        run = self.run(schedule)
        full = self.num_inference_steps * len(self.pipe.transformer.transformer_blocks)
        return Scores(self.score(run), {"block_evaluations": dict(run.block_evaluations),
                                        "block_evaluations_full": full})

    # -- internals ----------------------------------------------------------------------------------------
    def _load_reference(self) -> EvaluatedRun | None:
        """The cached reference, if one is stored with everything the objectives need."""
        stored = self._cache.load() if self._cache is not None else None
        if stored is None:
            return None
        reference = EvaluatedRun.from_tensors(*stored)
        if ("images" in self.needs and reference.images is None) or set(self.features) - set(reference.features):
            return None  # stored for other objectives; recompute (and overwrite) with what is needed now
        return reference

    def _call_kwargs(self, batch: Calibration) -> dict[str, Any]:
        return {
            **self.adapter.call_kwargs(self.pipe, batch.conditions),
            # CPU generators: the same noise on every device, one stream per sample whatever the batch.
            "generator": [torch.Generator().manual_seed(seed) for seed in batch.seeds],
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "output_type": "pt",
        }

    def _generate(self, what: str, *, record: bool = False, replay_for: Schedule | None = None) -> EvaluatedRun:
        """Run every batch; ``record`` keeps the tapes (reference), ``replay_for`` replays the schedule's prefix.

        Replay uses the reference only if it is already computed: generating it here would run it hooked.
        """
        decode = "images" in self.needs
        latents, images, calls, tapes = [], [], Counter(), []
        features: dict[str, list[torch.Tensor]] = {name: [] for name in self.features}
        batches = list(self.calibration.batches(self.batch_size))
        reference = self._reference if replay_for is not None else None
        for index, batch in enumerate(batches):
            tape = reference.tapes[index] if reference is not None and reference.tapes else []
            replayed = replayable_calls(replay_for, len(tape)) if tape else 0
            with ExitStack() as stack:
                captured = stack.enter_context(capture(self.pipe, len(batch), decode=decode, features=self.features))
                if record:
                    tapes.append(stack.enter_context(recording(self.pipe.transformer)))
                if replayed:
                    stack.enter_context(replaying(self.pipe.transformer, tape, replayed))
                output = self.pipe(**self._call_kwargs(batch))
            latents.append(captured.latents.float())
            if decode:
                images.append(output.images.float())
            for name, tensor in captured.features.items():
                features[name].append(tensor.float())
            calls.update(captured.branch_calls)
            if replayed:  # a replayed call is a FULL step of the reference: count its blocks as computed
                per_call = {name: count // len(tape) for name, count in reference.block_evaluations.items()}
                calls.update({name: count * replayed for name, count in per_call.items()})
        run = EvaluatedRun(
            latents=torch.cat(latents),
            images=torch.cat(images) if decode else None,
            features={name: torch.cat(parts) for name, parts in features.items()},
            block_evaluations={name: count // len(batches) for name, count in calls.items()},
            tapes=tapes,
        )
        self._check_finite(run, what)
        return run

    def _check_finite(self, run: RunOutputs, what: str) -> None:
        tensors = {"latents": run.latents, "images": run.images, **run.features}
        for name, tensor in tensors.items():
            if tensor is None:
                continue
            bad = (~torch.isfinite(tensor.flatten(1)).all(dim=1)).nonzero().flatten().tolist()
            if bad:
                seeds = [self.calibration.seeds[i] for i in bad]
                raise NonFiniteOutputError(
                    f"{what} produced NaN or infinite {name} for samples {bad} (seeds {seeds}); reusing "
                    "features this aggressively diverges on this model, or the model itself overflows "
                    "(try float32)"
                )

    def _time(self) -> list[float]:
        """Seconds of ``timing_repeats`` calls on the first batch (``timing_samples`` samples if set), as a user
        runs it (decoding included).

        The evaluator's first timing starts with one untimed warm-up call: the first call at a shape pays for
        memory allocation, kernel selection and cache set-up, which is not the steady-state speed a schedule
        is chosen for. Later timings run the same shapes and skip it.
        """
        first = next(self.calibration.batches(self.timing_samples or self.batch_size))
        warmup, self._warm = (0 if self._warm else 1), True
        seconds = [timed_call(self.pipe, self._call_kwargs(first)) for _ in range(warmup + self.timing_repeats)]
        return seconds[warmup:]

"""Evaluate schedules on long-lived Ray actors: one per GPU (or CPU slot), each loading the model once.

Each worker receives the :class:`~procache_opt.spec.EvaluationSpec` once, builds its evaluator (loads the
pipeline, computes the full-computation reference) and then evaluates many schedules; only schedules and
plain-data outcomes cross the wire per trial. The engine (:class:`~procache_opt.engine.SearchLoop`) keeps
``capacity`` evaluations in flight and stores each result as it arrives. A worker process that dies
mid-evaluation is replaced here and its evaluation retried on the fresh worker up to ``max_retries`` times,
then recorded as failed: a crash costs at most that one evaluation, and the search goes on.

Example:
    >>> from procache_opt.backends.ray_backend import RayBackend
    >>> backend = RayBackend(spec, num_workers=2, resources_per_worker={"GPU": 1})  # doctest: +SKIP
    >>> procache_opt.search("dit-digits", backend=backend)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from procache_opt._optional import require
from procache_opt.backends.base import Backend, EvalOutcome, run_evaluation
from procache_opt.objective import Score
from procache_opt.schedule import Schedule

ray = require("ray", "ray", "backend='ray'")
RayActorError, RayError, RayTaskError = (ray.exceptions.RayActorError, ray.exceptions.RayError,
                                         ray.exceptions.RayTaskError)

__all__ = ["RayBackend", "EvaluatorFactory", "connect"]

logger = logging.getLogger("procache_opt.ray")


class _Evaluator(Protocol):
    def evaluate(self, schedule: Schedule) -> Mapping[str, Score]: ...


class EvaluatorFactory(Protocol):
    """What a worker needs: :class:`~procache_opt.spec.EvaluationSpec`, or any picklable object like it."""

    def build_evaluator(self) -> _Evaluator: ...


def connect(address: str | None = None, **ray_init_kwargs: Any) -> bool:
    """Join (``address``) or start a Ray instance unless this process is already connected.

    Returns whether this call initialised Ray, so that only the caller that started it shuts it down (a sweep
    connects once and lets every search's backend reuse the connection).
    """
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray is already initialised in this process; ignoring address=%r", address)
        return False
    ray.init(address=address, **ray_init_kwargs)
    return True


@ray.remote(max_restarts=0)
class _Worker:
    """One evaluator in its own process; built once, then asked to evaluate schedule after schedule."""

    def __init__(self, spec: EvaluatorFactory, slot: int, num_threads: int) -> None:
        self._evaluator = spec.build_evaluator()
        self._slot = slot
        # Without this, torch in every worker starts one thread per core of the node, and workers sharing a
        # node slow each other down; set after the build so that specs which never touch torch don't import it.
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(num_threads)
        # An Evaluator computes its full-computation reference lazily; do it now, so that an error there (out of
        # memory at full computation) stops the backend at start-up and the first trial's duration is its own.
        reference = getattr(self._evaluator, "reference", None)
        if callable(reference):
            reference()

    def ready(self) -> int:
        return self._slot

    def evaluate(self, trial_id: int, schedule: Schedule, **extra: Any) -> EvalOutcome:
        return run_evaluation(self._evaluator.evaluate, trial_id, schedule, worker=self._slot, **extra)


@dataclass(frozen=True)
class _Task:
    """One evaluation to run: which trial, which schedule, which attempt (1 = the first)."""

    trial_id: int
    schedule: Schedule
    attempt: int = 1


class RayBackend(Backend):
    """Evaluate on ``num_workers`` Ray actors; as many evaluations run at once as there are workers.

    Args:
        spec: Picklable recipe for an evaluator (an :class:`~procache_opt.spec.EvaluationSpec`: zoo name,
            pipeline folder or picklable factory), shipped once per worker, never per trial.
        num_workers: Actors to start (default: as many as the cluster's resources fit).
        resources_per_worker: Ray resources each actor reserves, e.g. ``{"GPU": 1}`` (the default when the
            cluster has GPUs) or ``{"CPU": 1}`` (otherwise). Also sets torch's threads per worker (``CPU``,
            at least 1).
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``...) when this process is not yet
            connected; ``None`` starts a local instance.
        max_retries: How often an evaluation whose worker process died is retried on a fresh worker before
            it is recorded as failed. Exceptions inside an evaluation are never retried: they are
            deterministic (NaN, out of memory for that schedule) and recorded with the schedule.
        ray_init_kwargs: Passed to ``ray.init`` when this backend starts or joins Ray.

    Raises:
        ValueError: The cluster cannot fit one worker, or arguments are out of range.
        ray.exceptions.RayActorError: A worker failed to build its evaluator (the message has its traceback).
    """

    def __init__(
        self,
        spec: EvaluatorFactory,
        num_workers: int | None = None,
        resources_per_worker: Mapping[str, float] | None = None,
        address: str | None = None,
        max_retries: int = 1,
        ray_init_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (or None: as many as fit), got {num_workers}")
        self._max_retries = max_retries
        self._pending: deque[_Task] = deque()
        self._running: dict[ray.ObjectRef, tuple[_Task, int]] = {}
        self._workers: list[Any] = []
        self._owns_ray = connect(address, **dict(ray_init_kwargs or {}))
        try:
            self._resources = dict(resources_per_worker or _default_resources())
            fit = _workers_that_fit(self._resources)
            if num_workers is not None and num_workers > fit:
                # Waiting for workers that cannot be placed would hang the search before its first trial.
                raise ValueError(f"num_workers={num_workers}, but the Ray cluster ({_totals(self._resources)}) fits "
                                 f"{fit} with {self._resources} each; lower num_workers or add nodes first")
            self._spec_ref = ray.put(spec)  # one copy in the object store, however many workers read it
            self._workers = [self._start_worker(slot) for slot in range(num_workers or fit)]
            ray.get([w.ready.remote() for w in self._workers])  # surface model-loading errors now, not per trial
        except BaseException:
            self.close()
            raise
        logger.info("Ray backend: %d workers, %s each", len(self._workers), self._resources)

    @property
    def capacity(self) -> int:
        return len(self._workers)

    def submit(self, trial_id: int, schedule: Schedule) -> None:
        self._pending.append(_Task(trial_id, schedule))
        self._dispatch()

    def wait(self) -> list[EvalOutcome]:
        outcomes: list[EvalOutcome] = []
        while self._running and not outcomes:
            refs = list(self._running)
            done, rest = ray.wait(refs, num_returns=1)
            if rest:  # collect everything else that has finished too, without waiting
                done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in done:
                outcome = self._collect(ref)
                if outcome is not None:
                    outcomes.append(outcome)
            self._dispatch()
        return outcomes

    def close(self) -> None:
        for worker in self._workers:
            ray.kill(worker, no_restart=True)
        self._workers = []
        self._running.clear()
        self._pending.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # -- internals -----------------------------------------------------------------------------------------
    def _start_worker(self, slot: int) -> Any:
        r = self._resources
        custom = {k: v for k, v in r.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = {"num_cpus": r.get("CPU", 0), "num_gpus": r.get("GPU", 0), "resources": custom}
        if "memory" in r:
            options["memory"] = r["memory"]
        threads = max(1, int(r.get("CPU", 1)))
        return _Worker.options(**options).remote(self._spec_ref, slot, threads)

    def _dispatch(self) -> None:
        """Start pending evaluations on idle worker slots."""
        busy = {slot for _, slot in self._running.values()}
        for slot in (s for s in range(len(self._workers)) if s not in busy):
            if not self._pending:
                return
            task = self._pending.popleft()
            extra = {"attempt": task.attempt} if task.attempt > 1 else {}
            ref = self._workers[slot].evaluate.remote(task.trial_id, task.schedule, **extra)
            self._running[ref] = (task, slot)

    def _collect(self, ref: ray.ObjectRef) -> EvalOutcome | None:
        """The outcome behind a finished ref, or ``None`` when its worker died and the evaluation is retried."""
        task, slot = self._running.pop(ref)
        try:
            return ray.get(ref)
        except RayTaskError as exc:  # not an Exception inside evaluate (run_evaluation records those): e.g. exit()
            return EvalOutcome(task.trial_id, task.schedule, None, f"worker error: {exc}", extra={"worker": slot})
        except RayError as exc:  # the process died (killed, out of host memory, node lost)
            if isinstance(exc, RayActorError) and exc.actor_init_failed:
                raise  # a replacement worker cannot even load the model: nothing later would succeed either
            ray.kill(self._workers[slot], no_restart=True)
            self._workers[slot] = self._start_worker(slot)
            reason = str(exc).strip().splitlines()[0]
            if task.attempt <= self._max_retries:
                logger.warning("worker %d died during trial %d (%s); retrying on a fresh worker",
                               slot, task.trial_id, reason)
                self._pending.appendleft(_Task(task.trial_id, task.schedule, task.attempt + 1))
                return None
            return EvalOutcome(task.trial_id, task.schedule, None,
                               f"worker died while evaluating this schedule (attempt {task.attempt} of "
                               f"{self._max_retries + 1}): {reason}",
                               extra={"worker": slot, "attempt": task.attempt})


def _default_resources() -> dict[str, float]:
    return {"GPU": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"CPU": 1}


def _totals(resources: Mapping[str, float]) -> dict[str, float]:
    """The whole cluster's amount of each resource a worker asks for (all nodes, busy or not)."""
    total = ray.cluster_resources()
    return {k: total.get(k, 0.0) for k in resources}


def _workers_that_fit(resources: Mapping[str, float]) -> int:
    """How many workers the whole cluster can host at once."""
    total = _totals(resources)
    fits = [math.floor(total[k] / v) for k, v in resources.items() if v > 0]
    count = min(fits) if fits else 1
    if count < 1:
        raise ValueError(f"the Ray cluster ({total}) cannot host one worker with resources {dict(resources)}")
    return count

"""Costs of each action measured on the user's device: budgets in time instead of counted FLOPs.

Counted FLOPs and wall clock disagree by device: on DiT-S/2 a REUSE step is 0.55% of a FULL one counted, 0.9% on
this project's CPU with the fast path (5.5% without it), something else again on a GPU where small kernels are
launch-bound. A budget of 0.5 in counted FLOPs is therefore not half the time. :func:`measure_step_costs` times
the transformer calls of a few probe generations through the runtime and returns a :class:`~procache_opt.costs.
StepCosts` in seconds, which the schedule space and strategies use exactly like counted costs
(``search(..., cost="measured")``): then a budget of 0.5 means half the denoising time.

The probes follow fixed patterns: ``[1, 0]`` repeated (FULL and REUSE calls), ``[1, 2]`` repeated (FULL calls
that score tokens and SELECTIVE calls) and, for per-depth costs, ``[1, 3, 4]`` (DEEP and SHALLOW calls). FULL,
REUSE, DEEP and SHALLOW cost the median of their calls at every step. A SELECTIVE step's cost grows with the
tokens it refreshes, which change from step to step, so it is the REUSE time plus its counted extra MACs at the
measured seconds per MAC (the median over the probe's SELECTIVE calls), plus the scoring a FULL step does for
it (scored minus plain FULL calls; a run of several SELECTIVE steps shares one scoring, so this errs high).

Results are cached in memory and on disk (``$PROCACHE_OPT_CACHE`` or ``~/.cache/procache-opt``, one JSON file
per model config, device, dtype, batch and step count), written atomically; delete a file to measure again.
The cache does not know what else ran during the measurement: measure on an otherwise idle device (on this
project's shared CPU a time budget of 0.3 measured under load gave a schedule that ran at 0.34 of the full
computation's time once the machine was idle, ``benchmarks/results/bundled_speed.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from procache_opt.costs import StepCosts
from procache_opt.fingerprint import model_signature
from procache_opt.runtime import apply
from procache_opt.schedule import Action, Schedule

__all__ = ["measure_step_costs", "cost_cache_dir"]

_MEMORY: dict[str, StepCosts] = {}


def cost_cache_dir() -> Path:
    """Where measured costs are kept: ``$PROCACHE_OPT_CACHE``, else ``$XDG_CACHE_HOME/procache-opt``."""
    if os.environ.get("PROCACHE_OPT_CACHE"):
        return Path(os.environ["PROCACHE_OPT_CACHE"]) / "step-costs"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "procache-opt" / "step-costs"


def measure_step_costs(pipe: Any, counted: StepCosts, call_kwargs: dict[str, Any], *, cache: bool = True,
                       log: Callable[[str], None] | None = None) -> StepCosts:
    """Seconds of one denoising step for each action at each step, measured on ``pipe``'s device.

    Args:
        pipe: The pipeline (a diffusers DiT or PixArt pipeline; its transformer is timed).
        counted: Counted costs of the same model and step count (for the SELECTIVE steps' shape over time, and
            whether DEEP/SHALLOW are needed).
        call_kwargs: One generation's arguments (its batch, step count and guidance are what is measured).
        cache: Read and write the on-disk cache (see the module docstring).
        log: Called once with a line saying what was measured or where it was read from.

    Returns:
        :class:`StepCosts` in seconds per step (every transformer call of the step together).
    """
    key = _cache_key(pipe, counted, call_kwargs)
    path = cost_cache_dir() / f"{key}.json"
    if key in _MEMORY:
        return _MEMORY[key]
    if cache and path.is_file():
        costs = _read(path)
        if costs is not None and costs.num_steps == counted.num_steps:
            (log or (lambda _: None))(f"measured step costs read from {path}")
            _MEMORY[key] = costs
            return costs
    start = time.perf_counter()
    costs = _measure(pipe, counted, call_kwargs)
    _MEMORY[key] = costs
    if cache:
        _write(path, costs)
    (log or (lambda _: None))(
        f"measured step costs in {time.perf_counter() - start:.1f} s: FULL {costs.full[0] * 1e3:.1f} ms, REUSE "
        f"{costs.reuse[0] * 1e3:.2f} ms ({costs.reuse[0] / costs.full[0]:.1%} of FULL) per step")
    return costs


def _measure(pipe: Any, counted: StepCosts, call_kwargs: dict[str, Any]) -> StepCosts:
    steps = counted.num_steps
    probes = [[1, 0], [1, 2]] + ([[1, 3, 4]] if counted.deep is not None else [])
    seconds: dict[str, list[float]] = defaultdict(list)
    selective_rate: list[float] = []
    for cycle in probes:
        schedule = Schedule.from_pattern((cycle * steps)[:steps], depth_split=counted.depth_split or 0.5)
        per_step = _time_steps(pipe, schedule, call_kwargs)
        for step, value in enumerate(per_step):
            action = schedule.actions[step]
            scored = action == Action.FULL and cycle == [1, 2]
            seconds["FULL scored" if scored else action.name].append(value)
            if action == Action.SELECTIVE:
                extra = counted.selective[step] - counted.reuse[step]
                if extra > 0:
                    selective_rate.append((value, extra))
    full, reuse = statistics.median(seconds["FULL"]), statistics.median(seconds["REUSE"])
    scoring = max(0.0, statistics.median(seconds["FULL scored"]) - full)
    per_mac = statistics.median((max(0.0, value - reuse)) / extra for value, extra in selective_rate) \
        if selective_rate else 0.0
    selective = tuple(reuse + scoring + per_mac * max(0.0, counted.selective[s] - counted.reuse[s])
                      for s in range(steps))
    deep = shallow = None
    if counted.deep is not None:
        deep = (statistics.median(seconds["DEEP"]),) * steps
        shallow = (statistics.median(seconds["SHALLOW"]),) * steps
    return StepCosts(full=(full,) * steps, reuse=(reuse,) * steps, selective=selective, deep=deep,
                     shallow=shallow, depth_split=counted.depth_split)


def _time_steps(pipe: Any, schedule: Schedule, call_kwargs: dict[str, Any]) -> list[float]:
    """Seconds of every step of one generation under ``schedule`` (after one untimed warm-up generation)."""
    transformer = pipe.transformer
    cuda = transformer.device.type == "cuda"
    marks: list[Any] = []

    def mark(*_: Any) -> None:
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append(event)
        else:
            marks.append(time.perf_counter())

    with torch.no_grad(), apply(pipe, schedule):
        pipe(**call_kwargs)
        handles = [transformer.register_forward_pre_hook(mark), transformer.register_forward_hook(mark)]
        try:
            pipe(**call_kwargs)
        finally:
            for handle in handles:
                handle.remove()
    if cuda:
        torch.cuda.synchronize()
        times = [0.0] + [marks[0].elapsed_time(m) / 1e3 for m in marks[1:]]
    else:
        times = [m - marks[0] for m in marks]
    starts, ends = times[::2], times[1::2]
    per_step = len(starts) // schedule.num_steps
    firsts, lasts = starts[::per_step], ends[per_step - 1::per_step]
    # The pipeline's own work between steps (scheduler update, guidance) is paid by every action alike.
    gaps = [b - a for a, b in zip(lasts, firsts[1:], strict=False)]
    between = statistics.median(gaps) if gaps else 0.0
    return [sum(e - s for s, e in zip(starts[i * per_step:(i + 1) * per_step], ends[i * per_step:(i + 1) * per_step],
                                      strict=True)) + between for i in range(schedule.num_steps)]


def _cache_key(pipe: Any, counted: StepCosts, call_kwargs: dict[str, Any]) -> str:
    transformer = pipe.transformer
    device = transformer.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    batch = {key: (tuple(value.shape) if isinstance(value, torch.Tensor) else value)
             for key, value in call_kwargs.items() if key not in ("generator", "callback_on_step_end")}
    facts = {"model": model_signature(transformer), "device": device_name, "dtype": str(transformer.dtype),
             "threads": torch.get_num_threads(), "torch": torch.__version__, "call": repr(sorted(batch.items())),
             "steps": counted.num_steps, "selective": counted.selective, "depth_split": counted.depth_split}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _read(path: Path) -> StepCosts | None:
    try:
        data = json.loads(path.read_text())
        return StepCosts(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})
    except (OSError, ValueError, TypeError):
        return None  # unreadable or from another version: measure again


def _write(path: Path, costs: StepCosts) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(costs)))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only home: the costs stay in memory for this process

"""What a search returns: every trial, the best schedule, the Pareto front, and how it held up."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from procache_opt._io import CorruptFileError, atomic_write_json, read_json
from procache_opt._optional import require
from procache_opt.schedule import Schedule
from procache_opt.strategy import TrialResult

__all__ = ["HELDOUT_SCHEDULES", "NoCompletedTrialError", "SearchResult", "block_share", "pareto_front"]

#: Schedules a search scores on held-out samples, as keys of ``SearchResult.heldout``: the best one, FORA as
#: published, and (when the search forecasts reused outputs) the same FORA steps with the search's forecast.
HELDOUT_SCHEDULES = ("best", "fora_baseline", "uniform_baseline")


class NoCompletedTrialError(RuntimeError):
    """Every trial failed or exceeded the budget: there is no best schedule (the trials say why)."""


def pareto_front(trials: list[TrialResult], quality: str = "value") -> list[TrialResult]:
    """Completed trials (probes left out) not dominated in (FLOPs ratio, loss), sorted by FLOPs ratio.

    ``quality`` is ``"value"`` (the weighted loss) or an objective name in ``TrialResult.values`` (to
    minimise). One search thereby serves every budget: pick the front's member under your budget.
    """
    ok = [t for t in trials if t.candidate and t.flops_ratio is not None]
    loss = (lambda t: t.value) if quality == "value" else (lambda t: t.values[quality])
    front: list[TrialResult] = []
    for t in sorted(ok, key=lambda t: (t.flops_ratio, loss(t))):
        if not front or loss(t) < loss(front[-1]):
            front.append(t)
    return front


def block_share(trial: TrialResult) -> dict[str, float]:
    """Self-attention and feed-forward evaluations of a trial as shares of full computation ({} if unknown).

    A SELECTIVE step's feed-forward on a subset of tokens counts as one evaluation of that block.
    """
    counts, full = trial.extra.get("block_evaluations"), trial.extra.get("block_evaluations_full")
    if not counts or not full:
        return {}
    return {kind: count / full for kind, count in sorted(counts.items())}


@dataclass
class SearchResult:
    """The outcome of :func:`procache_opt.search`.

    Attributes:
        trials: Every evaluated schedule with its scores, FLOPs ratio, time and status.
        config: The search's settings (what ``storage`` checks on resume).
        summary_lines: Human-readable facts gathered on the way (space size, probe, held-out check).
        heldout: Scores on the held-out calibration set of the schedules in :data:`HELDOUT_SCHEDULES` (each
            with its pattern and FLOPs ratio), plus what the search measured to set itself up (``"probe"``:
            the interval-order probe, ``"forecast"``: the forecast-order choice).
        seconds: Wall-clock seconds of each phase of the search (``"setup"``: model, costs, evaluator and the
            full-computation reference;
            ``"probe"``, ``"forecast"``: the choices made before searching; ``"trials"``; ``"heldout"``).
        heldout_images: The held-out check's decoded images of the full computation (``"full"``), the best
            schedule (``"best"``) and FORA (``"fora_baseline"``), in memory only (never saved):
            ``before_after.png`` is drawn from them.
        chosen_trial: The trial returned as best instead of the lowest loss: the FORA start point, when the
            searched best was worse than it on the held-out samples (``None``: the lowest loss). Saved, so a
            loaded result and ``apply --schedule`` return the same schedule; the trials themselves are unchanged.
    """

    trials: list[TrialResult]
    config: dict[str, Any] = field(default_factory=dict)
    summary_lines: list[str] = field(default_factory=list)
    heldout: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    heldout_images: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    chosen_trial: int | None = None

    @property
    def completed(self) -> list[TrialResult]:
        return [t for t in self.trials if t.ok]

    @property
    def best_trial(self) -> TrialResult:
        """The completed trial with the lowest loss within the budget (measurement probes never count), or the
        :attr:`chosen_trial` when the held-out check chose the FORA start point instead."""
        if self.chosen_trial is not None:
            return next(t for t in self.trials if t.trial_id == self.chosen_trial)
        budget = self.config.get("budget_flops")
        feasible = [t for t in self.completed
                    if not t.probe and (budget is None or (t.flops_ratio or 0.0) <= budget + 1e-12)]
        if not feasible:
            failed = [t.error for t in self.trials if not t.ok][:3]
            raise NoCompletedTrialError(f"no trial completed within the budget ({len(self.trials)} trials); first "
                                        f"errors: {failed}")
        return min(feasible, key=lambda t: (t.value, t.trial_id))

    @property
    def best(self) -> Schedule:
        """The best schedule within the budget, with its scores and the runtime it was searched for in ``metadata``
        and the searched model's class and config fingerprint (so applying it to another model warns)."""
        t = self.best_trial
        model = self.config.get("model")
        model = model if isinstance(model, dict) else {}
        metadata = {"trial_id": t.trial_id, "value": t.value, "values": t.values, "flops_ratio": t.flops_ratio,
                    "runtime": {"name": self.runtime_name, "options": dict(self.config.get("runtime_options") or {})}}
        return replace(t.schedule, metadata=metadata).with_model(model.get("class"), model.get("fingerprint"))

    @property
    def runtime_name(self) -> str:
        """The runtime the search ran its candidates through (results stored before runtimes existed: the default)."""
        from procache_opt.runtimes import DEFAULT_RUNTIME

        return str(self.config.get("runtime") or DEFAULT_RUNTIME)

    @property
    def pareto(self) -> list[TrialResult]:
        return pareto_front(self.trials)

    def apply(self, pipe: Any) -> Any:
        """Apply the best schedule to ``pipe`` through the runtime it was searched for; returns the handle (a
        context manager; ``handle.summary()`` says what the runtime did)."""
        from procache_opt.runtimes import create_runtime

        runtime = create_runtime(self.runtime_name, **dict(self.config.get("runtime_options") or {}))
        return runtime.apply(pipe, self.best)

    def to_records(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.trials:
            rows.append({
                "trial_id": t.trial_id,
                "pattern": str(t.schedule),
                "status": t.status.value,
                "value": t.value,
                "flops_ratio": t.flops_ratio,
                "num_full": t.schedule.num_full,
                "duration_s": t.duration_s,
                "error": t.error,
                **{f"values.{k}": v for k, v in t.values.items()},
                **{f"block_share.{k}": v for k, v in block_share(t).items()},
            })
        return rows

    def to_dataframe(self) -> Any:
        """One row per trial (needs pandas: ``pip install pandas``)."""
        pd = require("pandas", "ray", "SearchResult.to_dataframe")

        return pd.DataFrame.from_records(self.to_records())

    def summary(self) -> str:
        best = self.best_trial
        probes = sum(t.probe for t in self.trials)
        lines = [*self.summary_lines, f"trials: {len(self.trials)} ({len(self.completed)} completed"
                 + (f"; {probes} of them measurement probes, never a result)" if probes else ")")]
        lines.append(
            f"best: trial {best.trial_id}, pattern {best.schedule}, FLOPs ratio {best.flops_ratio:.3f}, "
            f"loss {best.value:.4g}"
        )
        lines += self._runtime_lines(best)
        shares = [share for t in self.completed if (share := block_share(t))]
        if shares:
            kinds = shares[0].keys()
            mean = ", ".join(f"{k} {sum(s[k] for s in shares) / len(shares):.1%}" for k in kinds)
            of_best = block_share(best)
            lines.append(f"transformer block evaluations per trial, share of full computation: mean {mean}"
                         + (" (best: " + ", ".join(f"{k} {v:.1%}" for k, v in of_best.items()) + ")"
                            if of_best else ""))
        if self.seconds:
            lines.append(f"time: {sum(self.seconds.values()):.0f} s ("
                         + ", ".join(f"{phase} {s:.1f} s" for phase, s in self.seconds.items()) + ")")
        return "\n".join(lines)

    def _runtime_lines(self, best: TrialResult) -> list[str]:
        """What the runtime does in one generation with the best schedule, and how fast it ran on held-out samples."""
        from procache_opt.block_counts import outcome_shares
        from procache_opt.runtimes import create_runtime

        schedule = best.schedule
        kinds = Counter(a.name for a in schedule.actions)
        text = (f"best schedule per generation, as the {self.runtime_name} runtime runs it: "
                + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + " steps"
                + (" (REUSE forecast from the last two FULL steps)" if schedule.forecast_order else ""))
        full = best.extra.get("block_evaluations_full")
        if full:
            try:
                runtime = create_runtime(self.runtime_name, **dict(self.config.get("runtime_options") or {}))
                text += "; block evaluations " + outcome_shares(runtime.block_outcomes(schedule, full // len(schedule)))
            except (KeyError, TypeError, ValueError):  # a runtime plugin no longer installed: counts unknown
                pass
        lines = [text]
        speed = {key: 1 / entry["scores"]["latency"]["mean"] for key, entry in self.heldout.items()
                 if key in HELDOUT_SCHEDULES and entry.get("scores", {}).get("latency", {}).get("mean")}
        if "best" in speed:
            others = "".join(f", {label} {speed[key]:.2f}x" for key, label in
                             (("fora_baseline", "FORA"), ("uniform_baseline", "FORA+forecast")) if key in speed)
            lines.append(f"measured on held-out samples (decoding included): best {speed['best']:.2f}x faster than "
                         f"full computation{others}")
        return lines

    # -- persistence ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "summary_lines": self.summary_lines,
            "heldout": self.heldout,
            "seconds": self.seconds,
            "chosen_trial": self.chosen_trial,
            "trials": [t.to_dict() for t in self.trials],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SearchResult:
        """Read a saved result; a malformed file raises :class:`~procache_opt._io.CorruptFileError` naming it."""
        data = read_json(path, "result file")
        try:
            return cls(
                trials=[TrialResult.from_dict(d) for d in data["trials"]],
                config=dict(data.get("config", {})),
                summary_lines=list(data.get("summary_lines", [])),
                heldout=dict(data.get("heldout", {})),
                seconds=dict(data.get("seconds", {})),
                chosen_trial=data.get("chosen_trial"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptFileError(f"result file {path} is corrupt ({type(exc).__name__}: {exc})") from None

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Convergence (best loss so far by trial) and the best schedule, as one matplotlib figure."""
        from procache_opt.plots import plot_search

        return plot_search(self, path)

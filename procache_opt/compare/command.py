"""``procache-opt compare`` and ``benchmarks/compare_report.py``: one set of arguments, one code path.

Example (what the CLI's sub-command does)::

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run(parser.parse_args(["--budgets", "0.5", "--strategies", "tpe,random", "--trials", "10", "--seeds", "3"]))
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procache_opt.compare.result import CompareResult

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the comparison's options to ``parser`` (defaults: the CLI's; scripts may ``set_defaults``)."""
    parser.add_argument("--model", default="dit-digits", help="zoo name or pipeline folder (default: dit-digits)")
    parser.add_argument("--budgets", default="0.5,0.35", help="FLOPs budgets, comma-separated")
    parser.add_argument("--strategies", default="constrained_sampling,tpe,evolutionary,random",
                        help="strategy names, comma-separated")
    parser.add_argument("--trials", type=int, default=20, help="evaluations per search, every strategy")
    parser.add_argument("--seeds", type=int, default=5, help="searches per (budget, strategy)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="guidance scale")
    parser.add_argument("--calibration", type=int, default=8, help="samples each search is scored on")
    parser.add_argument("--heldout", type=int, default=16, help="held-out samples for every judgement")
    parser.add_argument("--timing-repeats", type=int, default=5, help="timed (full, method) pairs per speedup")
    parser.add_argument("--timing-samples", type=int, default=2, help="samples per timed generation")
    parser.add_argument("--forecast", default="auto", choices=["auto", "0", "1"],
                        help="reused outputs for every search: 0 as cached, 1 first-order forecast, auto: measure once")
    parser.add_argument("--no-baselines", action="store_true", help="compare strategies only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="runs/compare", help="results folder; rerun to resume")
    parser.add_argument("--report", default=None, help="Markdown report (default: OUT/report.md)")
    parser.add_argument("--assets", default=None, help="tables and figures (default: OUT/report/)")
    parser.add_argument("--fresh", action="store_true",
                        help="regenerate from scratch: remove what an earlier comparison wrote in OUT (nothing else)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from OUT")
    parser.add_argument("--note", action="append", default=[], help="a caveat to add to the report")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace, command: str = "procache-opt compare") -> Path:
    """Run (or resume) the comparison ``args`` describe and write its report; returns the report's path.

    ``command`` is how the report shows the invocation that regenerates it (with ``args`` as given).
    """
    from procache_opt._lock import hold
    from procache_opt.compare.plan import CompareConfig, validate
    from procache_opt.search_config import ConfigError

    out = Path(args.out)
    settings = _settings(args)
    if not args.report_only:  # every setting is checked before anything is removed, loaded or written
        try:
            validate(CompareConfig(model=args.model, **settings), None)
        except ConfigError as exc:
            raise ConfigError(_FLAGS.get(exc.field, exc.field), exc.message) from None
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    with hold(out, "--out"):
        if args.fresh:
            remove_outputs(out)
        return _run(args, command, out, settings)


#: The search settings a comparison's flags set, so an error names the flag.
_FLAGS = {"model": "--model", "budget_flops": "--budgets", "strategy": "--strategies", "n_trials": "--trials",
          "num_inference_steps": "--steps", "guidance_scale": "--guidance", "calibration": "--calibration",
          "forecast": "--forecast"}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~procache_opt.compare.result.CompareConfig` fields the flags set."""
    try:
        budgets = tuple(float(b) for b in args.budgets.split(","))
    except ValueError:
        raise ValueError(f"--budgets {args.budgets!r}: expected comma-separated fractions, e.g. 0.5,0.35") from None
    return {"budgets": budgets, "strategies": tuple(args.strategies.split(",")), "n_trials": args.trials,
            "seeds": args.seeds, "num_inference_steps": args.steps, "guidance_scale": args.guidance,
            "calibration": args.calibration, "heldout": args.heldout, "timing_repeats": args.timing_repeats,
            "timing_samples": args.timing_samples, "baselines": not args.no_baselines,
            "forecast": args.forecast if args.forecast == "auto" else int(args.forecast)}


def remove_outputs(out: Path) -> None:
    """Remove what a comparison wrote in ``out`` (:data:`~procache_opt.compare.result.WRITTEN`), and only if its
    marker file says this tool wrote there: a folder holding a user's own files loses nothing."""
    from procache_opt._lock import LOCK_NAME
    from procache_opt.compare.plan import MARKER, WRITTEN

    if not out.exists() or all(p.name == LOCK_NAME for p in out.iterdir()):
        return  # nothing to remove: a new folder holds at most the lock `run` has just taken
    if not (out / MARKER).is_file():
        raise ValueError(f"--fresh: {out} holds no {MARKER} file, so procache-opt compare did not write it; nothing "
                         "was removed. Choose another --out, or remove the folder yourself")
    for name in WRITTEN[1:] + WRITTEN[:1]:  # the marker last: an interrupted removal can be redone
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _run(args: argparse.Namespace, command: str, out: Path, settings: dict[str, Any]) -> Path:
    import torch

    from procache_opt.compare import result as stored
    from procache_opt.compare.harness import compare
    from procache_opt.compare.report import write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    elapsed_file = out / "elapsed.json"
    if not args.report_only:
        start = time.perf_counter()
        compare(args.model, out=out, progress=not args.no_progress, **settings)
        runs = _runs(elapsed_file)
        elapsed_file.write_text(json.dumps({"runs": [*runs, time.perf_counter() - start]}))
    runs = _runs(elapsed_file)
    notes = list(args.note)
    if len(runs) > 1:
        notes.append(f"The comparison ran in {len(runs)} invocations (interrupted and resumed); its time is their sum.")
    result = stored.CompareResult.load(out)
    shown = " ".join([command, "--fresh", *_flags(result, args)])  # from scratch; without --fresh it resumes
    return write_report(result, args.report or out / "report.md", args.assets or out / "report",
                        ["pip install -e .", shown], elapsed_s=sum(runs) or None, notes=notes)


def _runs(path: Path) -> list[float]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def _flags(result: CompareResult, args: argparse.Namespace) -> list[str]:
    """The flags that reproduce ``result``: its stored settings, not whatever this invocation was given."""
    c = result.config
    flags = {
        "--model": c.model, "--budgets": ",".join(f"{b:g}" for b in c.budgets),
        "--strategies": ",".join(c.strategies), "--trials": c.n_trials, "--seeds": c.seeds,
        "--steps": c.num_inference_steps, "--guidance": f"{c.guidance_scale:g}",
        "--calibration": c.calibration, "--heldout": c.heldout, "--timing-repeats": c.timing_repeats,
        "--timing-samples": c.timing_samples, "--forecast": c.forecast, "--threads": result.setup.get("threads"),
        "--out": args.out, "--report": args.report, "--assets": args.assets,
    }
    shown = [f"{flag} {shlex.quote(str(value))}" for flag, value in flags.items() if value is not None]
    return shown + ([] if c.baselines else ["--no-baselines"])

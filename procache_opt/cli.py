"""``procache-opt``: search, apply and count schedules from the command line.

    procache-opt search --model dit-digits --budget 0.5 --strategy constrained_sampling --trials 30 --out runs/x
    procache-opt apply --model dit-digits --schedule runs/x/schedule.json --labels 0,1,2 --out samples.png
    procache-opt export --to cache-dit runs/x/schedule.json
    procache-opt flops --model dit-xl-2-256 --steps 50 [--schedule runs/x/schedule.json]
    procache-opt strategies | objectives
    procache-opt sweep sweep.yaml [--address auto]
    procache-opt compare --model dit-digits --budgets 0.5,0.35 --strategies tpe,random --trials 24 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from procache_opt.plugins import UnknownPluginError
from procache_opt.search_config import SearchConfig

__all__ = ["main", "build_parser"]


class CliError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a JSON value), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (the flag and the fix), not a usage block and then the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="procache-opt", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log the search's decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a caching schedule within a FLOPs budget")
    d = SearchConfig()  # the defaults are the config's, listed once
    s.add_argument("--model", default=d.model, help="zoo name or pipeline folder (default: %(default)s)")
    s.add_argument("--budget", type=float, default=d.budget_flops,
                   help="budget as a fraction of full computation (default %(default)s)")
    s.add_argument("--cost", choices=("flops", "measured"), default=d.cost,
                   help="what the budget counts: counted FLOPs, or time measured on this device (default %(default)s)")
    s.add_argument("--strategy", default=d.strategy, help="see `procache-opt strategies` (default: %(default)s)")
    s.add_argument("--objective", default=",".join(d.objectives), help="objective name(s), comma-separated")
    s.add_argument("--trials", type=int, default=d.n_trials, help="schedules to evaluate at most (default %(default)s)")
    s.add_argument("--steps", type=int, default=d.num_inference_steps, help="denoising steps (default %(default)s)")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    s.add_argument("--samples", type=int, default=d.calibration, help="calibration samples (default %(default)s)")
    s.add_argument("--heldout", type=int, default=d.heldout,
                   help="held-out samples for the final check (0: skip; default %(default)s)")
    s.add_argument("--monotone", default="auto", choices=["auto", "decreasing", "increasing", "none"])
    s.add_argument("--no-selective", action="store_true", help="no selective computation (FORA-style reuse only)")
    s.add_argument("--per-depth", action="store_true",
                   help="per-depth space: deep blocks recompute in full where selective computation would go")
    s.add_argument("--depth-split", type=float, default=d.depth_split, help="share of blocks in the shallow group")
    s.add_argument("--forecast", default="auto", choices=["auto", "0", "1"],
                   help="reused outputs: 0 as cached (FORA, ProCache), 1 first-order forecast (TaylorSeer), auto: "
                        "try both on the FORA start point and keep the better")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--runtime", default=d.runtime,
                   help="what runs each candidate: procache (this project's hooks) or cache-dit (its static step mask; "
                        "pip install 'procache-opt[cache-dit]') (default %(default)s)")
    s.add_argument("--runtime-option", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="runtime keyword argument, e.g. --runtime-option calibrator=taylorseer")
    s.add_argument("--backend", default="local", choices=["local", "ray"])
    s.add_argument("--workers", type=int, default=None, help="Ray workers (backend ray)")
    s.add_argument("--address", default=None, help="Ray cluster address (backend ray)")
    s.add_argument("--storage", default=None, help="results folder or Optuna URL (default: OUT/trials)")
    s.add_argument("--option", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="strategy keyword argument, e.g. --option num_candidates=10")
    s.add_argument("--out", default="runs/search", help="output folder (default runs/search)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_search)

    a = sub.add_parser("apply", help="generate images with a saved schedule")
    a.add_argument("--model", default="dit-digits")
    a.add_argument("--schedule", required=True, help="schedule JSON written by `search`")
    a.add_argument("--labels", default=None,
                   help="class labels, comma-separated (DiT; default: 10 spread over the model's labels)")
    a.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt (PixArt; repeat for more; default: the model's calibration prompts)")
    a.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's own)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="samples.png")
    a.set_defaults(func=_cmd_apply)

    e = sub.add_parser("export", help="write a schedule as a cache-dit configuration file (cache_dit.load_configs, "
                                      "SGLang --cache-dit-config)")
    e.add_argument("schedule", help="schedule JSON written by `search`")
    e.add_argument("--to", required=True, choices=["cache-dit"], help="the target runtime")
    e.add_argument("--out", default=None, help="file to write (default: beside the schedule, NAME.cache-dit.yaml)")
    e.add_argument("--lossy", action="store_true",
                   help="convert what cache-dit cannot express (SELECTIVE -> cached, DEEP/SHALLOW -> computed steps, "
                        "forecast_order=1 -> TaylorSeer) instead of refusing the schedule")
    e.add_argument("--option", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="cache-dit setting, e.g. --option Fn_compute_blocks=2 --option calibrator=taylorseer "
                        "(default: the settings the schedule was searched with)")
    e.set_defaults(func=_cmd_export)

    f = sub.add_parser("flops", help="count MACs/FLOPs of a model and a schedule (no weights needed)")
    f.add_argument("--model", default="dit-digits", help="zoo name, preset (e.g. dit-xl-2-256) or folder")
    f.add_argument("--steps", type=int, default=50)
    f.add_argument("--schedule", default=None)
    f.add_argument("--no-guidance", action="store_true")
    f.set_defaults(func=_cmd_flops)

    for kind in ("strategies", "objectives"):
        p = sub.add_parser(kind, help=f"list registered {kind}")
        p.set_defaults(func=_cmd_list, kind=kind)

    c = sub.add_parser("compare", help="compare strategies and caching baselines (tables, figures, report)")
    from procache_opt.compare.command import add_arguments as add_compare_arguments

    add_compare_arguments(c)
    c.set_defaults(func=_cmd_compare)

    w = sub.add_parser("sweep", help="run a grid of searches from a YAML file (locally or on Ray)")
    w.add_argument("config", help="sweep YAML (see examples/sweep.yaml)")
    w.add_argument("--address", default=None, help="Ray address, e.g. auto")
    w.add_argument("--out", default=None, help="results folder (default: the config's `out`)")
    w.set_defaults(func=_cmd_sweep)
    return parser


#: SearchConfig fields by the flag that sets them: an error about a field names the flag the user typed.
_FLAGS = {"model": "--model", "budget_flops": "--budget", "cost": "--cost", "strategy": "--strategy",
          "strategy_options": "--option", "objectives": "--objective", "objective": "--objective",
          "n_trials": "--trials",
          "num_inference_steps": "--steps", "guidance_scale": "--guidance", "calibration": "--samples",
          "heldout": "--heldout", "monotone": "--monotone", "forecast": "--forecast", "per_depth": "--per-depth",
          "depth_split": "--depth-split", "seed": "--seed", "backend": "--backend",
          "backend_options": "--workers/--address", "multi_objective": "--strategy", "runtime": "--runtime",
          "runtime_options": "--runtime-option"}


def _search_config(args: argparse.Namespace) -> Any:
    """The :class:`~procache_opt.search_config.SearchConfig` the flags describe, validated without torch."""
    from procache_opt.search_config import ConfigError

    try:
        config = SearchConfig(
            model=args.model, budget_flops=args.budget, cost=args.cost, strategy=args.strategy,
            objectives=args.objective,
            n_trials=args.trials, num_inference_steps=args.steps, guidance_scale=args.guidance,
            calibration=args.samples, heldout=args.heldout or None, selective=not args.no_selective,
            monotone=None if args.monotone == "none" else args.monotone,
            forecast=args.forecast if args.forecast == "auto" else int(args.forecast), per_depth=args.per_depth,
            depth_split=args.depth_split, seed=args.seed, backend=args.backend, strategy_options=dict(args.option),
            runtime=args.runtime, runtime_options=dict(args.runtime_option),
            backend_options={k: v for k, v in (("num_workers", args.workers), ("address", args.address))
                             if v is not None},
        )
        config.validate()
    except ConfigError as exc:
        raise CliError(f"{_FLAGS.get(exc.field, exc.field)}: {exc.message}") from None
    return config


def _check_writable(path: Path, flag: str) -> None:
    """``path`` is, or can become, a folder this user writes to (checked before any work, not after it)."""
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {path} is a file; pass a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path} cannot be written ({existing} is not a writable folder); pass a folder you can "
                       "write to")


def _cmd_search(args: argparse.Namespace) -> None:
    from procache_opt._lock import hold
    from procache_opt.storage import open_store

    out = Path(args.out)
    config = _search_config(args)
    _check_writable(out, "--out")
    storage = args.storage or str(out / "trials")
    with hold(out, "--out"):
        open_store(storage)  # a bad folder or database URL is refused now, not after loading the model
        from procache_opt._search import run_search
        from procache_opt.reporting import write_search_outputs

        result = run_search(config, storage=storage, progress=not args.no_progress)
        print(write_search_outputs(result, args.model, out))


def _labels(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--labels {text!r}: expected class labels as comma-separated integers, e.g. 0,1,2") from None


def _check_condition_kind(model: str, flag: str) -> None:
    """Refuse prompts for a class-conditional pipeline and labels for a text-conditional one before loading it
    (folders and zoo names only: their ``model_index.json`` names the pipeline class)."""
    from procache_opt.models import pipeline_class_name

    kind = pipeline_class_name(model) or ""
    if flag == "--labels" and kind.startswith("PixArt"):
        raise CliError(f"--labels: {model} is a {kind}, which takes prompts; pass --prompt TEXT (repeatable)")
    if flag == "--prompt" and kind.startswith("DiT"):
        raise CliError(f"--prompt: {model} is a {kind}, which takes class labels; pass --labels 0,1,2")


def _cmd_apply(args: argparse.Namespace) -> None:
    from procache_opt.schedule import Schedule

    schedule = Schedule.load(args.schedule)
    if args.labels is not None and args.prompt is not None:
        raise CliError("--labels and --prompt: pass class labels (DiT) or prompts (PixArt), not both")
    conditions = _labels(args.labels) if args.labels is not None else args.prompt
    flag = "--labels" if args.labels is not None else "--prompt"
    if conditions is not None:
        _check_condition_kind(args.model, flag)
    if args.guidance is not None and (not math.isfinite(args.guidance) or args.guidance < 0):
        raise CliError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    _check_writable(Path(args.out).parent, "--out")
    from procache_opt.reporting import generate_grid

    try:
        path = generate_grid(args.model, schedule, conditions, args.guidance, args.seed, Path(args.out))
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None
    print(f"wrote {path}")


def _cmd_export(args: argparse.Namespace) -> None:
    from procache_opt._io import atomic_write_text
    from procache_opt.runtimes import RUNTIMES
    from procache_opt.runtimes.cache_dit import EXPORT_HEADER, export_config
    from procache_opt.schedule import Schedule

    schedule = Schedule.load(args.schedule)
    options = dict(args.option)
    try:
        RUNTIMES.create(args.to, **options)  # unknown names and values out of range, before anything is written
    except (TypeError, ValueError) as exc:
        raise CliError(f"--option: {exc}") from None
    source = Path(args.schedule)
    out = Path(args.out) if args.out else source.with_name(f"{source.stem}.{args.to}.yaml")
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; pass a file name")
    if out.exists() and not out.read_text(errors="replace").startswith(EXPORT_HEADER):
        raise CliError(f"--out {out} exists and was not written by procache-opt export; pass another file name")
    _check_writable(out.parent, "--out")
    try:
        export = export_config(schedule, lossy=args.lossy, **options)
    except ValueError as exc:
        raise CliError(f"{args.schedule}: {exc}") from None
    atomic_write_text(out, export.to_yaml(str(source)))
    computed = schedule.num_steps - export.config["cache_config"]["steps_computation_mask"].count(0)
    print(f"wrote {out}: cache-dit {export.runtime.label}, {computed} of {schedule.num_steps} steps computed")
    for note in export.notes:
        print(f"note: {note}")
    print(f"use it with cache_dit.enable_cache(pipe, **cache_dit.load_configs({str(out)!r})) or sglang "
          f"--cache-dit-config {out}")


def _cmd_flops(args: argparse.Namespace) -> None:
    from procache_opt.schedule import Schedule

    schedule = Schedule.load(args.schedule) if args.schedule else None  # a bad file is refused before any load
    if args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    from procache_opt.flops import PRESETS, count_flops

    if args.model in PRESETS:
        target: Any = PRESETS[args.model]
    else:
        from procache_opt.models import load_pipeline

        target = load_pipeline(args.model).transformer
    print(count_flops(target, schedule=schedule, num_inference_steps=args.steps, guidance=not args.no_guidance))


def _cmd_list(args: argparse.Namespace) -> None:
    from procache_opt.objective import OBJECTIVES
    from procache_opt.strategy import STRATEGIES

    registry = STRATEGIES if args.kind == "strategies" else OBJECTIVES
    for name in registry.available():
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:24s} {doc[0] if doc else ''}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from procache_opt.compare.command import run

    print(f"wrote {run(args)}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from procache_opt.sweep import run_sweep, summary_markdown

    print(summary_markdown(run_sweep(args.config, address=args.address, out=args.out)))


#: Exceptions that are the user's to fix (a setting, a file, a folder, a model that cannot be searched): one line,
#: exit status 2. Anything else is a bug and keeps its traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from procache_opt._lock import FolderInUseError
    from procache_opt.result import NoCompletedTrialError

    return (CliError, ValueError, TypeError, UnknownPluginError, OSError, FolderInUseError, NoCompletedTrialError)


#: Sub-commands that resume when run again with the same arguments.
_RESUMABLE = ("search", "sweep", "compare")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        args.func(args)
    except KeyboardInterrupt:
        again = shlex.join(["procache-opt", *argv])
        hint = f"every finished trial is stored; resume with: {again}" if args.command in _RESUMABLE else (
            "nothing was written")
        print(f"procache-opt {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if args.verbose:
            traceback.print_exc()
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"procache-opt {args.command}: error: {text}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate docs/results.md: search strategies and caching baselines on the bundled `dit-digits` model.

Runs :func:`procache_opt.compare.compare` (every budget x strategy x seed search, then the baselines) into
``--out`` and writes the report, its tables (Markdown, CSV, LaTeX) and figures (PNG, PDF). Run from the
repository root::

    python benchmarks/compare_report.py --fresh        # from scratch
    python benchmarks/compare_report.py                # resume an interrupted run, then write the report
    python benchmarks/compare_report.py --report-only  # rewrite the report from the finished runs

The defaults are the committed report's settings, chosen to finish within about an hour on the 2-core CPU it
ran on; every option is also an option of ``procache-opt compare`` (see ``procache_opt.compare.command``).
"""

from __future__ import annotations

import argparse

from procache_opt.compare.command import add_arguments, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    # One torch thread: on a 2-core machine shared with other jobs, two threads spin waiting for each other and
    # a generation took up to 25x longer (measured while this report was made).
    parser.set_defaults(out="runs/compare-report", report="docs/results.md", assets="docs/figures/results",
                        threads=1)
    report = run(parser.parse_args(argv), command="python benchmarks/compare_report.py")
    print(f"wrote {report}")


if __name__ == "__main__":
    main()

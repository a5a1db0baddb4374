"""Tables as data, written as Markdown (docs), CSV (analysis) and LaTeX (papers) from one source.

A :class:`Table` holds already formatted cells, so the three formats always show the same numbers.

Example:
    >>> t = Table("demo", ("method", "speedup"), (("FORA", "1.9x"),))
    >>> print(t.to_markdown())
    | method | speedup |
    | --- | --- |
    | FORA | 1.9x |
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procache_opt._io import atomic_write_text

__all__ = ["Table", "write_table"]

#: Characters LaTeX treats specially, and how to write them literally.
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: Unicode the report uses, in LaTeX math (so the .tex compiles with a plain pdflatex).
_LATEX_SYMBOLS = {"±": r"$\pm$", "−": r"$-$", "≤": r"$\leq$", "×": r"$\times$", "–": "--", "Δ": r"$\Delta$"}


@dataclass(frozen=True)
class Table:
    """A titled table of formatted cells.

    Attributes:
        name: File stem (``strategies`` -> ``strategies.md``, ``.csv``, ``.tex``).
        columns: Column headers.
        rows: One tuple of cells per row, as long as ``columns``.
        caption: One sentence for the LaTeX caption (and above the Markdown table, by the report).
    """

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "rows", tuple(tuple(str(c) for c in r) for r in self.rows))
        bad = [i for i, r in enumerate(self.rows) if len(r) != len(self.columns)]
        if bad:
            raise ValueError(f"table {self.name!r}: rows {bad} do not have {len(self.columns)} cells")

    def to_markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        return "\n".join([line(self.columns), line(["---"] * len(self.columns)), *map(line, self.rows)])

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_latex(self) -> str:
        """A ``table`` with a ``tabular`` (booktabs rules), caption and label ``tab:<name>``."""
        def row(cells: Sequence[str]) -> str:
            return " & ".join(_latex(c) for c in cells) + r" \\"

        spec = "l" * len(self.columns)
        return "\n".join([
            r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex(self.caption)}}}",
            rf"\label{{tab:{self.name}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", row(self.columns),
            r"\midrule", *map(row, self.rows), r"\bottomrule", r"\end{tabular}", r"\end{table}", "",
        ])


def _latex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(c, c) for c in text)
    for symbol, macro in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, macro)
    return out


def write_table(table: Table, folder: str | Path) -> list[Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.tex`` into ``folder``."""
    folder = Path(folder)
    return [
        atomic_write_text(folder / f"{table.name}.md", table.to_markdown() + "\n"),
        atomic_write_text(folder / f"{table.name}.csv", table.to_csv()),
        atomic_write_text(folder / f"{table.name}.tex", table.to_latex()),
    ]

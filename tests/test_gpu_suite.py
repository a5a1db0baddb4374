"""``benchmarks/gpu_suite.py`` runs end to end on a CPU (``--smoke``, tiny models), so it works when a GPU comes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
ROWS = ("FULL", "FORA 2", "FORA 3", "ProCache authors' DiT + selective", "ProCache-like 7/20 + selective",
        "FORA 3 + forecast")


def _run(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "report.md"
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text()


@pytest.mark.ray
def test_smoke_run_times_every_row_eager_and_compiled_and_evaluates_on_a_ray_worker(tmp_path: Path) -> None:
    text = _run(tmp_path, "--smoke")
    assert "SMOKE RUN" in text
    for row in ROWS:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[6]) > 0  # eager and compiled seconds
    assert "'device': 'cpu'" in text  # the Ray worker's evaluator reports where it computed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the suite would run for minutes")
def test_without_a_gpu_the_report_says_so(tmp_path: Path) -> None:
    assert "No GPU was available" in _run(tmp_path)

"""Step costs measured on the device (``search(..., cost="measured")``): shape, caching, atomic files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from procache_opt import Schedule, measured_costs
from procache_opt.flops import step_costs

STEPS = 10


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCACHE_OPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(measured_costs, "_MEMORY", {})


def _kwargs() -> dict[str, Any]:
    return {"class_labels": [1, 7], "num_inference_steps": STEPS, "guidance_scale": 4.0, "output_type": "pt",
            "generator": torch.Generator().manual_seed(0)}


def _calls(pipe: Any) -> list[int]:
    calls = [0]
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_measured_costs_have_the_counted_shape_and_reuse_costs_less(tiny_dit_pipeline: Any) -> None:
    counted = step_costs(tiny_dit_pipeline.transformer, STEPS, batch_size=2, depth_split=0.5)
    costs = measured_costs.measure_step_costs(tiny_dit_pipeline, counted, _kwargs())
    assert costs.num_steps == STEPS and costs.depth_split == counted.depth_split
    assert all(value > 0 for table in (costs.full, costs.reuse, costs.selective, costs.deep, costs.shallow)
               for value in table)
    assert costs.reuse[0] < costs.full[0]
    assert 0 < costs.ratio(Schedule.from_intervals([2] * (STEPS // 2))) < 1


def test_measured_costs_are_cached_in_memory_and_on_disk(tiny_dit_pipeline: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    counted = step_costs(tiny_dit_pipeline.transformer, STEPS, batch_size=2)
    calls = _calls(tiny_dit_pipeline)
    first = measured_costs.measure_step_costs(tiny_dit_pipeline, counted, _kwargs())
    measured = calls[0]
    probes = 3 if counted.deep is not None else 2  # FULL/REUSE, scored FULL/SELECTIVE, DEEP/SHALLOW
    assert measured == probes * 2 * STEPS  # each probe a warm-up and a timed generation
    assert measured_costs.measure_step_costs(tiny_dit_pipeline, counted, _kwargs()) is first
    files = list((tmp_path / "cache" / "step-costs").glob("*.json"))
    assert len(files) == 1 and not list(files[0].parent.glob("*.tmp"))
    monkeypatch.setattr(measured_costs, "_MEMORY", {})  # a new process: read from disk, measure nothing
    assert measured_costs.measure_step_costs(tiny_dit_pipeline, counted, _kwargs()) == first
    assert calls[0] == measured
    other = _kwargs() | {"class_labels": [1, 7, 3]}  # another batch is another measurement
    measured_costs.measure_step_costs(tiny_dit_pipeline, counted, other)
    assert calls[0] > measured


def test_an_unreadable_cache_file_is_measured_again(tiny_dit_pipeline: Any, tmp_path: Path) -> None:
    counted = step_costs(tiny_dit_pipeline.transformer, STEPS, batch_size=2)
    measured_costs.measure_step_costs(tiny_dit_pipeline, counted, _kwargs())
    (path,) = (tmp_path / "cache" / "step-costs").glob("*.json")
    path.write_text("{not json")
    measured_costs._MEMORY.clear()
    costs = measured_costs.measure_step_costs(tiny_dit_pipeline, counted, _kwargs())
    assert json.loads(path.read_text())["full"][0] == costs.full[0]

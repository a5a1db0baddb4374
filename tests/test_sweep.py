"""Sweep files: parsing with clear errors, the grid of cells, resume after an interruption, summaries, the CLI.

Most tests replace ``procache_opt.search`` with a fake that stores trials like the real one; one runs the real
search on a tiny pipeline folder.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from procache_opt import _search
from procache_opt.cli import main
from procache_opt.result import SearchResult
from procache_opt.schedule import Schedule
from procache_opt.state import SearchState
from procache_opt.storage import DirectoryStore
from procache_opt.strategy import TrialResult, TrialStatus
from procache_opt.sweep import StrategyEntry, SweepConfig, run_sweep

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BASE = {"models": ["dit-digits"], "budgets": [0.4, 0.6], "strategies": ["random", {"name": "tpe", "label": "tpe8",
        "options": {"n_startup_trials": 8}}], "seeds": [0, 1], "n_trials": 3}


class FakeSearch:
    """Records calls; stores one trial per call in ``storage`` as the real search does; can be made to fail."""

    def __init__(self, interrupt: str | None = None, fail_budget: float | None = None) -> None:
        self.calls: list[dict] = []
        self.interrupt = interrupt
        self.fail_budget = fail_budget

    def __call__(self, config, *, storage, progress) -> SearchResult:
        self.calls.append({**config.to_dict(), "storage": storage})
        store = DirectoryStore(storage)
        done = store.load_trials()
        if config.budget_flops == self.fail_budget:
            raise RuntimeError("no trial completed within the budget")
        for i in range(len(done), config.n_trials):
            pattern = [1, 0, 1, 0] if i % 2 else [1, 1, 0, 0]
            done.append(TrialResult(i, Schedule.from_pattern(pattern), TrialStatus.COMPLETE,
                                    value=config.seed + i / 10, flops_ratio=config.budget_flops - 0.01, duration_s=0.5))
            store.save_state(SearchState(tuple(done), len(done), next_trial_id=i + 1))
            if self.interrupt and Path(storage).name == self.interrupt and i == 1:
                raise KeyboardInterrupt
        return SearchResult(store.load_trials(), config={"budget_flops": config.budget_flops})


@pytest.fixture
def fake_search(monkeypatch) -> FakeSearch:
    fake = FakeSearch()
    monkeypatch.setattr(_search, "run_search", fake)
    return fake


def test_examples_parse_into_named_cells():
    config = SweepConfig.load(EXAMPLES / "sweep.yaml")
    cells = config.cells()
    assert len(cells) == 2 * 2 * 2
    assert cells[0].name == "dit-digits__b0.4__constrained_sampling__feature_error__s0"
    assert config.strategies[1] == StrategyEntry("tpe", {"n_startup_trials": 8})
    cluster = SweepConfig.load(EXAMPLES / "cluster_sweep.yaml")
    assert cluster.backend == "ray" and cluster.backend_options["resources_per_worker"] == {"GPU": 1}
    assert len({c.name for c in cluster.cells()}) == len(cluster.cells()) == 108
    assert "DiT-XL-2-256__b0.65__evo__feature_error+lpipsx0.5__s2" in {c.name for c in cluster.cells()}


@pytest.mark.parametrize(("change", "message"), [
    ({"budget": [0.5]}, r"unknown key\(s\) \['budget'\]; allowed: \['models', 'budgets'"),
    ({"budgets": [1.5]}, r"budgets must be in \(0, 1\]"),
    ({"search": {"num_steps": 10}}, r"unknown `search` option\(s\) \['num_steps'\]; allowed: .*'num_inference_steps'"),
    ({"search": {"seed": 3}}, r"set \['seed'\] as top-level sweep keys"),
    ({"strategies": ["tpe", {"name": "tpe"}]}, r"cells share a name .*give strategies distinct `label`s"),
    ({"strategies": [{"name": "tpe", "optons": {}}]}, r"unknown key\(s\) \['optons'\] in strategy entry"),
    ({"objectives": [3]}, r"an objective is a name, a list of names or \{name: weight\}, got 3"),
    ({"search": {"selective": "abc"}}, r"search.selective \(cell .*\): must be true, false, a SelectiveConfig"),
    ({"strategies": ["bogus"]}, r"strategy \(cell .*\): unknown strategy 'bogus'; available: "),
    ({"strategies": [{"name": "tpe", "options": {"n_startup": 3}}]}, r"strategy_options .* \['n_startup'\]"),
    ({"budgets": ["half"]}, r"`budgets` must be numbers"),
    ({"backend": "dask"}, r"backend must be 'local' or 'ray'"),
    ({"backend_options": {"num_workers": 2}}, r"backend_options need `backend: ray`"),
    ({"backend": "ray", "backend_options": {"workers": 2}}, r"backend_options .*unknown \['workers'\]; allowed: .*"
     r"'max_retries', 'num_workers'"),
])
def test_config_errors_name_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig.from_dict({**BASE, **change})


def test_missing_axis_is_an_error():
    with pytest.raises(ValueError, match="`budgets` is required"):
        SweepConfig.from_dict({"models": ["dit-digits"]})


def test_objective_axis_and_scalars():
    objectives = ["lpips", ["lpips", "latency"], {"feature_error": 1, "latency": 0.1}]
    config = SweepConfig.from_dict({"models": "dit-digits", "budgets": 0.5, "objectives": objectives})
    assert [c.name.split("__")[3] for c in config.cells()] == ["lpips", "lpips+latency", "feature_error+latencyx0.1"]
    assert config.objectives[1] == {"lpips": 1.0, "latency": 1.0}


def test_sweep_runs_every_cell_into_one_folder_with_summaries(fake_search, tmp_path):
    rows = run_sweep({**BASE, "search": {"num_inference_steps": 8}}, out=tmp_path)
    assert len(rows) == len(fake_search.calls) == 8
    call = fake_search.calls[-1]
    assert call["storage"] == str(tmp_path / "dit-digits__b0.6__tpe8__feature_error__s1")
    assert call["strategy"] == "tpe" and call["strategy_options"] == {"n_startup_trials": 8}
    assert call["num_inference_steps"] == 8
    assert call["objectives"] == {"feature_error": 1.0} and call["backend"] == "local"
    for row in rows:
        folder = tmp_path / row["cell"]
        assert json.loads((folder / "result.json").read_text())["trials"]
        assert Schedule.load(folder / "schedule.json").pattern == (1, 1, 0, 0)
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["cell"] for r in table] == [r["cell"] for r in rows]
    assert table[1]["cell"].endswith("random__feature_error__s1")
    assert float(table[1]["best_value"]) == pytest.approx(1.0) and table[1]["best_pattern"] == "1100"  # trial 0
    assert (tmp_path / "summary.md").read_text().count("\n") == 2 + 8


def test_interrupted_sweep_resumes_without_rerunning_finished_cells(monkeypatch, tmp_path):
    interrupted = "dit-digits__b0.6__random__feature_error__s0"
    first = FakeSearch(interrupt=interrupted)
    monkeypatch.setattr(_search, "run_search", first)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(BASE, out=tmp_path)
    assert len(first.calls) == 5  # cells of budget 0.4 (4), then the interrupted one
    assert len(DirectoryStore(tmp_path / interrupted).load_trials()) == 2
    assert not (tmp_path / interrupted / "result.json").exists()

    second = FakeSearch()
    monkeypatch.setattr(_search, "run_search", second)
    rows = run_sweep(BASE, out=tmp_path)
    assert [Path(c["storage"]).name for c in second.calls][0] == interrupted  # finished cells were not rerun
    assert len(second.calls) == 4 and len(rows) == 8
    assert all(r["status"] == "complete" and r["trials"] == 3 for r in rows)


def test_a_failed_cell_is_reported_and_the_rest_run(monkeypatch, tmp_path):
    fake = FakeSearch(fail_budget=0.4)
    monkeypatch.setattr(_search, "run_search", fake)
    rows = run_sweep(BASE, out=tmp_path)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 4 and all(r["budget"] == 0.4 for r in failed)
    assert failed[0]["error"] == "RuntimeError: no trial completed within the budget"
    assert sum(r["status"] == "complete" for r in rows) == 4


def test_cli_sweep_subcommand(fake_search, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**BASE, "out": str(tmp_path / "runs")}))
    assert main(["sweep", str(path)]) == 0
    assert (tmp_path / "runs" / "summary.md").exists() and len(fake_search.calls) == 8
    path.write_text(yaml.safe_dump({**BASE, "budgest": [0.5]}))
    assert main(["sweep", str(path)]) == 2


def test_real_search_sweep_on_a_tiny_pipeline(tmp_path):
    from procache_opt.testing import tiny_dit_pipeline

    tiny_dit_pipeline(seed=0).save_pretrained(tmp_path / "tiny-dit")
    config = {"models": [str(tmp_path / "tiny-dit")], "budgets": [0.6], "strategies": ["random"], "n_trials": 3,
              "search": {"num_inference_steps": 6, "calibration": 2, "heldout": 2, "monotone": None}}
    rows = run_sweep(config, out=tmp_path / "runs")
    assert rows[0]["status"] == "complete", rows[0].get("error")
    assert rows[0]["cell"] == "tiny-dit__b0.6__random__feature_error__s0"
    assert rows[0]["best_flops_ratio"] <= 0.6 and rows[0]["trials"] == 3
    assert "heldout_best_feature_error" in rows[0] and "heldout_fora_baseline_feature_error" in rows[0]
    result = tmp_path / "runs" / rows[0]["cell"] / "result.json"
    stamp = result.stat().st_mtime_ns
    assert run_sweep(config, out=tmp_path / "runs") == rows  # the rerun reads the finished cell back
    assert result.stat().st_mtime_ns == stamp


def test_address_runs_the_sweep_on_ray_connecting_once(fake_search, monkeypatch, tmp_path):
    import procache_opt.backends.ray_backend as ray_backend

    connections = []
    monkeypatch.setattr(ray_backend, "connect", lambda address, **kw: connections.append((address, kw)) or False)
    run_sweep(BASE, address="auto", out=tmp_path)
    assert connections == [("auto", {})]
    assert {c["backend"] for c in fake_search.calls} == {"ray"}


def test_a_corrupt_result_file_is_named_and_its_cell_run_again(fake_search, tmp_path, caplog):
    run_sweep(BASE, out=tmp_path)
    corrupt = "dit-digits__b0.4__tpe8__feature_error__s1"
    (tmp_path / corrupt / "result.json").write_text('{"trials": [')
    fake_search.calls.clear()
    rows = run_sweep(BASE, out=tmp_path)
    assert [Path(c["storage"]).name for c in fake_search.calls] == [corrupt]  # the other cells were read back
    assert all(r["status"] == "complete" for r in rows) and len(rows) == 8
    assert f"cell {corrupt}: result file {tmp_path / corrupt / 'result.json'} is not valid JSON" in caplog.text
    assert SearchResult.load(tmp_path / corrupt / "result.json").trials


@pytest.mark.parametrize(("text", "message"), [
    ("models: [dit-digits\nbudgets: [0.5]\n", r"sweep.yaml is not valid YAML \(.* at line \d\)"),
    ("models: !!python/object/apply:os.system ['true']\nbudgets: [0.5]\n", r"sweep.yaml is not valid YAML"),
    ("- dit-digits\n", r"sweep config .*sweep.yaml: expected a YAML mapping"),
    ("models: [dit-digits]\nbudgets: [0.5]\nstrategies: [bogus]\n", r"sweep.yaml: strategy .*unknown strategy"),
    ("models: [no/such/folder]\nbudgets: [0.5]\n", r"models: 'no/such/folder' is neither a bundled model"),
])
def test_cli_refuses_bad_sweep_files_in_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err

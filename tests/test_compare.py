"""The comparison harness (on a tiny random DiT), its statistics on known numbers, and its export formats."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

import procache_opt.compare as compare_pkg
from procache_opt import Schedule, _search
from procache_opt.calibration import Calibration
from procache_opt.compare import ComparisonMismatchError, compare
from procache_opt.compare import stats as st
from procache_opt.compare.baselines import TOCA_SELECTIVE, closest_setting, matched_methods, toca_style
from procache_opt.compare.diffusers_caches import CACHES, DiffusersCache, mag_ratios
from procache_opt.compare.export import Table, write_table
from procache_opt.compare.figures import write_figures
from procache_opt.compare.measure import Bench, Method, call_kwargs
from procache_opt.compare.report import write_report
from procache_opt.compare.result import CompareConfig, CompareResult, cell_dir
from procache_opt.compare.tables import paired_table, strategy_table
from procache_opt.evaluate import Evaluator
from procache_opt.flops import step_costs
from procache_opt.strategy import TrialResult, TrialStatus
from procache_opt.testing import tiny_dit_pipeline

STEPS = 6
TINY = {"num_inference_steps": STEPS, "calibration": 1, "heldout": 2, "monotone": None, "baselines": False,
        "progress": False, "grid_images": 2}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> CompareResult:
    """Two strategies, one budget, one seed, three evaluations each, on the tiny DiT."""
    out = tmp_path_factory.mktemp("compare")
    return compare(tiny_dit_pipeline(), budgets=[0.5], strategies=["random", "constrained_sampling"], n_trials=3,
                   seeds=1, out=out, **TINY)


# -- harness ---------------------------------------------------------------------------------------------------
def test_every_cell_keeps_its_raw_trials_with_equal_budgets(finished: CompareResult) -> None:
    assert [(c.strategy, c.seed) for c in finished.cells] == [("random", 0), ("constrained_sampling", 0)]
    for cell in finished.cells:
        folder = cell_dir(finished.out, 0.5, cell.strategy, 0)
        stored = json.loads((folder / "state.json").read_text())["trials"]
        assert len(stored) == len(cell.result.trials) == 3  # equal evaluation budget for every strategy
        assert cell.result.config["seed"] == 0 and cell.result.config["strategy"] == cell.strategy
        assert cell.result.best_trial.flops_ratio <= 0.5
        assert set(cell.heldout) == {"feature_error", "psnr"} and cell.heldout["feature_error"] > 0


def test_finished_cells_are_not_rerun(finished: CompareResult, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished search was run again")

    monkeypatch.setattr(_search, "run_search", no_search)
    again = compare(tiny_dit_pipeline(), budgets=[0.5], strategies=["random", "constrained_sampling"], n_trials=3,
                    seeds=1, out=finished.out, **TINY)
    assert [c.heldout for c in again.cells] == [c.heldout for c in finished.cells]


def test_an_interrupted_search_resumes_from_its_stored_trials(finished: CompareResult,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = cell_dir(finished.out, 0.5, "random", 0)
    cell = (folder / "cell.json").read_text()
    (folder / "cell.json").unlink()  # as if interrupted after the last evaluation
    evaluations = []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, s: evaluations.append(s) or original(self, s))
    try:
        again = compare(tiny_dit_pipeline(), budgets=[0.5], strategies=["random", "constrained_sampling"],
                        n_trials=3, seeds=1, out=finished.out, **TINY)
        assert evaluations == []  # every trial replayed from storage
        assert again.cells_at(0.5, "random")[0].result.best == finished.cells_at(0.5, "random")[0].result.best
    finally:
        (folder / "cell.json").write_text(cell)


def test_other_settings_in_the_same_folder_are_refused(finished: CompareResult) -> None:
    with pytest.raises(ComparisonMismatchError, match="n_trials"):
        compare(tiny_dit_pipeline(), budgets=[0.5], strategies=["random", "constrained_sampling"], n_trials=4,
                seeds=1, out=finished.out, **TINY)


@pytest.mark.parametrize(("field", "value"), [("budgets", (1.5,)), ("strategies", ("tpe", "tpe")), ("seeds", 0),
                                               ("heldout_objectives", ("psnr",))])
def test_config_rejects_bad_settings(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CompareConfig(**{field: value})


def test_the_package_is_callable_as_the_function() -> None:
    assert callable(compare_pkg) and compare_pkg.compare is compare


def test_tables_and_figures_from_a_finished_comparison(finished: CompareResult, tmp_path: Path) -> None:
    table = strategy_table(finished)
    assert [r[:3] for r in table.rows] == [("0.5", "random", "1"), ("0.5", "constrained_sampling", "1")]
    assert paired_table(finished).rows == ()  # one seed: nothing to pair
    paths = write_figures(finished, tmp_path)
    assert {p.name for p in paths} == {f"{n}.{e}" for n in ("convergence", "pareto", "schedules")
                                       for e in ("png", "pdf")}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_report_links_resolve_to_written_tables_and_figures(finished: CompareResult, tmp_path: Path) -> None:
    report = write_report(finished, tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures", ["regen"])
    text = report.read_text()
    assert "| 0.5 | random | 1 |" in text and "```bash\nregen\n```" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert {Path(link).suffix for link in links} == {".png", ".pdf", ".csv", ".tex"}
    assert all((report.parent / link).exists() for link in links)


# -- baselines ---------------------------------------------------------------------------------------------------
def test_matched_baselines_fit_the_budget() -> None:
    transformer = tiny_dit_pipeline().transformer
    fora_sel, toca, fewer = matched_methods(transformer, 50, 0.35, guidance=True)
    assert step_costs(transformer, 50, guidance=True).ratio(fora_sel.schedule) <= 0.35
    assert step_costs(transformer, 50, selective=TOCA_SELECTIVE, guidance=True).ratio(toca.schedule) <= 0.35
    assert fewer.steps == 18 and toca.schedule.selective.deep_fraction == 1.0


def test_toca_style_selects_on_every_non_full_step() -> None:
    assert toca_style(7, 3).pattern == (1, 2, 2, 1, 2, 2, 1)


def test_closest_setting_picks_the_nearest_speedup() -> None:
    assert closest_setting({0.1: 1.2, 0.2: 1.9, 0.4: 2.6}, target=2.0) == 0.2
    with pytest.raises(ValueError):
        closest_setting({}, 2.0)


@pytest.mark.parametrize("method", sorted(CACHES))
def test_diffusers_caches_run_on_dit_and_restore_the_model(method: str) -> None:
    pipe = tiny_dit_pipeline()
    cal = Calibration((0,), (3,))

    def generate() -> torch.Tensor:  # fresh generators every call: the same noise each time
        return pipe(**call_kwargs(pipe, cal, STEPS, 4.0)).images

    before = {name: sorted(vars(m)) for name, m in pipe.transformer.named_modules()}
    reference = generate()
    cache = DiffusersCache(method, CACHES[method].grid[-1], mag_ratios(pipe, call_kwargs(pipe, cal, STEPS, 4.0)))
    with cache.apply(pipe, None):  # the "diffusers" runtime plugin
        first, second = generate(), generate()
    assert torch.equal(first, second)  # the cache state is reset between generations
    assert not torch.equal(first, reference)  # and the cache did skip work
    assert {name: sorted(vars(m)) for name, m in pipe.transformer.named_modules()} == before
    assert torch.equal(generate(), reference)


def test_bench_scores_full_computation_as_exact_and_fewer_steps_by_flops() -> None:
    pipe = tiny_dit_pipeline()
    bench = Bench(pipe, Calibration((5, 6), (1, 2)), STEPS, 4.0, ("feature_error", "psnr"), timing_samples=1,
                  timing_repeats=1)
    full, _ = bench.measure(Method("full", "", schedule=Schedule.full(STEPS)), time_it=False)
    assert full.scores["feature_error"] == 0.0 and full.compute_share == 1.0 and full.flops_ratio == 1.0
    fewer, images = bench.measure(Method("fewer", "3 steps", steps=3))
    assert fewer.flops_ratio == pytest.approx(0.5) and fewer.compute_share == pytest.approx(0.5)
    assert fewer.scores["feature_error"] > 0 and images.shape[0] == 2 and fewer.speedup > 0


# -- statistics ------------------------------------------------------------------------------------------------
def test_summary_uses_the_student_t_interval() -> None:
    s = st.summarize([1, 2, 3, 4, 5])
    assert (s.n, s.mean, s.std) == (5, 3.0, pytest.approx(math.sqrt(2.5)))
    half = 2.7764451051977934 * math.sqrt(2.5) / math.sqrt(5)
    assert (s.ci_low, s.ci_high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert math.isnan(st.summarize([2.0]).ci_low)


def test_paired_test_is_t_below_six_pairs_and_wilcoxon_from_six() -> None:
    t = st.paired_test([1, 2, 3, 4, 5], [1.1, 2.3, 2.9, 4.4, 5.6])
    assert (t.test, t.n) == ("paired t", 5)
    assert (t.mean_diff, t.statistic, t.p_value) == (pytest.approx(-0.26), pytest.approx(-2.1517753),
                                                     pytest.approx(0.0977867))
    w = st.paired_test([2, 3, 4, 5, 6, 7], [1] * 6)
    assert (w.test, w.statistic, w.p_value) == ("Wilcoxon", 0.0, pytest.approx(2 / 2**6))
    assert st.paired_test([1, 2, 3], [1, 2, 3]).p_value == 1.0


def test_constant_differences_use_the_sign_test_not_an_infinite_t() -> None:
    """Two deterministic strategies differ by the same amount in every seed: scipy's t-test says p = 0 for any n
    (zero variance), which would call 3 repeats of one search a significant result; the exact sign test says
    what 3 pairs can show (p = 0.25)."""
    c = st.paired_test([0.0183] * 3, [0.0163] * 3)
    assert (c.test, c.n, c.p_value) == ("sign", 3, 0.25) and c.mean_diff == pytest.approx(0.002)
    assert st.paired_test([2.0] * 8, [1.0] * 8).p_value == pytest.approx(2 / 2**8)


def test_holm_adjustment() -> None:
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_time_to_target_counts_evaluations_and_seconds() -> None:
    def trial(i: int, value: float | None) -> TrialResult:
        status = TrialStatus.COMPLETE if value is not None else TrialStatus.FAILED
        return TrialResult(i, Schedule.full(2), status, value=value, duration_s=2.0)

    trials = [trial(0, 1.0), trial(1, None), trial(2, 0.5), trial(3, 0.52)]
    assert st.best_so_far(trials) == ([1.0, 1.0, 0.5, 0.5], [2.0, 4.0, 6.0, 8.0])
    assert st.time_to_target(trials, st.target_loss(0.5)) == (3, 6.0)
    assert st.time_to_target(trials, 0.1) is None


# -- export ------------------------------------------------------------------------------------------------------
TABLE = Table("demo", ("method", "quality ± sd", "note"),
              (("FORA_2", "0.1 ± 0.02", "50% & more"), ("ToCa {all}", "0.2 ± 0.01", "a|b")), caption="x_y")


def test_markdown_parses_back() -> None:
    lines = TABLE.to_markdown().splitlines()
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    assert tuple(cells[0]) == TABLE.columns and set(cells[1]) == {"---"}
    assert [tuple(c) for c in cells[2:]] == list(TABLE.rows)


def test_csv_parses_back() -> None:
    rows = list(csv.reader(io.StringIO(TABLE.to_csv())))
    assert tuple(rows[0]) == TABLE.columns and [tuple(r) for r in rows[1:]] == list(TABLE.rows)


def test_latex_parses_back_and_escapes() -> None:
    tex = TABLE.to_latex()
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    unescape = {r"\_": "_", r"\&": "&", r"\%": "%", r"\{": "{", r"\}": "}", r"$\pm$": "±"}

    def parse(line: str) -> tuple[str, ...]:
        cells = re.split(r"(?<!\\)&", line.removesuffix(r" \\"))
        out = []
        for cell in cells:
            for escaped, plain in unescape.items():
                cell = cell.replace(escaped, plain)
            out.append(cell.strip())
        return tuple(out)

    assert [parse(line) for line in body] == list(TABLE.rows)
    assert r"\caption{x\_y}" in tex and r"\label{tab:demo}" in tex


def test_write_table_writes_three_formats(tmp_path: Path) -> None:
    assert sorted(p.name for p in write_table(TABLE, tmp_path)) == ["demo.csv", "demo.md", "demo.tex"]


# -- --fresh never deletes what the tool did not write ----------------------------------------------------------
def _users_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "thesis.txt").write_text("three years of work")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def _untouched(path: Path) -> bool:
    return (path / "thesis.txt").read_text() == "three years of work" and (path / "sub" / "data.csv").exists()


def test_fresh_with_a_bad_argument_removes_nothing_and_fails_at_once(tmp_path: Path, capsys) -> None:
    from procache_opt.cli import main

    folder = _users_folder(tmp_path / "mine")
    start = time.perf_counter()
    assert main(["compare", "--fresh", "--out", str(folder), "--strategies", "tpe,bogus"]) == 2
    assert time.perf_counter() - start < 5
    assert "--strategies: unknown strategy 'bogus'" in capsys.readouterr().err
    assert _untouched(folder)


def test_fresh_refuses_a_folder_this_tool_did_not_write(tmp_path: Path, capsys) -> None:
    from procache_opt.cli import main

    folder = _users_folder(tmp_path / "mine")
    assert main(["compare", "--fresh", "--out", str(folder), "--no-progress", "--trials", "2", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds no .procache-opt-compare file" in err and "nothing was removed" in err
    assert _untouched(folder)


def test_fresh_accepts_a_new_folder(tmp_path: Path) -> None:
    """`--fresh` on a folder that does not exist yet (the usual first run) is no error: `run` takes the folder's
    lock before it removes anything, and a folder holding only that lock has nothing to remove."""
    from procache_opt._lock import hold
    from procache_opt.compare.command import remove_outputs

    out = tmp_path / "new"
    with hold(out, "--out"):
        remove_outputs(out)
    assert [p.name for p in out.iterdir()] == [".procache-opt.lock"]


def test_fresh_removes_only_what_the_comparison_wrote(finished: CompareResult, tmp_path: Path) -> None:
    import shutil

    from procache_opt.compare.command import remove_outputs

    copy = tmp_path / "cmp"
    shutil.copytree(finished.out, copy)
    _users_folder(copy)
    (copy / "runs" / "notes.md").write_text("a note inside a folder the tool owns")
    assert (copy / ".procache-opt-compare").is_file() and (copy / "compare.json").is_file()
    remove_outputs(copy)
    assert _untouched(copy) and sorted(p.name for p in copy.iterdir()) == ["sub", "thesis.txt"]


class _Exploit:
    """A pickle that runs code when loaded without ``weights_only`` (what a tampered results folder could hold)."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('ran')",))


def test_saved_images_are_loaded_as_tensors_only(finished: CompareResult, tmp_path: Path, monkeypatch) -> None:
    import dataclasses
    import pickle

    from procache_opt.compare.baselines import Row
    from procache_opt.compare.figures import samples
    from procache_opt.compare.result import image_path

    row = Row(group="0.5", family="FORA", setting="interval=2", measured=object())  # any measured row
    out = tmp_path / "cmp"
    image_path(out, "full").parent.mkdir(parents=True)
    torch.save({"images": _Exploit()}, image_path(out, "full"))
    torch.save(torch.zeros(1, 3, 4, 4), image_path(out, row.key))
    monkeypatch.setenv("PWNED", str(tmp_path / "pwned"))
    with pytest.raises(pickle.UnpicklingError):
        samples(dataclasses.replace(finished, out=out, rows=[row]), "0.5")
    assert not (tmp_path / "pwned").exists()

"""compare: grid bookkeeping and resume with a stub trainer, the derived factors by hand, one tiny real grid."""

from __future__ import annotations

import json

import pytest

from transferkit.errors import TransferKitError
from transferkit.experiments.grid import (
    Cell,
    CellResult,
    derived_factors,
    examples_needed,
    grid,
    load_results,
    run_grid,
)

SCRATCH = {10: 0.5, 100: 0.7, 1000: 0.8}


def curve(*points):
    return [{"epoch": i + 1, "seconds": s, "val_accuracy": a} for i, (s, a) in enumerate(points)]


def stub_results():
    results = [CellResult("scratch", n, 0, acc, acc, 30.0, curve((10, 0.3), (20, 0.5), (30, 0.45)))
               for n, acc in SCRATCH.items()]
    results.append(CellResult("linear-probe", 10, 0, 0.75, 0.74, 2.0, curve((2, 0.6))))
    results.append(CellResult("linear-probe", 100, 0, 0.85, 0.85, 3.0, curve((3, 0.4))))
    return results


def test_examples_needed_interpolates_on_the_log_scale():
    assert examples_needed(SCRATCH, 0.75) == pytest.approx(10 ** 2.5)
    assert examples_needed(SCRATCH, 0.4) == 10.0
    assert examples_needed(SCRATCH, 0.85) is None


def test_data_efficiency_and_speedup_by_hand():
    rows = {(r["strategy"], r["per_class"]): r for r in derived_factors(stub_results())}
    lp10 = rows[("linear-probe", 10)]
    assert lp10["data_efficiency"] == pytest.approx(10 ** 2.5 / 10)  # scratch needs ~316 per class: 31.6x
    assert lp10["speedup"] == pytest.approx(20.0 / 2.0)  # scratch's best (0.5) at 20 s; linear-probe there at 2 s
    lp100 = rows[("linear-probe", 100)]
    assert lp100["data_efficiency"] is None and lp100["data_efficiency_text"].startswith("> 10.0x")
    assert lp100["speedup"] is None and lp100["speedup_text"] == "never reaches scratch's best"
    assert lp100["data_efficiency_text"] == "> 10.0x (scratch never gets there by 1000/class)"


def test_data_efficiency_text_names_the_tasks_size_unit():
    """A segmentation size counts training images, not examples per class: the text says so."""
    from transferkit.experiments.report import CLASSIFICATION, size_unit
    from transferkit.tasks import get_task

    assert size_unit(CLASSIFICATION.size) == "/class"
    unit = size_unit(get_task("segmentation").per_class)
    rows = {(r["strategy"], r["per_class"]): r for r in derived_factors(stub_results(), unit)}
    text = rows[("linear-probe", 100)]["data_efficiency_text"]
    assert text == "> 10.0x (scratch never gets there by 1000 training images)" and "/class" not in text


def test_convergence_is_95_percent_of_the_runs_own_best():
    run = CellResult("two-stage", 10, 0, 0.9, 0.9, 5.0, curve((1, 0.5), (2, 0.86), (3, 0.9)))
    assert run.convergence() == (2, 2.0)  # 0.86 >= 0.95 * 0.9


def test_grid_resumes_without_rerunning_finished_cells(tmp_path, caplog):
    cells = grid(["scratch", "linear-probe"], [10, 30], seeds=2, scratch_sizes=[100])
    assert len(cells) == 2 * 2 * 2 + 2 and Cell("scratch", 100, 1) in cells
    calls, crash_at = [], [3]

    def trainer(cell, run_dir):
        calls.append(cell)
        if len(calls) == crash_at[0]:
            raise RuntimeError("the machine went down")
        return CellResult(cell.strategy, cell.per_class, cell.seed, 0.5, 0.5, 1.0, curve((1, 0.5)))

    with pytest.raises(RuntimeError):
        run_grid(cells, tmp_path, trainer, {"data": "d", "model": "m"})
    assert len(load_results(tmp_path)) == 2
    assert json.loads((tmp_path / "results.json").read_text())["data"] == "d"  # a half-run grid says what it is
    calls.clear()
    crash_at[0] = None
    with caplog.at_level("INFO", logger="transferkit"):
        results = run_grid(cells, tmp_path, trainer)
    assert "2 of 10 cells done earlier, not rerun" in caplog.text
    assert "[3/10] scratch-n30-s0 (0m00s elapsed)" in caplog.text and "left)" in caplog.text  # progress + ETA
    assert len(results) == len(cells) and calls[0] == cells[2] and len(calls) == len(cells) - 2
    with pytest.raises(TransferKitError, match="'strategies' parameter"):
        grid(["warp"], [10], 1)


def test_tiny_real_compare_writes_the_report(image_tree, tiny_options, tmp_path):
    from transferkit.experiments import compare

    options = {k: v for k, v in tiny_options.items() if k != "model"}
    report = compare(str(image_tree), model=tiny_options["model"], strategies=["scratch", "linear-probe"],
                     per_class=[2, 4], seeds=1, out=tmp_path / "report", **options)
    out = tmp_path / "report"
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["cells"]) == 4 and {f["strategy"] for f in saved["factors"]} == {"linear-probe"}
    for cell in saved["cells"]:  # curve seconds count from the start of the run: setup (caches) included
        run = out / "runs" / f"{cell['strategy']}-n{cell['per_class']}-s{cell['seed']}"
        metrics = json.loads((run / "transferkit.json").read_text())["metrics"]
        # each cell's score is its own run's test-split score (the 9 test images), not another number
        assert metrics["test"]["n"] == 9 and cell["test_accuracy"] == metrics["test"]["accuracy"]
        assert cell["macro_f1"] == metrics["test"]["macro_f1"] and len(cell["curve"]) == metrics["epochs_run"]
        if cell["strategy"] == "linear-probe":  # the exact fit separates the colours even from 2 images per class
            assert cell["test_accuracy"] >= 8 / 9
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
        start = metrics["setup_seconds"] + metrics["cache_seconds_saved"]
        assert cell["curve"][0]["seconds"] == pytest.approx(start + first, abs=0.02)
        assert cell["seconds"] == pytest.approx(metrics["seconds"] + metrics["cache_seconds_saved"], abs=0.02)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "data efficiency" in html
    assert "| linear-probe | 2 |" in (out / "summary.md").read_text()
    assert [r.test_accuracy for r in report["results"]] == [c["test_accuracy"] for c in saved["cells"]]


def test_summary_lists_epochs_and_seconds_to_95_percent():
    from transferkit.experiments.report import summary_markdown

    text = summary_markdown(stub_results(), derived_factors(stub_results()), "t")
    # scratch at 10: best val 0.5, 95% of it (0.475) first reached at epoch 2, 20 s
    assert "| scratch | 10 | 1 | 0.500 ± 0.000 | 0.500 | 30 | 2.0 | 20.0 |" in text
    assert "| linear-probe | 10 | 0.750 | 316 | 31.6x | 10.0x |" in text


def test_ranking_orders_strategies_at_one_size_with_spread_and_time():
    from transferkit.experiments.grid import ranking

    results = [*stub_results(), CellResult("linear-probe", 10, 1, 0.65, 0.65, 4.0, curve((2, 0.6)))]
    ranked = ranking(results, 10)
    assert [r.strategy for r in ranked] == ["linear-probe", "scratch"]
    assert ranked[0].accuracy == pytest.approx(0.70) and ranked[0].spread == pytest.approx(0.05)
    assert ranked[0].seconds == pytest.approx(3.0) and ranked[1].accuracy == 0.5
    assert ranking(results, 999) == []


def test_compare_refuses_data_without_a_test_split_before_training(capsys, class_folder, tiny_weights, tmp_path):
    from test_cli import run_cli

    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "compare", "--data", class_folder, "--model", "timm:test_efficientnet",
                           "--weights", tiny_weights, "--image-size", "32", "--out", out)
    assert code == 2 and "needs a held-out test split" in err and "Traceback" not in err
    assert not (out / "runs").exists() and not (out / "results.json").exists()


def test_a_grid_started_with_other_settings_is_not_resumed(tmp_path):
    """Rerunning compare with the same --out but another --epochs used to mix old and new cells."""
    cells = grid(["linear-probe"], [10, 30], seeds=1)

    def trainer(cell, run_dir):
        return CellResult(cell.strategy, cell.per_class, cell.seed, 0.5, 0.5, 1.0, curve((1, 0.5)))

    meta = {"data": "builtin:digits", "model": "efficientnet_lite0", "options": {"epochs": 6, "image_size": 64}}
    run_grid(cells[:1], tmp_path, trainer, meta)
    run_grid(cells, tmp_path, trainer, meta)  # same settings: resumes
    changed = {**meta, "options": {"epochs": 10, "image_size": 64}}
    with pytest.raises(TransferKitError, match=r"other settings \(epochs: 6 before, 10 now\).*another --out"):
        run_grid(cells, tmp_path, trainer, changed)
    with pytest.raises(TransferKitError, match=r"model: 'efficientnet_lite0' before, 'minilm-l6' now"):
        run_grid(cells, tmp_path, trainer, {**meta, "model": "minilm-l6"})

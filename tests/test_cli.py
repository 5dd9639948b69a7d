"""The command line end to end on a tiny image tree, and every bad input's message and exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import transferkit
from conftest import make_class_folders
from transferkit.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def tiny_flags(weights):
    return ["--model", "timm:test_efficientnet", "--weights", weights, "--image-size", "32", "--batch-size", "8",
            "--workers", "0", "-q"]


def test_train_evaluate_predict(capsys, image_tree, tiny_weights, tmp_path):
    run = tmp_path / "runs" / "pets"
    code, out, err = run_cli(capsys, "train", "--data", image_tree, "--strategy", "two-stage", "--epochs", "1",
                             "--head-epochs", "1", "--out", run, *tiny_flags(tiny_weights))
    assert code == 0, err
    assert "best epoch" in out and "test accuracy" in out and (run / "transferkit.json").is_file()

    code, out, err = run_cli(capsys, "evaluate", run, "--data", image_tree / "test", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == 9 and set(report["per_class"]) == {"blue", "green", "red"}
    # the numbers agree with the library's evaluation of the same images and with their own confusion matrix
    library = transferkit.load(run).evaluate(image_tree / "test")
    assert report["confusion_matrix"] == library["confusion_matrix"] and report["accuracy"] == library["accuracy"]
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == 9 and matrix.sum(axis=1).tolist() == [3, 3, 3]  # rows: the true classes, 3 images each
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 9, abs=1e-12)
    f1 = [2 * matrix[i, i] / (matrix[i].sum() + matrix[:, i].sum()) for i in range(3)]
    assert report["macro_f1"] == pytest.approx(np.mean(f1), abs=1e-12)
    for i, name in enumerate(report["classes"]):
        row = report["per_class"][name]
        assert row["recall"] == pytest.approx(matrix[i, i] / 3) and row["support"] == 3
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, _ = run_cli(capsys, "evaluate", run)  # default: the run's own test split
    assert code == 0 and "macro-F1" in out and "confusion matrix" in out

    image = next((image_tree / "test" / "red").iterdir())
    code, out, err = run_cli(capsys, "predict", run, image, image_tree / "val", "--json", "--top-k", "2")
    assert code == 0, err
    predictions = json.loads(out)["predictions"]
    assert len(predictions) == 1 + 9 and predictions[0]["source"] == str(image)
    assert len(predictions[0]["top_k"]) == 2 and predictions[0]["top_k"][0]["label"] == predictions[0]["label"]
    # top-k is the k most probable classes of the library's full distribution, which sums to 1
    probabilities = transferkit.load(run).predict_proba([image])[0]
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    order = np.argsort(-probabilities)
    assert [(p["label"], p["probability"]) for p in predictions[0]["top_k"]] == [
        (["blue", "green", "red"][i], pytest.approx(float(probabilities[i]), abs=1e-6)) for i in order[:2]]
    code, out, _ = run_cli(capsys, "predict", run, image, "--json", "--top-k", "3")
    every = json.loads(out)["predictions"][0]["top_k"]
    assert code == 0 and sum(p["probability"] for p in every) == pytest.approx(1.0, abs=1e-5)

    code, out, _ = run_cli(capsys, "predict", run, image)
    assert code == 0 and str(image) in out


def test_models_lists_builtins(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    listing = json.loads(out)
    assert code == 0 and set(listing["builtin"]) == {"efficientnet_lite0", "efficientnet_lite2"}
    assert any(key.startswith("timm:") for key in listing["schemes"])


def bad_inputs(tmp_path, class_folder):
    empty = make_class_folders(tmp_path / "empty", per_class=2)
    (empty / "yellow").mkdir()
    single = make_class_folders(tmp_path / "single", classes={"only": (1, 2, 3)})
    broken = make_class_folders(tmp_path / "broken", per_class=2)
    (broken / "red" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return [
        (["--data", tmp_path / "missing"], "Data not found"),
        (["--data", empty], "yellow has no images"),
        (["--data", single], "Only one class"),
        (["--data", broken], "bad.jpg"),
        (["--data", class_folder, "--model", "timm:resnet5O"], "Unknown timm model 'resnet5O'. Did you mean"),
        (["--data", class_folder, "--strategy", "freeze"], "'strategy' parameter must be one of"),
        (["--data", class_folder, "--batch-size", "0"], "'batch_size' parameter must be a positive integer"),
        (["--data", class_folder, "--augment", "max"], "'augment' parameter must be one of none, light, heavy"),
        (["--data", class_folder, "--val-fraction", "1.5"], "'val_fraction' parameter must be a float in (0, 1)"),
        (["--data", class_folder, "--budget", "60x"], "'budget' parameter must be seconds or a duration with units"),
        (["--data", class_folder, "--budget", "0s"], "'budget' parameter must be a positive number of seconds"),
        (["--data", class_folder, "--weights", tmp_path / "nope.safetensors"], "Weights file not found"),
        ([], "Missing --data"),
    ]


def test_bad_inputs_give_one_line_and_exit_2(capsys, tmp_path, class_folder):
    for args, message in bad_inputs(tmp_path, class_folder):
        out_dir = tmp_path / "out"
        code, _, err = run_cli(capsys, "train", *args, "--out", out_dir, "-q")
        assert code == 2, (args, err)
        assert message in err and err.startswith("error:") and err.count("\n") == 1, (args, err)
        assert "Traceback" not in err
        assert not out_dir.exists(), "nothing half-written"


def test_budget_takes_seconds_or_a_duration(capsys, monkeypatch, class_folder, tiny_weights, tmp_path):
    """`--budget 1m` is 60 seconds: the run records it in seconds (the issue's own spelling was `--budget 60s`)."""
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", class_folder, "--strategy", "linear-probe", "--budget", "1m",
                           "--out", run, *tiny_flags(tiny_weights))
    assert code == 0, err
    info = json.loads((run / "transferkit.json").read_text())
    assert info["config"]["budget"] == 60.0 and info["budget"]["seconds"] == 60.0
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and re.search(r"--budget\s+<duration>", out)  # not "<str>": the help names what it takes


def test_bad_option_type_exits_2(capsys, class_folder):
    code, _, err = run_cli(capsys, "train", "--data", class_folder, "--epochs", "many")
    assert code == 2 and "epochs" in err


def test_evaluate_and_predict_bad_inputs(capsys, tmp_path, image_tree):
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "no-run", "--data", image_tree)
    assert code == 2 and "Run folder not found" in err
    (tmp_path / "half").mkdir()
    code, _, err = run_cli(capsys, "predict", tmp_path / "half", image_tree)
    assert code == 2 and "holds no finished run" in err


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "transferkit", "train", "--data", str(tmp_path / "nothing")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: Data not found")


@pytest.mark.parametrize("command", ["train", "compare", "advise", "evaluate", "predict", "plan"])
def test_help_explains_every_option_and_keeps_the_defaults_text(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "--help" in out
    assert not re.search(r"\w \.(\s|$)", out)  # a "[default: ...]" eaten as rich markup leaves "text ."
    if command in ("train", "compare"):
        assert "[default: 10 for images, 4 for text]" in out


def test_unknown_model_and_missing_data_name_the_language_side_too(capsys, tmp_path):
    code, _, err = run_cli(capsys, "advise", "--data", "builtin:digits", "--model", "minilm")
    assert code == 2 and "minilm-l6, hf:<id>" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "advise", "--data", tmp_path / "missing")
    assert code == 2 and "Data not found" in err and "builtin:bbc-news" in err


def test_train_dry_run_with_the_default_strategy_measures_and_writes_nothing(capsys, class_folder, tiny_weights,
                                                                             tmp_path):
    """`train --dry-run` with the defaults (--strategy auto): the plan of what auto chose, with its reasons; no run
    folder. Without data, `plan` prints two-stage's plan and says why it could not measure."""
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", class_folder, "--out", run, "--dry-run",
                             *tiny_flags(tiny_weights))
    assert code == 0, err
    assert "Strategy auto chose linear-probe, because:" in out and "one exact fit on cached features" in out
    assert not run.exists()
    code, out, err = run_cli(capsys, "plan", "--model", "timm:test_efficientnet")
    assert code == 0, err
    assert "here it cannot (no data given): this is the plan of two-stage" in out

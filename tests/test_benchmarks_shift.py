"""benchmarks/shift_fmnist.py without training: the planned commands of each pair, resuming from an older JSON,
the settings check, and the worker pool's ordering and failure handling (commands faked)."""

from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def shift():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("shift_fmnist")
    finally:
        sys.path.remove(str(BENCHMARKS))


def dry_run(shift, capsys, tmp_path: Path, *args: str) -> list[str]:
    assert shift.main(["--dry-run", "--out", str(tmp_path / "r.json"), "--runs", str(tmp_path / "runs"), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_font_digits_commands(shift, capsys, tmp_path):
    lines = dry_run(shift, capsys, tmp_path, "--pair", "font-digits", "--seeds", "2")
    assert len(lines) == 10 and all(line.startswith("transferkit train ") for line in lines)  # 5 methods x 2 seeds
    assert all("--test-per-class 50" in line and "--keep last" in line for line in lines)
    assert sum("--data builtin:font-digits --target-data builtin:digits" in line for line in lines) == 8
    assert sum("--data builtin:digits --strategy two-stage" in line for line in lines) == 2  # the oracle
    assert f"--seed 1 --out {tmp_path / 'runs' / 'dann-two-stage-s1'} --overwrite" in "\n".join(lines)
    assert not (tmp_path / "r.json").exists()  # nothing written by a dry run


def test_fashion_mnist_commands(shift, capsys, tmp_path):
    lines = dry_run(shift, capsys, tmp_path, "--seeds", "1")
    source = tmp_path / "runs" / "source-only-two-stage-s0"
    assert lines[5] == f"transferkit interpolate {source} --alphas 0:1:0.25 --out {tmp_path / 'runs' / 'wise-ft-s0'} " \
                       "--overwrite --json"
    assert lines[6] == f"transferkit forgetting {source} --json"
    assert [line.split(" --out ")[1].split()[0].rsplit("/", 1)[1] for line in lines if "train" in line][-2:] == [
        "fine-tune-s0", "fine-tune---l2-sp-0-01-s0"]
    assert all("--test-per-class 100" in line for line in lines if " train " in f" {line}")


def test_sequence_commands(shift, capsys, tmp_path):
    lines = dry_run(shift, capsys, tmp_path, "--pair", "sequence", "--seeds", "1")
    task_a = tmp_path / "runs" / "task-a-two-stage-s0"
    assert lines[0].startswith("transferkit train --data builtin:digits --strategy two-stage")
    assert sum(f"--weights {task_a / 'model.safetensors'}" in line for line in lines) == 3
    assert sum(line.endswith(f"--previous {task_a} --json") for line in lines) == 4  # 3 methods and WiSE-FT


def older_json(shift, seeds: int, sweep: bool = True) -> dict:
    settings = ["--model", "efficientnet_lite0", "--image-size", "64", "--per-class", "50", "--test-per-class", "100",
                "--epochs", "3", "--head-epochs", "1", "--batch-size", "32", "--patience", "0", "--workers", "0", "-q"]
    rows = {name: [{"seed": s, "run": f"/old/{shift.folder(Path('.'), name, s).name}"} for s in range(seeds)]
            for name in shift.METHODS}
    rows["source-only two-stage"][0]["run"] = "/old/source-only-1706-s0"
    wise = {"sweep": {}, "two-stage": {}} if sweep else {}
    wise.update({"fine-tune": {}, "fine-tune + L2-SP 0.01": {}})
    return {"settings": settings, "adaptation": rows, "wise_ft": wise}


def test_resume_skips_finished_runs_and_keeps_recorded_settings(shift, capsys, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(older_json(shift, seeds=2)))
    assert dry_run(shift, capsys, tmp_path, "--seeds", "2") == []
    lines = dry_run(shift, capsys, tmp_path, "--seeds", "3")
    assert len(lines) == 5 and all("--seed 2 " in line and "--epochs 3" in line for line in lines)
    assert all(line.count("--test-per-class") == 1 and "--keep" not in line for line in lines)
    (tmp_path / "r.json").write_text(json.dumps(older_json(shift, seeds=1, sweep=False)))
    lines = dry_run(shift, capsys, tmp_path, "--seeds", "1")
    assert lines == ["transferkit interpolate /old/source-only-1706-s0 --alphas 0:1:0.25 --out "
                     f"{tmp_path / 'runs' / 'wise-ft-s0'} --overwrite --json",
                     "transferkit forgetting /old/source-only-1706-s0 --json"]
    with pytest.raises(SystemExit) as stopped:
        dry_run(shift, capsys, tmp_path, "--epochs", "5")
    assert stopped.value.code == 2 and "--epochs 5 (recorded: 3)" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--test-per-class", "53"], ["--per-class", "122"]])
def test_counts_the_digits_splits_cannot_hold_are_refused(shift, capsys, tmp_path, option):
    with pytest.raises(SystemExit) as stopped:
        dry_run(shift, capsys, tmp_path, "--pair", "font-digits", *option)
    assert stopped.value.code == 2 and "builtin:digits" in capsys.readouterr().err


def test_workers_run_after_dependencies_and_survive_failures(shift, monkeypatch, capsys):
    results, saved, started = {"adaptation": {}}, [], []
    lock = threading.Lock()

    def fake(command, threads):
        with lock:
            started.append(command[0])
        assert threads == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if command[0] == "bad":
            raise RuntimeError("failed: transferkit bad\nTraceback tail")
        return command[0]

    def job(name, seed, command, needs=None):
        return shift.Job(("adaptation", name, seed), [[command]],
                         lambda out, s: shift._add(results, "adaptation", name, {"seed": seed, "out": out[0]}), needs)

    monkeypatch.setattr(shift, "run_command", fake)
    jobs = [job("m", 2, "a"), job("m", 0, "b"), job("x", 0, "bad"), job("y", 0, "after-bad", ("adaptation", "x", 0)),
            job("m", 1, "after-m0", ("adaptation", "m", 0))]
    failures = shift.execute(jobs, results, lambda: saved.append(len(saved)), workers=2)
    assert [r["seed"] for r in results["adaptation"]["m"]] == [0, 1, 2] and len(saved) == 3
    assert started.index("after-m0") > started.index("b") and "after-bad" not in started
    assert len(failures) == 2 and "Traceback tail" in failures[0] and "needs x seed 0" in failures[1]

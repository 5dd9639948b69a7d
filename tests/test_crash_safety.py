"""Crashes and full disks at the worst moments: during the checkpoint swap, before the first checkpoint, and a
write failure while saving a checkpoint. Each leaves a folder that the next command continues exactly."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import transferkit
from test_training import InterruptAt
from transferkit.cli import main
from transferkit.errors import IncompleteRunError
from transferkit.runfolder import RunFolder
from transferkit.training import checkpoint as checkpoint_module


def _options(tiny_options):
    # three phases' worth of checkpoints; light augmentation and dropout so the random streams matter
    return {**tiny_options, "strategy": "two-stage", "epochs": 2, "head_epochs": 1, "patience": 0,
            "augment": "light", "dropout": 0.3}


def _same_weights(a, b):
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two fighting over a busy machine (results are compared within a
    process, so the thread count does not matter for them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (not even ``except Exception`` handlers)."""


def test_a_crash_between_the_swap_renames_resumes_from_the_previous_checkpoint(class_folder, tiny_options, tmp_path,
                                                                                monkeypatch):
    """A crash after `checkpoint` was renamed to `.checkpoint.old` and before `.checkpoint.new` took its place left
    the only complete checkpoint in `.checkpoint.old`: the run counted as never started, so the clean-up of a failed
    start deleted the whole folder, and --resume said there was no checkpoint."""
    options = _options(tiny_options)
    transferkit.train(class_folder, out=str(tmp_path / "full"), progress=False, **options)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append((src, dst))
        if str(src).endswith(".checkpoint.new") and len([c for c in calls if str(c[0]).endswith(".new")]) == 3:
            raise Crash  # third checkpoint: `checkpoint` is already `.checkpoint.old`, the new one not yet in place
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", crashing_replace)
    with pytest.raises(Crash):
        transferkit.train(class_folder, out=str(tmp_path / "cut"), progress=False, **options)
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)
    cut = tmp_path / "cut"
    assert not (cut / "checkpoint").exists() and (cut / ".checkpoint.old" / "state.json").is_file()
    assert RunFolder(cut).checkpoint_state()["epoch"] == 2
    with pytest.raises(IncompleteRunError, match="--resume"):
        transferkit.load(cut)
    transferkit.train(resume=cut, progress=False)
    assert _same_weights(tmp_path / "full", cut)
    assert not (cut / ".checkpoint.old").exists() and not (cut / ".checkpoint.new").exists()
    assert [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_kill_before_the_first_checkpoint_is_started_over_by_the_same_command(class_folder, tiny_options, tmp_path,
                                                                                monkeypatch):
    """kill -9 cannot clean up: the folder keeps config.yaml (and the feature cache, and metrics of an epoch that
    never reached its checkpoint). Running the same command again refused with "exists and is not empty"."""
    options = _options(tiny_options)
    transferkit.train(class_folder, out=str(tmp_path / "full"), progress=False, **options)
    monkeypatch.setattr(RunFolder, "discard_if_unstarted", lambda self: None)  # what kill -9 leaves

    class KilledAfterMetrics(InterruptAt):
        def on_epoch_end(self, record, state):
            raise KeyboardInterrupt  # after metrics.jsonl got epoch 1, before its checkpoint

    with pytest.raises(KeyboardInterrupt):
        transferkit.train(class_folder, out=str(tmp_path / "cut"), progress=False, callbacks=[KilledAfterMetrics(-1)],
                          **options)
    cut = tmp_path / "cut"
    assert (cut / "config.yaml").is_file() and (cut / "metrics.jsonl").is_file() and not RunFolder(cut).has_checkpoint
    with pytest.raises(transferkit.TransferKitError, match="config.yaml --out"):
        transferkit.train(resume=cut, progress=False)
    monkeypatch.undo()
    transferkit.train(class_folder, out=str(cut), progress=False, **options)  # the same command again
    assert _same_weights(tmp_path / "full", cut)
    assert [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_full_disk_during_the_second_checkpoint_is_one_line_and_keeps_the_first(capsys, class_folder, tiny_weights,
                                                                                  tmp_path, monkeypatch):
    """The OSError of a failed checkpoint write surfaced as a traceback and left `.checkpoint.new` behind."""
    flags = ["--data", str(class_folder), "--model", "timm:test_efficientnet", "--weights", str(tiny_weights),
             "--image-size", "32", "--batch-size", "8", "--workers", "0", "--strategy", "two-stage", "--epochs", "2",
             "--head-epochs", "1", "--patience", "0", "--augment", "light", "-q"]
    with pytest.raises(SystemExit):
        main(["train", *flags, "--out", str(tmp_path / "full")])
    real_save, writes = checkpoint_module.save_file, []

    def full_disk(tensors, filename, *args, **kwargs):
        if filename.endswith("model.safetensors"):
            writes.append(filename)
        if len(writes) == 2:
            with open(filename, "wb") as handle:
                handle.write(b"\0" * 100)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    run = tmp_path / "cut"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *flags, "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Could not write to the run folder")
    assert str(run) in lines[0] and "No space left on device" in lines[0]
    assert "checkpoint (epoch 1) is intact" in lines[0] and f"--resume {run}" in lines[0]
    assert not (run / ".checkpoint.new").exists() and RunFolder(run).checkpoint_state()["epoch"] == 1
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(run), "-q"])
    assert exit_info.value.code in (0, None)
    assert _same_weights(tmp_path / "full", run)


def test_a_write_failure_before_any_checkpoint_says_to_run_again_and_leaves_no_folder(class_folder, tiny_options,
                                                                                      tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with pytest.raises(transferkit.TransferKitError, match="No checkpoint was saved yet. Fix: free disk space .* run "
                                                           "the same command again"):
        transferkit.train(class_folder, out=str(tmp_path / "run"), progress=False, **_options(tiny_options))
    assert not (tmp_path / "run").exists()

"""The loop: early stopping restores the best epoch, resume equals an uninterrupted run, run folders."""

from __future__ import annotations

import json

import pytest
import torch

import transferkit
from transferkit.errors import IncompleteRunError, TransferKitError
from transferkit.training import Callback, EarlyStopping
from transferkit.training import loop as loop_module
from transferkit.training.checkpoint import cpu_state_dict


def test_early_stopping_with_a_fixed_sequence():
    stopper = EarlyStopping(patience=2)
    accuracies = [0.5, 0.7, 0.6, 0.7, 0.65]
    losses = [1.0, 0.8, 0.9, 0.7, 0.9]
    stops = []
    for epoch, (acc, loss) in enumerate(zip(accuracies, losses, strict=True), start=1):
        stopper.update(acc, loss, epoch)
        stops.append(stopper.should_stop)
    # epoch 4 ties the best accuracy with a lower loss: it becomes the best, resetting patience
    assert stopper.best_epoch == 4 and stops == [False, False, False, False, False]
    stopper.update(0.6, 1.0, 6)
    assert stopper.should_stop
    assert not EarlyStopping(patience=None).should_stop


class Snapshots(Callback):
    def __init__(self, model):
        self.model, self.states = model, []

    def on_epoch_end(self, record, state):
        self.states.append(cpu_state_dict(self.model))


def train_on_a_fixed_val_sequence(class_folder, tiny_options, tmp_path, monkeypatch, **options):
    """A 6-epoch fine-tune whose validation accuracies are 0.4, 0.9, 0.5, 0.6, ...: the best is epoch 2, patience 2
    stops after epoch 4. Returns the result and the weights after every epoch."""
    sequence = iter([0.4, 0.9, 0.5, 0.6, 0.95, 0.99])
    monkeypatch.setattr(loop_module, "evaluate_loss", lambda *a, **k: {"loss": 1.0, "accuracy": next(sequence)})
    snap = {}
    original_fit = loop_module.fit

    def fit_with_snapshots(model, *args, callbacks=(), **kwargs):
        snap["cb"] = Snapshots(model)
        return original_fit(model, *args, callbacks=[*callbacks, snap["cb"]], **kwargs)

    monkeypatch.setattr(transferkit.api, "fit", fit_with_snapshots)
    # the fixed rule (no relative patience; only the warm-up epoch is exempt): the defaults would not judge the
    # first half of a 6-epoch schedule (tests/test_convergence.py)
    result = transferkit.train(class_folder, patience=2, patience_fraction=0.0,
                               patience_after_lr=1.0, out=str(tmp_path / "run"), progress=False,
                               **{**tiny_options, "strategy": "fine-tune", "epochs": 6, **options})
    return result, snap["cb"].states


def test_fit_restores_the_best_epoch_weights(class_folder, tiny_options, tmp_path, monkeypatch):
    """Drive early stopping with a fixed validation sequence: best is epoch 2, patience 2 stops at 4."""
    result, states = train_on_a_fixed_val_sequence(class_folder, tiny_options, tmp_path, monkeypatch)
    assert result.best_epoch == 2 and len(result.history) == 4  # stopped after 2 epochs without improvement
    best = states[1]
    final = result.model.model.state_dict()
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], states[-1][k]) for k in best)


def test_keep_last_ends_with_the_final_epochs_weights_and_says_so(class_folder, tiny_options, tmp_path, monkeypatch):
    """The same fixed validation sequence with --keep last: the final epoch (4) is kept and reported, not epoch 2."""
    result, states = train_on_a_fixed_val_sequence(class_folder, tiny_options, tmp_path, monkeypatch, keep="last")
    assert len(result.history) == 4 and result.best_epoch == 4 and result.val_score == 0.6
    final, last = result.model.model.state_dict(), states[-1]
    assert all(torch.equal(final[k], last[k]) for k in last)
    assert not all(torch.equal(final[k], states[1][k]) for k in last)
    info = json.loads((tmp_path / "run" / "transferkit.json").read_text())
    assert info["metrics"]["best_epoch"] == 4 and info["config"]["keep"] == "last"


class InterruptAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_in_the_middle_of_phase_two_equals_an_uninterrupted_run(class_folder, tiny_options, tmp_path):
    options = {**tiny_options, "strategy": "two-stage", "epochs": 3, "head_epochs": 1, "patience": 0,
               "augment": "light", "dropout": 0.3}
    full = transferkit.train(class_folder, out=str(tmp_path / "full"), progress=False, **options)
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(class_folder, out=str(tmp_path / "cut"), progress=False, callbacks=[InterruptAt(2)],
                          **options)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["train"]
    assert (state["epoch"], state["phase_index"], state["phase_epoch"]) == (2, 1, 1)  # mid phase 2
    with pytest.raises(IncompleteRunError, match="--resume"):
        transferkit.load(tmp_path / "cut")
    resumed = transferkit.train(resume=tmp_path / "cut", progress=False)
    a, b = full.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    with pytest.raises(TransferKitError, match="already finished"):
        transferkit.train(resume=tmp_path / "cut")


def test_interrupted_before_the_first_epoch_leaves_no_folder(class_folder, tiny_options, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(class_folder, out=str(tmp_path / "run"), progress=False, callbacks=[InterruptAt(0)],
                          **tiny_options)
    assert not (tmp_path / "run").exists()


def test_run_folder_is_self_describing_and_loads_back(image_tree, tiny_options, tmp_path):
    result = transferkit.train(image_tree, out=str(tmp_path / "run"), progress=False,
                               head_fit="sgd", **{**tiny_options, "strategy": "linear-probe"})
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "transferkit.json", "metrics.jsonl",
                                               "config.yaml", "checkpoint"}
    info = json.loads((run / "transferkit.json").read_text())
    assert info["classes"] == ["blue", "green", "red"] and info["strategy"] == "linear-probe"
    assert info["model"]["spec"] == "timm:test_efficientnet" and info["preprocessing"]["input_size"] == 32
    assert info["metrics"]["test"]["n"] == 9 and "torch" in info["versions"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:  # 24 training images in 3 full batches of 8 per epoch
        # throughput counts images, not batches: the epoch's training took at most the time since the run started
        assert record["train_samples_per_s"] >= 24 / record["seconds"] * 0.99
        assert record["train_accuracy"] * 24 == pytest.approx(round(record["train_accuracy"] * 24), abs=1e-6)
    loaded = transferkit.load(run)
    images = sorted((image_tree / "test").rglob("*.png"))
    assert loaded.predict_proba(images) == pytest.approx(result.model.predict_proba(images), abs=1e-5)
    with pytest.raises(TransferKitError, match="already holds a finished run"):
        transferkit.train(image_tree, out=str(run), progress=False, **tiny_options)


def test_load_reports_mismatched_weights(image_tree, tiny_options, tmp_path):
    transferkit.train(image_tree, out=str(tmp_path / "run"), progress=False,
                      **{**tiny_options, "strategy": "linear-probe", "epochs": 1})
    info_path = tmp_path / "run" / "transferkit.json"
    info = json.loads(info_path.read_text())
    info["head"]["num_classes"], info["classes"] = 4, info["classes"] + ["extra"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(TransferKitError, match=r"wrong shapes: head\.1\.weight"):
        transferkit.load(tmp_path / "run")


def test_bf16_and_channels_last_run_on_cpu_and_settings_can_change(class_folder, tiny_options, tmp_path):
    """bf16 autocast and channels_last work on the CPU; one process may switch precision between runs."""
    import math

    options = {**tiny_options, "strategy": "fine-tune", "epochs": 1, "cpu": True}
    plain = transferkit.train(class_folder, out=str(tmp_path / "fp32"), progress=False, mixed_precision="no",
                              **options)
    fast = transferkit.train(class_folder, out=str(tmp_path / "bf16"), progress=False, mixed_precision="bf16",
                             channels_last="on", **options)
    again = transferkit.train(class_folder, out=str(tmp_path / "fp32-again"), progress=False, mixed_precision="no",
                              **options)
    assert math.isfinite(fast.history[0]["train_loss"]) and fast.history[0]["train_loss"] != plain.history[0][
        "train_loss"]  # bf16 arithmetic really ran
    assert again.history[0]["train_loss"] == plain.history[0]["train_loss"]


def test_a_new_phase_is_judged_against_its_own_best():
    """After unfreezing, accuracy dips first; the phase must not stop because the head-only best is higher."""
    stopper = EarlyStopping(patience=2)
    stopper.update(0.83, 0.5, 1)
    stopper.new_phase()
    for epoch, acc in enumerate([0.79, 0.80, 0.81], start=2):
        stopper.update(acc, 0.6, epoch)
        assert not stopper.should_stop
    assert stopper.best_epoch == 1  # the run's best is still the head-only epoch
    stopper.update(0.86, 0.4, 5)
    assert stopper.best_epoch == 5
    stopper.update(0.85, 0.45, 6)
    stopper.update(0.84, 0.45, 7)
    assert stopper.should_stop

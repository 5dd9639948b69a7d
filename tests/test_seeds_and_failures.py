"""Random streams of different seeds never coincide; a NaN loss stops the run with a clear error and keeps the last
good checkpoint."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import transferkit
from transferkit.seeding import derive_seed
from transferkit.training import loop as loop_module
from transferkit.training.callbacks import Callback
from transferkit.training.loop import NonFiniteLossError


def test_epoch_streams_of_neighbouring_seeds_do_not_collide(class_folder, tiny_options, tmp_path, monkeypatch):
    """``seed + epoch`` gave seed 0 at epoch 1 the stream of seed 1 at epoch 0: every compare seed replayed its
    neighbour's shuffles one epoch late."""
    seen: dict[int, list[int]] = {}
    original = loop_module.set_seed
    current = {}

    def record(value, *args, **kwargs):
        seen.setdefault(current["seed"], []).append(value)
        return original(value, *args, **kwargs)

    monkeypatch.setattr(loop_module, "set_seed", record)
    for seed in (0, 1):
        current["seed"] = seed
        transferkit.train(class_folder, epochs=3, seed=seed, patience=0, progress=False,
                          out=str(tmp_path / f"s{seed}"),
                          **{**{k: v for k, v in tiny_options.items() if k != "epochs"}, "strategy": "fine-tune"})
    assert len(seen[0]) == len(seen[1]) == 3
    assert not set(seen[0]) & set(seen[1])
    streams = {derive_seed(s, "epoch", e) for s in range(20) for e in range(100)}
    assert len(streams) == 2000  # no two (seed, epoch) pairs share a stream
    assert derive_seed(3, "view", 1) != derive_seed(3, "epoch", 1)


class PoisonHead(Callback):
    """Sets the head's weights to NaN when epoch ``at`` starts."""

    def __init__(self, model_holder, at):
        self.holder, self.at = model_holder, at

    def on_epoch_start(self, state):
        if state.epoch == self.at:
            with torch.no_grad():
                for p in self.holder["model"].head.parameters():
                    p.fill_(math.nan)


def test_a_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(class_folder, tiny_options,
                                                                                  tmp_path, monkeypatch):
    holder = {}
    original_fit = transferkit.api.fit

    def capture(model, *args, **kwargs):
        holder["model"] = model
        return original_fit(model, *args, **kwargs)

    monkeypatch.setattr(transferkit.api, "fit", capture)
    run = tmp_path / "run"
    options = {**tiny_options, "strategy": "fine-tune", "epochs": 3, "patience": 0}
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, step 1 .*lower --lr"):
        transferkit.train(class_folder, out=str(run), progress=False, callbacks=[PoisonHead(holder, 1)], **options)
    state = json.loads((run / "checkpoint" / "state.json").read_text())["train"]
    assert state["epoch"] == 1 and not (run / "transferkit.json").exists()
    from safetensors.torch import load_file

    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())  # the NaN never reached a checkpoint
    monkeypatch.setattr(transferkit.api, "fit", original_fit)
    resumed = transferkit.train(resume=run, progress=False)
    assert len(resumed.history) == 3 and all(math.isfinite(h["train_loss"]) for h in resumed.history)


def test_the_cli_reports_a_nan_loss_in_one_line(capsys, class_folder, tiny_weights, tmp_path, monkeypatch):
    from test_cli import run_cli, tiny_flags

    class Poisoned(torch.nn.Module):
        def forward(self, logits, labels):
            return logits.sum() * math.inf

    monkeypatch.setattr(loop_module.nn, "CrossEntropyLoss", lambda **kw: Poisoned())
    code, _, err = run_cli(capsys, "train", "--data", class_folder, "--strategy", "fine-tune", "--epochs", "1",
                           "--out", tmp_path / "run", *tiny_flags(tiny_weights))
    assert code == 2 and re.match(r"error: The training loss became -?inf at epoch 1, step 1", err)
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()  # nothing half-written before a checkpoint


# --- which split was evaluated: one rule for the library and the CLI --------------------------------------------


def _csv_without_test(tmp_path, class_folder):
    rows = ["path,label,split"]
    for i, image in enumerate(sorted(class_folder.rglob("*.png"))):
        rows.append(f"{image},{image.parent.name},{'val' if i % 4 == 0 else 'train'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_evaluate_says_which_split_and_warns_on_data_the_run_saw(capsys, tmp_path, class_folder, image_tree,
                                                                 tiny_weights):
    """The CLI used to refuse a CSV with a split column (no test rows) that the library evaluated silently on
    all its rows — the data the run trained and early-stopped on."""
    from test_cli import run_cli, tiny_flags

    manifest = _csv_without_test(tmp_path, class_folder)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", manifest, "--strategy", "linear-probe", "--out", run,
                           *tiny_flags(tiny_weights))
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", run, "--json")
    report = json.loads(out)
    assert code == 0 and report["split"] == "all" and report["seen_in_training"] is True
    assert report["n"] == len(list(class_folder.rglob("*.png"))) and "warning:" in err and "optimistic" in err
    library = transferkit.load(run).evaluate()
    assert library["split"] == "all" and library["seen_in_training"] and library["n"] == report["n"]

    tree_run = tmp_path / "tree-run"
    code, _, err = run_cli(capsys, "train", "--data", image_tree, "--strategy", "linear-probe", "--out", tree_run,
                           *tiny_flags(tiny_weights))
    code, out, err = run_cli(capsys, "evaluate", tree_run, "--json")
    report = json.loads(out)
    assert code == 0 and report["split"] == "test" and report["seen_in_training"] is False and report["n"] == 9
    assert "warning" not in err
    other = transferkit.load(tree_run).evaluate(class_folder)  # other data: not the run's, so not "seen"
    assert other["split"] == "all" and other["seen_in_training"] is False


# --- exact resume with DataLoader workers and with an fp16 gradient scaler --------------------------------------


def _interrupted_and_resumed(folder, options, tmp_path, name, at=2):
    from test_training import InterruptAt

    with pytest.raises(KeyboardInterrupt):
        transferkit.train(folder, out=str(tmp_path / name), progress=False, callbacks=[InterruptAt(at)], **options)
    return transferkit.train(resume=tmp_path / name, progress=False)


def _same_weights(a, b):
    from safetensors.torch import load_file

    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_resume_is_exact_with_persistent_workers_and_augmentation(class_folder, tiny_options, tmp_path):
    """Persistent workers kept their own random state: a resumed run augmented differently."""
    options = {**tiny_options, "strategy": "fine-tune", "epochs": 3, "patience": 0, "augment": "light",
               "workers": 2, "batch_size": 4}
    transferkit.train(class_folder, out=str(tmp_path / "full"), progress=False, **options)
    _interrupted_and_resumed(class_folder, options, tmp_path, "cut")
    assert _same_weights(tmp_path / "full", tmp_path / "cut")
    # and the crops do not depend on the number of workers
    transferkit.train(class_folder, out=str(tmp_path / "w0"), progress=False, **{**options, "workers": 0})
    assert _same_weights(tmp_path / "full", tmp_path / "w0")


def test_resume_restores_the_fp16_gradient_scaler(class_folder, tiny_options, tmp_path, monkeypatch):
    """The loss scale of fp16 training was not checkpointed: a resumed run restarted it from its initial value."""
    original = loop_module.make_accelerator
    scalers = []

    def with_scaler(config):
        accelerator = original(config)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
        scalers.append(accelerator.scaler)
        return accelerator

    monkeypatch.setattr(loop_module, "make_accelerator", with_scaler)
    options = {**tiny_options, "strategy": "fine-tune", "epochs": 3, "patience": 0}
    transferkit.train(class_folder, out=str(tmp_path / "full"), progress=False, **options)
    full_scale = scalers[-1].get_scale()
    _interrupted_and_resumed(class_folder, options, tmp_path, "cut")
    assert full_scale > 2.0**8  # the scale grew during the run
    assert scalers[-1].get_scale() == full_scale
    assert _same_weights(tmp_path / "full", tmp_path / "cut")

"""``--budget SECONDS``: phases shortened so their schedules end within the budget, and a clean stop with the best
epoch's weights when it is spent."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import transferkit
from transferkit.strategies import Phase
from transferkit.training.budget import fit_to_budget
from transferkit.training.loop import TrainState


def test_the_current_phase_is_shortened_to_the_epochs_that_fit():
    phases = [Phase("head", 1, runs_on="exact-fit"), Phase("all", 10)]
    state = TrainState(epoch=2, phase_index=1, phase_epoch=1)
    shorter, stop = fit_to_budget(phases, state, False, epoch_seconds=2.0, seconds_left=7.0)
    assert not stop and [p.epochs for p in shorter] == [1, 4]  # 3 more epochs fit after the first
    assert fit_to_budget(phases, state, False, 2.0, 100.0) == (phases, False)  # everything fits: unchanged
    assert fit_to_budget(phases, state, False, 2.0, 1.5)[1]  # not one more epoch fits: stop
    assert fit_to_budget(phases, state, True, 2.0, -1.0)[1]  # spent at a phase boundary: stop
    assert fit_to_budget(phases, state, True, 2.0, 1.0) == (phases, False)  # the next phase measures itself


def test_later_phases_keep_one_epoch_each():
    phases = [Phase("head", 1, runs_on="exact-fit"), Phase("+blocks.5", 3), Phase("+blocks.4", 3), Phase("all", 10)]
    state = TrainState(epoch=2, phase_index=1, phase_epoch=1)
    shorter, stop = fit_to_budget(phases, state, False, epoch_seconds=1.0, seconds_left=3.5)
    assert not stop and [p.epochs for p in shorter] == [1, 2, 3, 10]  # 3 fit: 1 here, 1 for each later phase


def test_the_budget_option_and_its_check():
    assert transferkit.TrainConfig(data="x").budget is None
    assert transferkit.TrainConfig(data="x", budget=60).validate().budget == 60
    with pytest.raises(transferkit.TransferKitError, match="budget"):
        transferkit.TrainConfig(data="x", budget=0).validate()
    # a duration with units, as on the command line or in a recipe file: seconds once validated
    for given, seconds in [("90", 90), ("90s", 90), ("2m", 120), ("1.5h", 5400), ("1h30m", 5400), ("2 min", 120),
                           (" 45 sec ", 45)]:
        assert transferkit.TrainConfig(data="x", budget=given).validate().budget == seconds, given
    for bad in ["60x", "h", "1h 30", "-5s", ""]:
        with pytest.raises(transferkit.TransferKitError, match="90s, 2m or 1h30m"):
            transferkit.TrainConfig(data="x", budget=bad).validate()
    with pytest.raises(transferkit.TransferKitError, match="positive number of seconds"):
        transferkit.TrainConfig(data="x", budget="0m").validate()


def test_a_spent_budget_stops_cleanly_with_the_best_weights(class_folder, tiny_options, tmp_path, caplog):
    """A budget spent before the first epoch ends (10 ms: less than the setup alone takes, on any machine): that
    epoch is the last, its weights are saved and the run folder is finished (loadable, transferkit.json says why it
    stopped), and the log says the setup alone took longer than the budget and what to pass instead."""
    with caplog.at_level("WARNING", logger="transferkit"):
        result = transferkit.train(class_folder, budget=0.01, out=str(tmp_path / "run"),
                                   progress=False, **{**tiny_options, "strategy": "fine-tune", "epochs": 20})
    assert len(result.history) == 1 and result.best_epoch == 1
    info = json.loads((tmp_path / "run" / "transferkit.json").read_text())
    assert info["budget"]["seconds"] == 0.01 and info["budget"]["stopped_by_budget"]
    assert info["budget"]["setup_seconds"] >= 0.01
    said = [r.getMessage() for r in caplog.records if "spent before training started" in r.getMessage()]
    assert len(said) == 1 and "Fix: pass a budget above" in said[0]
    assert info["budget"]["epochs_planned"] == 20 and info["budget"]["epochs_run"] == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert transferkit.load(tmp_path / "run").predict([str(next(class_folder.rglob("*.png")))])


LRS = {"stem": 1e-4, "blocks.0": 1e-4, "blocks.1": 1e-4, "head": 1e-3}


def test_at_a_phase_boundary_the_next_phase_is_fitted_to_its_estimate():
    """The head stage is over. The fine-tuning phase gets the epochs its estimated first epoch fits (its cosine
    ends within the budget); when not one fits, only its top groups train, as many as fit (the head and at least
    one below it); when none fits, the run stops there rather than overrun by an epoch; without an estimate it goes
    on unchanged."""
    phases = [Phase("head", 1, runs_on="exact-fit"), Phase("all", 10, LRS)]
    state = TrainState(epoch=1, phase_index=1, phase_epoch=0)
    assert fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: 35.0) == (phases, True)
    assert fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: None) == (phases, False)
    assert fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: 1.5) == (phases, False)  # 10 fit
    fitted, stop = fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: 6.0)
    assert not stop and fitted[1] == Phase("all", 3, LRS)  # 3 epochs of 6 s fit in 20
    asked = []

    def per_group(groups):  # 10 s an epoch per group that trains: all 4 take 40 s, the top 2 20 s
        asked.append(groups)
        return 10.0 * len(groups)

    fitted, stop = fit_to_budget(phases, state, True, 1.0, 25.0, next_epoch=per_group)
    assert not stop and fitted[1] == Phase("blocks.1..head", 1, {"blocks.1": 1e-4, "head": 1e-3})
    assert asked[0] == ("stem", "blocks.0", "blocks.1", "head") and all(g[-1] == "head" for g in asked)
    assert len(asked) <= 3 and fitted[0] is phases[0]
    assert fit_to_budget(phases, state, True, 1.0, 15.0, next_epoch=per_group) == (phases, True)  # even 2 groups: 20 s


def test_the_epoch_estimate_changes_nothing_and_grows_with_the_training_set():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transferkit.training.budget import EpochEstimate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Dropout(0.5), torch.nn.LazyLinear(2)).train()
    model[1].eval()  # a frozen BatchNorm stays in eval mode; the step is timed in train mode (dropout draws)
    model(torch.randn(2, 3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long)), batch_size=4)
    small = DataLoader(TensorDataset(torch.randn(10, 3, 16, 16), torch.zeros(10, dtype=torch.long)), batch_size=4)
    large = DataLoader(TensorDataset(torch.randn(1000, 3, 16, 16), torch.zeros(1000, dtype=torch.long)), batch_size=4)
    model[0].weight.requires_grad_(False)  # a frozen layer stays frozen; the estimate's gradients touch no .grad
    rng = torch.get_rng_state()
    estimates = [EpochEstimate(model, loader, val, torch.device("cpu"))() for loader in (small, large)]
    assert 0 < estimates[0] < estimates[1]
    # a training sample costs at least an inference one, give or take timing noise: at least 1000 + 8 vs 10 + 8
    assert estimates[1] / estimates[0] > (1000 + 8) / (10 + 8) / 20
    assert model.training and not model[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True, True, True]
    assert all(p.grad is None for p in model.parameters()) and torch.equal(rng, torch.get_rng_state())


def test_the_epoch_estimate_counts_texts_not_keys_and_skips_the_first_forward():
    """A text batch is a dict of token tensors: the per-sample cost divides by its texts, not by its keys (2); a
    first forward that pays a one-time cost (here 0.5 s) does not count; the training step is timed with a
    backward through the trained parameters only, and costs what it costs (here 0.05 s against a 0.01 s forward)."""
    import time

    import torch
    from torch.utils.data import DataLoader

    from transferkit.training.budget import ESTIMATE_SAMPLES, EpochEstimate

    class Slow(torch.autograd.Function):  # a backward that takes 0.04 s
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            time.sleep(0.04)
            return grad

    class Encoder(torch.nn.Module):  # takes the token dict, as transferkit's text models do
        calls = 0
        seen = []

        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
            self.trained = torch.nn.Parameter(torch.ones(2))

        def forward(self, inputs):
            Encoder.calls += 1
            Encoder.seen.append(len(inputs["input_ids"]))
            time.sleep(0.5 if Encoder.calls == 1 else 0.01)
            return Slow.apply(torch.ones(len(inputs["input_ids"]), 2) * self.trained * self.frozen)

    def collate(rows):
        ids = torch.zeros(len(rows), 8, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.zeros(len(rows), dtype=torch.long)

    val = DataLoader(list(range(32)), batch_size=32, collate_fn=collate)
    train = DataLoader(list(range(320)), batch_size=32, collate_fn=collate)
    encoder = Encoder()
    estimate = EpochEstimate(encoder, train, val, torch.device("cpu"))(lambda name: name == "trained")
    # per ESTIMATE_SAMPLES texts: 0.01 s forward (32 validation texts), 0.05 s a training step (320 texts)
    expected = (320 * 0.05 + 32 * 0.01) / ESTIMATE_SAMPLES
    assert expected * 0.9 < estimate < expected * 2 and Encoder.calls == 3
    assert Encoder.seen == [ESTIMATE_SAMPLES] * 3  # a slice of the batch, not its 32 texts
    assert not encoder.frozen.requires_grad and encoder.trained.requires_grad and encoder.trained.grad is None
    # one phase boundary's estimates (the top groups' search) share the slice and its timed forward: 1 call each
    shared = EpochEstimate(encoder, train, val, torch.device("cpu"))
    [shared(lambda name: name == "trained") for _ in range(3)]
    assert Encoder.calls == 3 + 2 + 3


def test_a_run_stops_after_the_head_stage_when_fine_tuning_cannot_fit(class_folder, tiny_options, tmp_path,
                                                                      monkeypatch):
    """Two-stage with a budget of 10 minutes, but an estimate that says a fine-tuning epoch takes far longer (a
    timed step made to look 10^9 times slower): the run ends after the exact head fit, with its weights, saying
    why; with the real estimate the same budget trains both phases."""
    from transferkit.training import budget

    timed = budget._timed
    monkeypatch.setattr(budget, "_timed", lambda run, device: timed(run, device) * 1e9)
    result = transferkit.train(class_folder, budget=600, out=str(tmp_path / "cut"),
                               progress=False, **tiny_options)
    assert [row["phase"] for row in result.history] == ["head"]
    info = json.loads((tmp_path / "cut" / "transferkit.json").read_text())
    assert info["budget"]["stopped_by_budget"] and info["budget"]["epochs_run"] == 1
    monkeypatch.undo()
    full = transferkit.train(class_folder, budget=600, out=str(tmp_path / "full"),
                             progress=False, **tiny_options)
    assert [row["phase"] for row in full.history] == ["head", "all", "all"]  # tiny_options: 2 epochs


def test_the_phase_boundary_estimate_is_logged_whether_it_fits_or_not(caplog):
    """The README promises the log says what the budget estimated: one line per estimate, fit or not."""
    phases = [Phase("head", 1, runs_on="exact-fit"), Phase("all", 10)]
    state = TrainState(epoch=1, phase_index=1, phase_epoch=0)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: 35.0)
        fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: 15.0)
        fit_to_budget(phases, state, True, 1.0, 20.0, next_epoch=lambda groups: None)
    assert [r.getMessage() for r in caplog.records] == [
        "Budget: 20 s left; the next phase's first epoch should take about 35 s",
        "Budget: 20 s left; the next phase's first epoch should take about 15 s",
        "Budget: 1 epoch(s) of all instead of 10 (its LR schedule ends with them)"]


def test_when_fine_tuning_all_groups_cannot_fit_the_top_groups_train(class_folder, tiny_options, tmp_path,
                                                                       monkeypatch):
    """A budget where an epoch of every group does not fit but one of the top two does (the estimate made to
    explode above 2 groups): the phase trains the head and the group below it, the rest keeps its weights."""
    from safetensors.torch import load_file

    from transferkit.training import loop

    real = loop._next_epoch_estimate

    def estimate(*args):
        seconds = real(*args)

        def inflated(groups):
            found = seconds(groups)
            return found if found is None or len(groups) <= 2 else found * 1e9

        return inflated

    monkeypatch.setattr(loop, "_next_epoch_estimate", estimate)
    result = transferkit.train(class_folder, budget=600, out=str(tmp_path / "top"), progress=False,
                               **{**tiny_options, "strategy": "two-stage"})
    phases = [row["phase"] for row in result.history]
    top = phases[-1]
    assert phases[0] == "head" and top.endswith("..head") and top != "all" and len(phases) == 3
    assert set(result.history[-1]["lrs"]) == {top.split("..")[0], "head"}
    info = json.loads((tmp_path / "top" / "transferkit.json").read_text())
    assert info["budget"]["phases"] == {"head": 1, top: 2} and not info["budget"]["stopped_by_budget"]
    trained = load_file(str(tmp_path / "top" / "model.safetensors"))
    original = load_file(tiny_options["weights"])
    stem = [k for k in original if k.startswith("conv_stem")]
    assert stem and all(torch.equal(trained[f"backbone.{k}"], original[k]) for k in stem)


def test_the_plan_says_what_the_budget_will_do(tiny_options):
    """`plan` / `train --dry-run` with --budget: a line that the epochs shown are the most and how they are fitted,
    naming the phase that is estimated first; none without a budget."""
    options = {k: v for k, v in tiny_options.items() if k != "workers"}
    notes = transferkit.plan(num_classes=3, budget="90s", **options).notes
    said = [note for note in notes if note.startswith("Budget")]
    assert len(said) == 1 and "--budget 90 s" in said[0] and "before phase(s) all" in said[0]
    probe = transferkit.plan(num_classes=3, budget=30, **{**options, "strategy": "linear-probe"}).notes
    assert [note for note in probe if note.startswith("Budget")] and "timed training step" not in " ".join(probe)
    assert not [note for note in transferkit.plan(num_classes=3, **options).notes if note.startswith("Budget")]

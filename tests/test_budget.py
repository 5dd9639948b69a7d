"""``--budget SECONDS``: phases shortened so their schedules end within the budget, and a clean stop with the best
epoch's weights when it is spent."""

from __future__ import annotations

import json

import pytest

import transferkit
from transferkit.strategies import Phase
from transferkit.training.loop import TrainState, fit_to_budget


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


def test_a_spent_budget_stops_cleanly_with_the_best_weights(class_folder, tiny_options, tmp_path):
    """A budget spent before the first epoch ends (10 ms: less than the setup alone takes, on any machine): that
    epoch is the last, its weights are saved and the run folder is finished (loadable, transferkit.json says why it
    stopped)."""
    result = transferkit.train(class_folder, strategy="fine-tune", budget=0.01, out=str(tmp_path / "run"),
                               progress=False, **{**tiny_options, "epochs": 20})
    assert len(result.history) == 1 and result.best_epoch == 1
    info = json.loads((tmp_path / "run" / "transferkit.json").read_text())
    assert info["budget"]["seconds"] == 0.01 and info["budget"]["stopped_by_budget"]
    assert info["budget"]["epochs_planned"] == 20 and info["budget"]["epochs_run"] == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert transferkit.load(tmp_path / "run").predict([str(next(class_folder.rglob("*.png")))])

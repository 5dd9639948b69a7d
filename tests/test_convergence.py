"""The convergence rule of a long schedule (patience relative to the schedule, no stopping during warm-up) on
scripted validation curves, the scratch recipe and the LR grid."""

from __future__ import annotations

import math

import pytest

import transferkit
from transferkit.strategies import RECIPES, lr_grid, warmup_cosine
from transferkit.training import EarlyStopping
from transferkit.training import loop as loop_module
from transferkit.training.callbacks import held_epochs


def stop_epoch(curve, stopper, epochs, warmup=0.1):
    """The epoch at which ``stopper`` ends a phase of ``epochs`` epochs scripted by ``curve`` (None: never)."""
    stopper.start_phase(epochs, warmup)
    for epoch, accuracy in enumerate(curve, start=1):
        stopper.update(accuracy, 1.0 - accuracy, epoch)
        if stopper.should_stop:
            return epoch
    return None


def test_relative_patience_stops_on_a_plateau_a_fifth_of_the_schedule_long():
    # rises for 20 epochs, then flat: a 50-epoch schedule with relative 0.2 waits 10 flat epochs
    curve = [round(0.1 + 0.03 * i, 2) for i in range(20)] + [0.67] * 30
    assert stop_epoch(curve, EarlyStopping(patience=3, relative=0.2), epochs=50) == 30
    # the fixed rule would have stopped 3 epochs after the plateau began
    assert stop_epoch(curve, EarlyStopping(patience=3), epochs=50) == 23
    # the relative patience never falls below --patience: 0.2 of 10 epochs is 2, patience 3 wins
    stopper = EarlyStopping(patience=3, relative=0.2)
    stopper.start_phase(10, 0.1)
    assert stopper.current_patience == 3


def test_a_dip_shorter_than_the_patience_does_not_stop_a_long_run():
    curve = [0.5, 0.6, 0.7] + [0.65] * 9 + [0.75, 0.8] + [0.8] * 20  # 9 bad epochs, then better again
    stopper = EarlyStopping(patience=3, relative=0.2)
    assert stop_epoch(curve, stopper, epochs=50) == 14 + 10 and stopper.best_epoch == 14


def test_a_saturated_accuracy_with_a_falling_loss_is_a_plateau():
    stopper = EarlyStopping(patience=3, relative=0.2)
    stopper.start_phase(50, 0.0)
    for epoch in range(1, 30):
        stopper.update(1.0 if epoch >= 5 else 0.5, 1.0 / epoch, epoch)  # accuracy 1.0 from epoch 5, loss falling
        if stopper.should_stop:
            break
    assert epoch == 15  # 10 epochs without a higher accuracy
    assert stopper.best_epoch == 15  # the weights kept: the same accuracy at the lowest loss
    fixed = EarlyStopping(patience=3)  # the default rule counts a lower loss at the same accuracy as progress
    for epoch in range(1, 30):
        fixed.update(1.0, 1.0 / epoch, epoch)
    assert not fixed.should_stop


def test_no_stopping_during_warm_up():
    # flat (even falling) while the LR warms up over the first 10 of 100 epochs, then climbing
    curve = [0.3] + [0.2] * 9 + [0.3 + 0.01 * i for i in range(40)]
    assert stop_epoch(curve, EarlyStopping(patience=3, relative=0.05), epochs=100) is None  # patience 5 < 9 flat
    # without the warm-up exemption the same patience would end the run in the warm-up
    assert stop_epoch(curve, EarlyStopping(patience=3, relative=0.05), epochs=100, warmup=0.0) == 6
    # and a plateau after the warm-up still stops it
    assert stop_epoch([0.3] * 10 + [0.4] * 10, EarlyStopping(patience=3, relative=0.05), epochs=100) == 16


def test_relative_patience_is_opt_in_and_zero_turns_stopping_off():
    stopper = EarlyStopping(patience=2)
    stopper.start_phase(100, 0.1)  # the loop calls it for every phase; without relative it changes nothing
    assert stopper.current_patience == 2 and stop_epoch([0.5, 0.4, 0.4], stopper, 100) == 3
    assert stop_epoch([0.5] + [0.4] * 60, EarlyStopping(patience=0, relative=0.2), epochs=50) is None


def test_relative_patience_survives_a_resume():
    stopper = EarlyStopping(patience=3, relative=0.2)
    assert stop_epoch([0.5, 0.6] + [0.6] * 8, stopper, epochs=50) is None  # epochs 3-5 are the warm-up
    resumed = EarlyStopping(patience=3, relative=0.2)
    resumed.load_state_dict(stopper.state_dict())
    resumed.start_phase(50, 0.1)  # called again when the loop re-enters the phase
    assert resumed.bad_epochs == 5 and resumed.current_patience == 10
    assert stop_epoch([0.6] * 5, resumed, epochs=50) == 5


def test_the_loop_applies_the_relative_rule_per_phase(class_folder, tiny_options, tmp_path, monkeypatch):
    """Through ``train``: a 6-epoch phase with --patience-fraction 0.3 waits 2 flat epochs (--patience 1 alone
    would stop at the first worse epoch), and the warm-up epochs (the first 2) do not count."""
    sequence = iter([0.5, 0.4, 0.6, 0.6, 0.6, 0.6])
    monkeypatch.setattr(loop_module, "evaluate_loss", lambda *a, **k: {"loss": 1.0, "accuracy": next(sequence)})
    result = transferkit.train(class_folder, patience=1, patience_fraction=0.3, warmup=0.2,
                               out=str(tmp_path / "run"), progress=False,
                               **{**tiny_options, "strategy": "scratch", "epochs": 6})
    # epoch 2 (worse, inside the warm-up) does not count; best at 3, then 2 flat epochs: stops at 5 of 6
    assert result.best_epoch == 3 and len(result.history) == 5


def test_scratch_recipe_gets_more_epochs_on_small_data():
    recipe = RECIPES["scratch"]
    assert recipe.resolve(False, 10_000, 32)["epochs"] == 40  # 312 steps per epoch: the budget as it stands
    assert recipe.resolve(False, 300, 32)["epochs"] == 134  # 9 steps per epoch: 1,200 steps
    assert recipe.resolve(False, 100, 32)["epochs"] == 200  # 3 steps per epoch: capped
    assert recipe.resolve(False, 100, 32)["patience_fraction"] == 0.2
    assert RECIPES["two-stage"].resolve(False, 100, 32) == {}  # transfer strategies keep train's defaults
    assert recipe.resolve(True, 10_000, 32)["lr"] < recipe.resolve(False, 10_000, 32)["lr"]


@pytest.mark.parametrize("center, grid", [(3e-3, [1e-3, 3e-3, 1e-2]), (1e-4, [3e-5, 1e-4, 3e-4]),
                                          (3e-5, [1e-5, 3e-5, 1e-4]), (5e-4, [1e-4, 3e-4, 1e-3])])
def test_lr_grid_is_the_1_3_10_grid_around_the_recipe(center, grid):
    assert lr_grid(center) == pytest.approx(grid)
    assert lr_grid(1e-3, 5) == pytest.approx([1e-4, 3e-4, 1e-3, 3e-3, 1e-2])


# --- train's default: early stopping that does not fight the schedule (issue 16) ---------------------------------

# the fine-tuning stage of two-stage after an exact probe at 0.83: its first high-LR epochs dip below the probe (and
# below its own first epoch), then the decaying LR lets it climb past the probe
DIP = [0.81, 0.78, 0.77, 0.79, 0.80, 0.80, 0.82, 0.83, 0.845, 0.85, 0.86, 0.865, 0.87, 0.872, 0.872, 0.871, 0.872,
       0.871, 0.870, 0.871]


def defaults() -> EarlyStopping:
    """The rule ``train`` builds from its option defaults."""
    config = transferkit.TrainConfig(data="x")
    return EarlyStopping(config.patience, relative=config.patience_fraction, after_lr=config.patience_after_lr)


def test_the_fine_tune_dip_ends_the_phase_after_4_epochs_under_the_old_rule_but_not_by_default():
    assert stop_epoch(DIP, EarlyStopping(patience=3), epochs=20) == 4  # the run returned the probe (issue 16)
    stopper = defaults()
    stopper.update(0.83, 0.5, 0)  # the exact probe's epoch
    stopper.new_phase()
    # judged from epoch 11; the best (epoch 14) is followed by 4 epochs without a higher accuracy
    assert stop_epoch(DIP, stopper, epochs=20) == 18
    assert stopper.best == 0.872 and stopper.best_epoch == 14


def test_no_stopping_while_the_lr_is_above_half_its_peak():
    assert held_epochs(20, 0.1, 0.5) == 10 and held_epochs(10, 0.1, 0.5) == 5 and held_epochs(4, 0.1, 0.5) == 2
    assert held_epochs(20, 0.1, 1.0) == 2 == math.ceil(0.1 * 20)  # 1.0: the warm-up alone (the old relative rule)
    assert held_epochs(20, 0.0, 0.5) == 9  # no warm-up: the cosine is at half its peak half way through
    # check against the loop's own schedule: epochs held are exactly those ending above half the peak LR
    for epochs, warmup in ((20, 0.1), (10, 0.1), (7, 0.2), (50, 0.0)):
        steps = 3
        schedule = warmup_cosine(epochs * steps, warmup)
        above = [e for e in range(1, epochs + 1) if e * steps < epochs * steps and schedule(e * steps) > 0.5 + 1e-9]
        warm = math.ceil(warmup * epochs - 1e-9)
        assert held_epochs(epochs, warmup, 0.5) == max(warm, len(above)), (epochs, warmup)
    # a flat curve: a 10-epoch phase is judged from epoch 6, patience 3 -> stops at 8; 20 epochs: 11 + 4 -> 14
    assert stop_epoch([0.5] * 10, defaults(), epochs=10) == 8
    assert stop_epoch([0.5] * 20, defaults(), epochs=20) == 14
    with pytest.raises(ValueError):
        held_epochs(10, 0.1, 0.0)


def test_the_default_rule_in_the_options_and_its_check():
    config = transferkit.TrainConfig(data="x")
    assert (config.patience, config.patience_fraction, config.patience_after_lr) == (3, 0.2, 0.5)
    with pytest.raises(transferkit.TransferKitError, match="patience_after_lr"):
        transferkit.TrainConfig(data="builtin:digits", patience_after_lr=0.0).validate()
    # compare's scratch recipe keeps the rule it was measured with (the warm-up alone is exempt)
    assert RECIPES["scratch"].options["patience_after_lr"] == 1.0


def test_the_loop_does_not_end_a_fine_tune_phase_in_its_high_lr_epochs(class_folder, tiny_options, tmp_path,
                                                                       monkeypatch):
    """Through ``train`` with the defaults: two-stage, the exact probe at 0.83, then a 20-epoch fine-tuning phase
    dipping below it in its first epochs: the phase runs on and its best epoch is kept."""
    curve = iter(DIP)
    monkeypatch.setattr(loop_module, "evaluate_loss", lambda *a, **k: {"loss": 0.5, "accuracy": next(curve)})
    real_fit = loop_module.exact_head_fit

    def probe_at(*args, **kwargs):
        train_metrics, _ = real_fit(*args, **kwargs)
        return train_metrics, {"loss": 0.5, "accuracy": 0.83}

    monkeypatch.setattr(loop_module, "exact_head_fit", probe_at)
    result = transferkit.train(class_folder, out=str(tmp_path / "run"), progress=False,
                               **{**tiny_options, "strategy": "two-stage", "epochs": 20, "image_size": 16})
    assert len(result.history) == 19 and result.best_epoch == 15  # probe + 18; best: the fine-tuned epoch 14
    assert result.history[-1]["phase"] == "all"


def test_a_real_tiny_run_is_not_stopped_while_the_lr_is_high(class_folder, tiny_options, tmp_path):
    """No scripted curve: a tiny fine-tune of 8 epochs with patience 1 is judged only from epoch 5 (its LR above half
    the peak until then), so at least 5 epochs run whatever the validation accuracy does."""
    result = transferkit.train(class_folder, patience=1, out=str(tmp_path / "run"),
                               progress=False,
                               **{**tiny_options, "strategy": "fine-tune", "epochs": 8, "lr": 0.05, "image_size": 16})
    assert len(result.history) >= held_epochs(8, 0.1, 0.5) + 2 == 6  # 4 held, then a patience of 2
    assert (tmp_path / "run" / "transferkit.json").is_file()

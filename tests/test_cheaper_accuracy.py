"""Cheaper accuracy (issue 16 part 4), opt-in: --ema (weight average), --tta flip, --schedule single."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import transferkit
from conftest import make_class_folders
from test_training import InterruptAt
from transferkit.errors import TransferKitError
from transferkit.predict import check_tta
from transferkit.strategies import Phase, schedule_span
from transferkit.training.callbacks import EarlyStopping, held_epochs
from transferkit.training.ema import WeightAverage
from transferkit.training.loop import FitConfig, TrainState, _lr_setter, flip_tta_log_probs

# --- EMA ----------------------------------------------------------------------------------------------------------


def test_ema_with_decay_0_is_the_live_weights_and_a_one_parameter_average_is_the_hand_computed_one():
    model = nn.Linear(1, 1, bias=False)
    tracking, average = WeightAverage(model, 0.0), WeightAverage(model, 0.9)
    values, expected = [1.0, 3.0, -2.0, 5.0], None
    for value in values:
        model.weight.data.fill_(value)
        tracking.update(model)
        average.update(model)
        expected = value if expected is None else 0.9 * expected + 0.1 * value  # the first update copies
        assert tracking.module.weight.item() == value
        assert average.module.weight.item() == pytest.approx(expected, abs=1e-6)
    # 1, 1.2, 0.88, 1.292
    assert average.updates == 4 and average.module.weight.item() == pytest.approx(1.292, abs=1e-6)
    average.restart(model)  # e.g. after the exact head fit: starts again at the weights
    assert average.module.weight.item() == 5.0
    assert model.weight is not average.module.weight  # a copy, never the live tensor


def test_ema_averages_batchnorm_statistics_and_copies_its_counter():
    model = nn.BatchNorm1d(1)
    average = WeightAverage(model, 0.5)
    model.running_mean.fill_(2.0)
    model.num_batches_tracked.fill_(7)
    average.update(model)  # copy
    model.running_mean.fill_(4.0)
    model.num_batches_tracked.fill_(9)
    average.update(model)
    assert average.module.running_mean.item() == 3.0  # averaged like a weight
    assert average.module.num_batches_tracked.item() == 9  # an integer counter: copied


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory, tiny_weights):
    """A two-stage run with --ema, the same run interrupted mid phase 2, and that run resumed."""
    tmp_path = tmp_path_factory.mktemp("ema")
    data = make_class_folders(tmp_path / "photos")
    options = {"model": "timm:test_efficientnet", "weights": str(tiny_weights), "image_size": 32, "batch_size": 8,
               "workers": 0, "strategy": "two-stage", "epochs": 2, "head_epochs": 1, "patience": 0,
               "augment": "light", "ema": 0.8, "keep": "last"}
    full = transferkit.train(data, out=str(tmp_path / "full"), progress=False, **options)
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(data, out=str(tmp_path / "cut"), progress=False, callbacks=[InterruptAt(2)], **options)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["train"]
    assert (state["phase_index"], state["phase_epoch"]) == (1, 1)  # mid phase 2
    assert (tmp_path / "cut" / "checkpoint" / "ema.safetensors").is_file()
    return SimpleNamespace(path=tmp_path, full=full, resumed=transferkit.train(resume=tmp_path / "cut",
                                                                                progress=False))


def test_ema_resume_equals_an_uninterrupted_run_and_the_run_keeps_the_average(ema_runs):
    tmp_path, full, resumed = ema_runs.path, ema_runs.full, ema_runs.resumed
    a, b = full.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]
    # the run's weights are the average's, not the live weights of the last step
    from transferkit.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "full")
    live, average = checkpoint.model, {k[len("module."):]: v for k, v in checkpoint.ema.items() if k != "n_averaged"}
    assert all(torch.equal(a[k], average[k]) for k in a)
    assert not all(torch.equal(a[k], live[k]) for k in a)
    info = json.loads((tmp_path / "full" / "transferkit.json").read_text())
    assert (info["config"]["ema"], info["config"]["tta"], info["config"]["schedule"]) == (0.8, "none", "per-phase")


# --- TTA ----------------------------------------------------------------------------------------------------------


class Probe(nn.Module):
    """Logits that depend on where the bright pixels are, so a flip changes them."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))  # (classes, width)

    def forward(self, x):
        return x.mean(dim=(1, 2)) @ self.weight.T


def test_flip_tta_is_the_mean_of_the_two_softmaxes_and_changes_nothing_on_a_symmetric_image():
    net, images = Probe(), torch.rand(4, 3, 8, 8)
    mean = (torch.softmax(net(images), 1) + torch.softmax(net(images.flip(-1)), 1)) / 2
    assert torch.allclose(flip_tta_log_probs(net, images).exp(), mean, atol=1e-6)
    assert not torch.allclose(mean, torch.softmax(net(images), 1), atol=1e-3)
    symmetric = (images + images.flip(-1)) / 2
    assert torch.allclose(flip_tta_log_probs(net, symmetric).exp(), torch.softmax(net(symmetric), 1), atol=1e-6)


def test_trained_model_tta_on_predict_and_the_runs_own_setting(ema_runs):
    run = ema_runs.path / "full"
    plain, flipped = transferkit.load(run), transferkit.load(run, tta="flip")
    assert plain.tta == "none" and flipped.tta == "flip"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    symmetric = np.repeat(image[:, :1], 32, axis=1)  # each row one colour: unchanged by a flip, a resize, a crop
    assert np.allclose(plain.predict_proba([symmetric]), flipped.predict_proba([symmetric]), atol=1e-6)
    x = plain.transform(Image.fromarray(image))[None]  # the model's input; its flip is the flipped input tensor
    with torch.no_grad():
        both = (torch.softmax(plain.model(x), 1) + torch.softmax(plain.model(x.flip(-1)), 1)) / 2
    assert np.allclose(flipped.predict_proba([image]), both.numpy(), atol=1e-6)
    assert not np.allclose(plain.predict_proba([image]), both.numpy(), atol=1e-4)
    assert flipped.evaluate()["n"] > 0


def test_tta_refusals_name_the_fix():
    with pytest.raises(TransferKitError, match="--tta flip is implemented for image classification.*Fix: drop --tta"):
        transferkit.TrainConfig(data="builtin:bbc-news", model="minilm-l6", tta="flip").validate()
    with pytest.raises(TransferKitError, match="--task segmentation is not supported. Fix: drop --tta"):
        transferkit.TrainConfig(data="builtin:fashion-scenes", task="segmentation", tta="flip").validate()
    with pytest.raises(TransferKitError, match="language model. Fix: drop --tta"):  # load(run, tta=...) checks it
        check_tta("flip", is_text=True, task="classification")
    with pytest.raises(TransferKitError, match="detection model. Fix: drop --tta"):
        check_tta("flip", is_text=False, task="detection")
    with pytest.raises(TransferKitError, match="'tta' parameter"):
        transferkit.TrainConfig(data="builtin:digits", tta="five-crop").validate()
    with pytest.raises(TransferKitError, match="'ema' parameter"):
        transferkit.TrainConfig(data="builtin:digits", ema=1.0).validate()


# --- one schedule across phases -----------------------------------------------------------------------------------


def _lr_curve(phases: list[Phase], schedule: str, steps: int = 4) -> list[float]:
    """The head's LR at every step of the run, as the loop sets it, over every epoch of every phase."""
    optimizer = SimpleNamespace(param_groups=[{"layer_group": "head", "lr": 0.0}])
    config, curve = FitConfig(warmup=0.1, schedule=schedule), []
    for index, phase in enumerate(phases):
        for epoch in range(phase.epochs):
            setter = _lr_setter(optimizer, phases, TrainState(phase_index=index, phase_epoch=epoch), steps, config)
            for step in range(steps):
                setter(step)
                curve.append(optimizer.param_groups[0]["lr"])
    return curve


def test_single_schedule_warms_up_once_then_decays_monotonically_across_phase_boundaries():
    phases = [Phase("head", 2, {"head": 1.0}, runs_on="features"), *[Phase(f"+g{i}", 1, {"head": 1.0})
                                                                     for i in range(3)], Phase("all", 4, {"head": 1.0})]
    curve = _lr_curve(phases, "single")
    peak = int(np.argmax(curve))
    assert peak <= round(0.1 * len(curve)) and curve[0] < curve[peak]
    assert all(a <= b for a, b in zip(curve[:peak], curve[1:peak + 1], strict=True))  # one warm-up
    assert all(a >= b for a, b in zip(curve[peak:], curve[peak + 1:], strict=False))  # then never up again
    per_phase = _lr_curve(phases, "per-phase")
    rises = sum(b > a for a, b in zip(per_phase, per_phase[1:], strict=False))
    assert rises > len(phases)  # today's: a warm-up in every phase
    # an exact fit takes no optimizer step: it has no place on the one schedule
    exact = [Phase("head", 3, {"head": 1.0}, runs_on="exact-fit"), Phase("all", 5, {"head": 1.0})]
    assert schedule_span(exact, 1, "single") == (0, 5) and schedule_span(exact, 1, "per-phase") == (0, None)


def test_patience_after_lr_reads_the_single_schedule():
    # 10 epochs in one schedule (warm-up 0.1, after_lr 0.5): epochs 1-5 end above half the peak (judged from 6 on)
    assert held_epochs(10, 0.1, 0.5) == 5
    assert [held_epochs(e, 0.1, 0.5, offset, 10) for offset, e in ((0, 3), (3, 1), (4, 1), (5, 5))] == [3, 1, 1, 0]
    stopper = EarlyStopping(3, after_lr=0.5)
    stopper.start_phase(5, 0.1, 5, 10)  # the last phase starts after the LR halved: every epoch counts
    assert stopper.warmup_epochs == 0
    stopper.start_phase(5, 0.1)  # its own schedule: a new warm-up and cosine, its first 2 held
    assert stopper.warmup_epochs == held_epochs(5, 0.1, 0.5) == 2


def test_plan_prints_the_schedule_and_the_options(class_folder, tiny_options):
    plan = transferkit.plan(class_folder, **{**tiny_options, "strategy": "progressive", "schedule": "single",
                                             "ema": 0.99, "tta": "flip"})
    text = str(plan)
    assert "--schedule single: one warm-up over 10% of the run's steps, then one cosine across every phase" in text
    assert "Weight average (--ema 0.99)" in text and "Test-time augmentation (--tta flip)" in text
    assert plan.to_dict()["schedule"] == "single"
    assert "--schedule per-phase: each phase warms up" in str(transferkit.plan(class_folder, **tiny_options))

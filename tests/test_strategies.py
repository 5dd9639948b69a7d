"""Strategies as phases: trainable sets, BatchNorm modes and learning rates per parameter group."""

from __future__ import annotations

import pytest
from torch import nn

from transferkit.errors import TransferKitError
from transferkit.models import load_model
from transferkit.strategies import (
    DEFAULT_HEAD_LR,
    DEFAULT_LR,
    DEFAULT_SCRATCH_LR,
    apply_phase,
    build_phases,
    param_groups,
    set_train_mode,
    uses_pretrained_weights,
    warmup_cosine,
)


@pytest.fixture(scope="module")
def model():
    return load_model("timm:test_efficientnet", 3, pretrained=False)


def trainable(model):
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def bn_modes(model):
    return {m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)}


def lrs_by_group(model, groups, phase):
    return {g["name"].split("/")[0]: g["lr"] for g in param_groups(model, groups, phase, 0.01)}


def test_linear_probe_trains_only_the_head_with_frozen_batchnorm(model):
    groups = model.layer_groups()
    (phase,) = build_phases("linear-probe", groups, epochs=4)
    apply_phase(model, groups, phase)
    set_train_mode(model)
    assert trainable(model) == {"head"}
    assert bn_modes(model) == {False} and not model.backbone.training and model.head.training
    assert lrs_by_group(model, groups, phase) == {"head": DEFAULT_HEAD_LR}


def test_fine_tune_trains_everything_with_a_smaller_backbone_lr(model):
    groups = model.layer_groups()
    (phase,) = build_phases("fine-tune", groups, epochs=4)
    apply_phase(model, groups, phase)
    set_train_mode(model)
    assert trainable(model) == {"backbone", "head"}
    assert bn_modes(model) == {True}
    lrs = lrs_by_group(model, groups, phase)
    assert lrs.pop("head") == DEFAULT_HEAD_LR and set(lrs.values()) == {DEFAULT_LR}
    assert len(lrs) == len(groups) - 1


def test_two_stage_is_head_then_all(model):
    groups = model.layer_groups()
    head, full = build_phases("two-stage", groups, epochs=5, head_epochs=2, lr=2e-5, head_lr=5e-3)
    assert (head.epochs, full.epochs) == (2, 5)
    apply_phase(model, groups, head)
    assert trainable(model) == {"head"}
    assert lrs_by_group(model, groups, head) == {"head": 5e-3}
    apply_phase(model, groups, full)
    assert trainable(model) == {"backbone", "head"}
    assert set(lrs_by_group(model, groups, full).values()) == {2e-5}


def test_scratch_uses_random_weights_and_a_from_scratch_lr(model):
    groups = model.layer_groups()
    (phase,) = build_phases("scratch", groups, epochs=3)
    assert not uses_pretrained_weights("scratch") and uses_pretrained_weights("two-stage")
    assert set(lrs_by_group(model, groups, phase).values()) == {DEFAULT_SCRATCH_LR}
    assert 1e-3 <= DEFAULT_SCRATCH_LR <= 1e-2


def test_no_weight_decay_on_biases_and_norms(model):
    groups = model.layer_groups()
    (phase,) = build_phases("fine-tune", groups, epochs=1)
    for group in param_groups(model, groups, phase, weight_decay=0.05):
        dims = {p.ndim for p in group["params"]}
        assert (group["weight_decay"] == 0.0) == (dims == {1})


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_fraction=0.1)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert warmup_cosine(10, 0.0)(0) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "freeze-all"}, "'strategy' parameter must be one of linear-probe"),
    ({"strategy": "fine-tune", "epochs": 0}, "'epochs' parameter must be a positive integer"),
    ({"strategy": "fine-tune", "lr": 5.0}, "'lr' parameter must be a learning rate"),
])
def test_bad_strategy_values(model, kwargs, message):
    kwargs.setdefault("epochs", 1)
    with pytest.raises(TransferKitError, match=message):
        build_phases(groups=model.layer_groups(), **kwargs)


def test_bn_policy_auto_freezes_pretrained_and_small_batches():
    from transferkit.strategies import resolve_bn_policy

    assert resolve_bn_policy("auto", "two-stage", 32) == "freeze"
    assert resolve_bn_policy("auto", "scratch", 32) == "train"
    assert resolve_bn_policy("auto", "scratch", 8) == "freeze"
    assert resolve_bn_policy("train", "fine-tune", 32) == "train"
    with pytest.raises(TransferKitError, match="'bn' parameter must be one of auto, freeze, train"):
        resolve_bn_policy("sometimes", "fine-tune", 32)


def test_bn_freeze_keeps_statistics_but_affine_weights_train(model):
    groups = model.layer_groups()
    (phase,) = build_phases("fine-tune", groups, epochs=1)
    apply_phase(model, groups, phase)
    set_train_mode(model, "freeze")
    assert bn_modes(model) == {False} and model.head.training
    assert all(p.requires_grad for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())

"""Strategies as phases: trainable sets, BatchNorm modes, LRs per group, LR policies, progressive unfreezing."""

from __future__ import annotations

import pytest
import torch
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
    resolve_bn_policy,
    set_phase_lrs,
    set_train_mode,
    uses_pretrained_weights,
    warmup_cosine,
)


@pytest.fixture(scope="module")
def model():
    return load_model("timm:test_efficientnet", 3, pretrained=False)


def trainable_groups(model, groups):
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    return [g.name for g in groups if all(flags[n] for n in g.param_names)]


def bn_modes(model):
    return {m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)}


def optimizer_lrs(model, groups, phase, multiplier=1.0):
    optimizer = torch.optim.AdamW(param_groups(model, groups, weight_decay=0.01))
    set_phase_lrs(optimizer, phase, multiplier)
    return {g["layer_group"]: g["lr"] for g in optimizer.param_groups}


def test_linear_probe_trains_only_the_head_with_frozen_batchnorm(model):
    groups = model.layer_groups()
    (phase,) = build_phases("linear-probe", groups, epochs=4)
    apply_phase(model, groups, phase)
    set_train_mode(model)
    assert trainable_groups(model, groups) == ["head"]
    assert bn_modes(model) == {False} and not model.backbone.training and model.head.training
    lrs = optimizer_lrs(model, groups, phase)
    assert lrs.pop("head") == DEFAULT_HEAD_LR and set(lrs.values()) == {0.0}


def test_fine_tune_trains_everything_with_a_smaller_backbone_lr(model):
    groups = model.layer_groups()
    (phase,) = build_phases("fine-tune", groups, epochs=4)
    apply_phase(model, groups, phase)
    set_train_mode(model, "train")
    assert trainable_groups(model, groups) == [g.name for g in groups]
    assert bn_modes(model) == {True}
    lrs = optimizer_lrs(model, groups, phase, multiplier=0.5)
    assert lrs.pop("head") == DEFAULT_HEAD_LR * 0.5 and set(lrs.values()) == {DEFAULT_LR * 0.5}
    assert len(lrs) == len(groups) - 1


def test_two_stage_is_head_then_all(model):
    groups = model.layer_groups()
    head, full = build_phases("two-stage", groups, epochs=5, head_epochs=2, lr=2e-5, head_lr=5e-3)
    assert (head.epochs, full.epochs) == (2, 5)
    apply_phase(model, groups, head)
    assert trainable_groups(model, groups) == ["head"] and head.lrs == {"head": 5e-3}
    apply_phase(model, groups, full)
    assert trainable_groups(model, groups) == [g.name for g in groups]
    assert set(full.lrs.values()) == {2e-5}


def test_scratch_uses_random_weights_and_a_from_scratch_lr(model):
    groups = model.layer_groups()
    (phase,) = build_phases("scratch", groups, epochs=3)
    assert not uses_pretrained_weights("scratch") and uses_pretrained_weights("two-stage")
    assert set(phase.lrs.values()) == {DEFAULT_SCRATCH_LR}
    assert 1e-3 <= DEFAULT_SCRATCH_LR <= 1e-2


def test_progressive_unfreezes_one_group_per_step_from_the_top(model):
    groups = model.layer_groups()
    names = [g.name for g in groups]
    phases = build_phases("progressive", groups, epochs=4, head_epochs=2, unfreeze_every=1)
    assert [p.epochs for p in phases] == [2] + [1] * (len(names) - 2) + [4]
    for k, phase in enumerate(phases):
        apply_phase(model, groups, phase)
        assert trainable_groups(model, groups) == names[len(names) - 1 - k:]  # the top k+1 groups
        assert phase.lrs["head"] == DEFAULT_HEAD_LR
        assert all(phase.lrs[n] == DEFAULT_LR for n in phase.lrs if n != "head")
    assert phases[-1].name == "all" and phases[1].name == f"+{names[-2]}"


def test_progressive_per_epoch_schedule_with_max_unfrozen(model):
    groups = model.layer_groups()
    phases = build_phases("progressive", groups, epochs=3, head_epochs=1, unfreeze_every=2, max_unfrozen=3)
    per_epoch = [sorted(p.lrs) for p in phases for _ in range(p.epochs)]
    top = [g.name for g in groups][-3:]
    assert per_epoch == [["head"], sorted(top[1:]), sorted(top[1:]), sorted(top), sorted(top), sorted(top)]
    with pytest.raises(TransferKitError, match="'max_unfrozen' parameter"):
        build_phases("progressive", groups, epochs=1, max_unfrozen=1)


def test_explicit_lrs_are_spread_over_the_groups(model):
    groups = model.layer_groups()
    names = [g.name for g in groups]
    (phase,) = build_phases("fine-tune", groups, epochs=1, lrs=(1e-5, 1e-4, 1e-3))
    body = [phase.lrs[n] for n in names[:-1]]
    half = len(body) // 2
    assert body == [1e-5] * half + [1e-4] * (len(body) - half) and phase.lrs["head"] == 1e-3
    (single,) = build_phases("fine-tune", groups, epochs=1, lrs=(3e-4,))
    assert set(single.lrs.values()) == {3e-4}


def test_lr_decay_is_geometric_from_the_head_down(model):
    groups = model.layer_groups()
    names = [g.name for g in groups]
    (phase,) = build_phases("fine-tune", groups, epochs=1, head_lr=1e-3, lr_decay=0.5)
    expected = [1e-3 * 0.5 ** (len(names) - 1 - i) for i in range(len(names))]
    assert [phase.lrs[n] for n in names] == pytest.approx(expected)
    with pytest.raises(TransferKitError, match="either --lrs or --lr-decay"):
        build_phases("fine-tune", groups, epochs=1, lrs=(1e-4,), lr_decay=0.5)


def test_discriminative_lrs_apply_to_two_stage_and_scratch(model):
    groups = model.layer_groups()
    head, full = build_phases("two-stage", groups, epochs=2, lr_decay=0.5)
    assert head.lrs == {"head": DEFAULT_HEAD_LR} and len(set(full.lrs.values())) == len(groups)
    (scratch,) = build_phases("scratch", groups, epochs=1, lrs=(1e-3, 1e-2))
    assert scratch.lrs["head"] == 1e-2 and scratch.lrs[groups[0].name] == 1e-3


def test_no_weight_decay_on_biases_and_norms(model):
    groups = model.layer_groups()
    for group in param_groups(model, groups, weight_decay=0.05):
        dims = {p.ndim for p in group["params"]}
        assert (group["weight_decay"] == 0.0) == (dims == {1})
    l2sp = param_groups(model, groups, weight_decay=0.05, no_decay_groups=frozenset(g.name for g in groups[:-1]))
    assert {g["layer_group"] for g in l2sp if g["weight_decay"] > 0} == {"head"}


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_fraction=0.1)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert warmup_cosine(10, 0.0)(0) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "freeze-all"}, "'strategy' parameter must be one of linear-probe"),
    ({"strategy": "fine-tune", "epochs": 0}, "'epochs' parameter must be a positive integer"),
    ({"strategy": "fine-tune", "lr": 5.0}, "'lr' parameter must be a learning rate"),
    ({"strategy": "fine-tune", "lr_decay": 1.5}, "'lr_decay' parameter must be a factor in"),
])
def test_bad_strategy_values(model, kwargs, message):
    kwargs.setdefault("epochs", 1)
    with pytest.raises(TransferKitError, match=message):
        build_phases(groups=model.layer_groups(), **kwargs)


def test_bn_policy_auto_freezes_pretrained_and_small_batches():
    assert resolve_bn_policy("auto", "two-stage", 32) == "freeze"
    assert resolve_bn_policy("auto", "scratch", 32) == "train"
    assert resolve_bn_policy("auto", "scratch", 8) == "freeze"
    assert resolve_bn_policy("train", "fine-tune", 32) == "train"
    with pytest.raises(TransferKitError, match="'bn' parameter must be one of auto, freeze, train"):
        resolve_bn_policy("sometimes", "fine-tune", 32)


def test_bn_modes_per_policy(model):
    groups = model.layer_groups()
    phases = build_phases("progressive", groups, epochs=1, head_epochs=1)
    apply_phase(model, groups, phases[1])  # only the top backbone group and the head train
    set_train_mode(model, "train")
    top = groups[-2].param_names
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training == (f"{name}.weight" in top), name  # frozen groups keep statistics
    apply_phase(model, groups, phases[-1])
    set_train_mode(model, "freeze")
    assert bn_modes(model) == {False} and model.head.training
    assert all(p.requires_grad for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())

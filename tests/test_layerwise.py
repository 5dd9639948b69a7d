"""Layer groups for any architecture, L2-SP, the normalisation check, plan / --dry-run, progressive resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit
from test_training import InterruptAt
from transferkit.data.checks import check_normalization
from transferkit.errors import TransferKitError
from transferkit.models import Preprocessing, coarsen, group_backbone
from transferkit.models.groups import group_encoder_layers
from transferkit.training.regularizers import l2_sp_penalty, snapshot_backbone


class Swapped(nn.Module):
    """Registration order differs from execution order: ``late`` is registered first but runs last."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(8, 4)
        self.early = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.late(self.early(x).mean(dim=(2, 3)))


def test_fallback_groups_follow_the_forward_pass():
    groups = group_backbone(Swapped(), torch.zeros(1, 3, 8, 8))
    assert [g.name for g in groups] == ["early", "late"]
    sequential = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    groups = group_backbone(sequential, torch.zeros(1, 3, 6, 6))
    assert [g.name for g in groups] == ["0", "2", "4"]


def test_encoder_layer_convention():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(10, 4)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.pooler = nn.Linear(4, 4)

    groups = group_encoder_layers(Encoder())
    assert [g.name for g in groups] == ["embeddings", "layer.0", "layer.1", "layer.2", "final"]
    assert groups[2].param_names == ("encoder.layer.1.weight", "encoder.layer.1.bias")


@pytest.mark.parametrize("spec, expected", [
    ("timm:resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("timm:efficientnet_b0", ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5",
                              "blocks.6+conv_head+bn2", "head"]),
    ("timm:vit_tiny_patch16_224", ["stem"] + [f"blocks.{i}" for i in range(11)] + ["blocks.11+norm", "head"]),
])
def test_group_order_for_real_architectures(spec, expected):
    model = transferkit.load_model(spec, 3, pretrained=False)
    assert [g.name for g in model.layer_groups()] == expected


def test_coarsen_keeps_order_and_the_head():
    model = transferkit.load_model("efficientnet_lite0", 3, pretrained=False)
    groups = model.layer_groups()
    four = model.layer_groups(4)
    assert len(four) == 4 and four[-1] == groups[-1] and four[0].name.startswith("stem")
    assert [p for g in four for p in g.param_names] == [p for g in groups for p in g.param_names]
    assert coarsen(groups, 50) == groups
    with pytest.raises(TransferKitError, match="'groups' parameter"):
        coarsen(groups, 1)


def test_l2_sp_is_zero_at_the_start_and_positive_after_a_step():
    model = transferkit.load_model("timm:test_efficientnet", 3, pretrained=False)
    reference = snapshot_backbone(model)
    assert reference and all(name.startswith("backbone.") for name in reference)
    assert float(l2_sp_penalty(model, reference, alpha=0.1).detach()) == 0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    penalty = l2_sp_penalty(model, reference, alpha=0.1)
    assert penalty.requires_grad and float(penalty.detach()) > 0
    with torch.no_grad():
        drift = sum((p - reference[n]).pow(2).sum() for n, p in model.named_parameters() if n in reference)
    assert float(penalty.detach()) == pytest.approx(0.05 * float(drift), rel=1e-5)


LITE = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=8, crop_pct=1.0, interpolation="bilinear",
                     source="test")
IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=8, crop_pct=1.0,
                         interpolation="bilinear", source="test")


def loader_of(images):
    return DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=4)


@pytest.mark.parametrize("prep", [LITE, IMAGENET])
def test_normalisation_check_quiet_when_correct_and_warns_on_mistakes(prep):
    torch.manual_seed(0)
    pixels = torch.rand(8, 3, 8, 8)
    mean, std = torch.tensor(prep.mean)[:, None, None], torch.tensor(prep.std)[:, None, None]
    once = (pixels - mean) / std
    assert check_normalization(loader_of(once), prep) == []
    (twice,) = check_normalization(loader_of((once - mean) / std), prep)
    assert "normalised twice" in twice
    (raw,) = check_normalization(loader_of(pixels), prep)
    assert "not normalised" in raw
    (bytes_,) = check_normalization(loader_of(pixels * 255), prep)
    assert "0-255" in bytes_


def test_normalisation_check_catches_other_statistics():
    pixels = torch.rand(8, 3, 8, 8)
    imagenet_normalised = (pixels - torch.tensor(IMAGENET.mean)[:, None, None]) / torch.tensor(IMAGENET.std)[:, None,
                                                                                                              None]
    (warning,) = check_normalization(loader_of(imagenet_normalised), LITE)
    assert "other statistics" in warning


def test_plan_and_dry_run_print_groups_phases_and_bn(capsys, class_folder, tmp_path):
    from test_cli import run_cli

    code, out, err = run_cli(capsys, "plan", "--model", "efficientnet_lite0", "--strategy", "progressive",
                             "--head-epochs", "2", "--epochs", "3", "--max-unfrozen", "3", "--lr-decay", "0.5")
    assert code == 0, err
    assert "Layer groups (input → output)" in out and "blocks.6+conv_head+bn2" in out and "1,017,600" in out
    assert "epochs 1-2" in out and "epoch 3 " in out and "epochs 4-6" in out
    assert "BatchNorm: freeze (chosen by --bn auto)" in out and "head 1.0e-03" in out and "5.0e-04" in out
    out_dir = tmp_path / "never"
    code, out, err = run_cli(capsys, "train", "--data", class_folder, "--strategy", "fine-tune", "--groups", "3",
                             "--bn", "train", "--dry-run", "--out", out_dir)
    assert code == 0, err
    assert "trains 3 of 3 groups" in out and "BatchNorm: train —" in out and not out_dir.exists()
    code, out, _ = run_cli(capsys, "plan", "--json", "--num-classes", "4")
    plan = json.loads(out)
    assert plan["groups"][-1] == {"name": "head", "params": 1280 * 4 + 4}
    assert [p["name"] for p in plan["phases"]] == ["head", "all"]


def test_resume_in_the_middle_of_a_progressive_phase(class_folder, tiny_options, tmp_path):
    options = {**tiny_options, "strategy": "progressive", "head_epochs": 1, "unfreeze_every": 2, "max_unfrozen": 3,
               "epochs": 1, "patience": 0, "augment": "light", "lr_decay": 0.5, "l2_sp": 0.01}
    full = transferkit.train(class_folder, out=str(tmp_path / "full"), progress=False, **options)
    phases = [h["phase"] for h in full.history]
    assert phases[0] == "head" and phases[1] == phases[2] != "head" and len(phases) == 4
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(class_folder, out=str(tmp_path / "cut"), progress=False, callbacks=[InterruptAt(2)],
                          **options)
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert (saved["train"]["phase_index"], saved["train"]["phase_epoch"]) == (1, 1)  # inside phase 2
    assert saved["last_phase"]["unfrozen"] == list(full.history[1]["lrs"]) and len(saved["last_phase"]["lrs"]) == 2
    resumed = transferkit.train(resume=tmp_path / "cut", progress=False)
    a, b = full.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def test_optimizer_state_survives_phase_changes(class_folder, tiny_options, tmp_path):
    """Adam moments of the head are kept when the backbone joins (no reset at a phase boundary)."""
    options = {**tiny_options, "strategy": "two-stage", "head_epochs": 1, "epochs": 1, "patience": 0, "head_fit": "sgd"}
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(class_folder, out=str(tmp_path / "run"), progress=False, callbacks=[InterruptAt(1)],
                          **options)
    after_head = torch.load(tmp_path / "run" / "checkpoint" / "optimizer.pt", weights_only=True)
    steps_after_head = {k: int(v["step"]) for k, v in after_head["state"].items()}
    assert steps_after_head and len(set(steps_after_head.values())) == 1  # only the head's tensors have state
    transferkit.train(resume=tmp_path / "run", progress=False)
    final = torch.load(tmp_path / "run" / "checkpoint" / "optimizer.pt", weights_only=True)
    head_steps = [int(final["state"][k]["step"]) for k in steps_after_head]
    assert all(s == 2 * next(iter(steps_after_head.values())) for s in head_steps)  # continued, not reset
    assert len(final["state"]) > len(after_head["state"])  # the backbone joined

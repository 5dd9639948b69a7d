"""The frozen-prefix cache: phases whose first layer groups stay frozen train on the cached outputs of those layers
(run once), exactly as the uncached path trains (same seed, no augmentation)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import transferkit
from transferkit.models.prefix import Suffix, backbone_chain, chain_links, prefix_blockers, prefix_cut

PROGRESSIVE = {"strategy": "progressive", "max_unfrozen": 3, "unfreeze_every": 1, "epochs": 2, "head_epochs": 1,
               "patience": 0, "augment": "none"}


def test_the_chain_check_and_the_cut():
    torch.manual_seed(0)
    chained = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(2, 3, 8, 8)
    chain = backbone_chain(chained, x)
    assert [p for p, _ in chain] == ["0", "1", "2.0", "2.1", "3", "4"]
    assert prefix_cut(chain, {"2.0.weight", "2.0.bias"}) == 2 and prefix_cut(chain, set()) == 6
    assert prefix_blockers(chain, 3, x) == []
    assert torch.allclose(Suffix(chain, 2, nn.Identity())(chain[1][1](chain[0][1](x))), chained(x))

    class Skip(nn.Module):  # a residual around its children: not a chain
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return x + self.b(self.a(x))

    assert backbone_chain(Skip(), torch.randn(2, 4)) is None
    dropping = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4))
    assert "random layer" in prefix_blockers(backbone_chain(dropping, torch.randn(2, 4)), 2, torch.randn(2, 4))[0]
    stats = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 4))
    assert "BatchNorm" in prefix_blockers(backbone_chain(stats, torch.randn(2, 4)), 2, torch.randn(2, 4))[0]


def test_the_plan_places_progressive_phases_on_cached_activations(class_folder, tiny_options):
    plan = transferkit.plan(class_folder, **{**tiny_options, **PROGRESSIVE})
    assert [p.runs_on for p in plan.phases] == ["exact-fit", "activations", "activations"]
    assert plan.phases[1].prefix > plan.phases[2].prefix > 0
    assert "Frozen-prefix cache: phase(s)" in str(plan) and "on the cached outputs of the frozen stem.." in str(plan)
    # two-stage trains every group: nothing to cache; augmentation: off unless views are asked for
    assert all(p.runs_on != "activations" for p in transferkit.plan(class_folder, **tiny_options).phases)
    augmented = transferkit.plan(class_folder, **{**tiny_options, **PROGRESSIVE, "augment": "light"})
    assert [p.runs_on for p in augmented.phases][1:] == ["images", "images"]
    assert "--prefix-cache views" in str(augmented)
    views = transferkit.plan(class_folder, **{**tiny_options, **PROGRESSIVE, "augment": "light",
                                              "prefix_cache": "views", "cache_views": 2})
    assert [p.views for p in views.phases][1:] == [2, 2] and views.phases[0].runs_on == "features"
    off = transferkit.plan(class_folder, **{**tiny_options, **PROGRESSIVE, "prefix_cache": "off"})
    assert [p.runs_on for p in off.phases][1:] == ["images", "images"]


def test_training_on_cached_activations_equals_the_uncached_path(class_folder, tiny_options, tmp_path):
    options = {**tiny_options, **PROGRESSIVE, "dropout": 0.2}
    cached = transferkit.train(class_folder, out=str(tmp_path / "cached"), progress=False, **options)
    plain = transferkit.train(class_folder, out=str(tmp_path / "plain"), progress=False, prefix_cache="off",
                              **options)
    assert [r["inputs"] for r in cached.history][1:] == ["cached activations of the frozen prefix"] * 3
    assert [r["inputs"] for r in plain.history][1:] == ["images"] * 3
    for a, b in zip(cached.history, plain.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    ours, theirs = cached.model.model.state_dict(), plain.model.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key].float(), theirs[key].float(), rtol=1e-4, atol=1e-5), key
    phases = json.loads((tmp_path / "cached" / "transferkit.json").read_text())["phases"]
    assert [p["runs_on"] for p in phases] == ["exact-fit", "activations", "activations"]


def test_the_chain_of_the_tiny_timm_model(tiny_weights):
    from transferkit.models.sources import load_model

    model = load_model("timm:test_efficientnet", 3, weights=str(tiny_weights), image_size=32)
    chain = backbone_chain(model.backbone, torch.randn(2, 3, 32, 32))
    assert chain is not None and [p for p, _ in chain][:3] == ["conv_stem", "bn1", "blocks.0.0"]
    assert [p for p, _ in chain_links(model.backbone)] == [p for p, _ in chain]

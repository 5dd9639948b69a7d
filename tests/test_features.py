"""Frozen-feature cache: keys, staleness, reuse, equality with the uncached path, and the exact head fit."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

import transferkit
from transferkit.data import build_transforms, load_training_data
from transferkit.features import cache_key, cached_features
from transferkit.models import load_model
from transferkit.training.headfit import L2_GRID, fit_linear_head


@pytest.fixture
def setup(class_folder, tiny_weights):
    model = load_model("timm:test_efficientnet", 3, weights=tiny_weights, image_size=32)
    data = load_training_data(class_folder)
    _, eval_tf = build_transforms(model.preprocessing, "none")
    return model, data, eval_tf


def test_cache_key_changes_with_data_weights_and_preprocessing(setup, class_folder):
    model, data, eval_tf = setup
    key = cache_key(model, data.train, eval_tf, views=1, seed=0)
    assert cache_key(model, data.train, eval_tf, views=1, seed=0) == key
    assert cache_key(model, data.train.subset(range(len(data.train) - 1)), eval_tf, 1, 0) != key
    first = data.train.items[0]
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime: treated as changed
    assert cache_key(model, data.train, eval_tf, 1, 0) != key
    key = cache_key(model, data.train, eval_tf, 1, 0)
    _, eval_64 = build_transforms(model.preprocessing.with_image_size(40), "none")
    assert cache_key(model, data.train, eval_64, 1, 0) != key
    with torch.no_grad():
        model.backbone.conv_stem.weight.add_(0.01)
    assert cache_key(model, data.train, eval_tf, 1, 0) != key
    assert cache_key(model, data.train, eval_tf, 3, 0) != key


def test_cache_is_reused_and_never_stale(setup, tmp_path):
    model, data, eval_tf = setup
    first = cached_features(model, data.train, eval_tf, tmp_path, progress=False)
    again = cached_features(model, data.train, eval_tf, tmp_path, progress=False)
    assert not first.reused and again.reused and again.key == first.key
    assert first.features.dtype == np.float16
    assert first.features.shape == (1, len(data.train), model.head_config.num_features)
    assert np.array_equal(np.asarray(again.features), first.features)
    model.eval()
    with torch.no_grad():
        expected = model.forward_features(torch.stack([eval_tf(transferkit.data.open_image(p))
                                                       for p in data.train.items])).numpy()
    assert np.allclose(first.features[0].astype(np.float32), expected, atol=1e-2, rtol=1e-3)
    with torch.no_grad():
        model.backbone.conv_stem.weight.mul_(2.0)
    changed = cached_features(model, data.train, eval_tf, tmp_path, progress=False)
    assert not changed.reused and not np.allclose(changed.features, first.features)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written entries


def test_augmented_views_are_distinct_and_reproducible(setup, tmp_path):
    model, data, _ = setup
    train_tf, _ = build_transforms(model.preprocessing, "heavy")
    cached = cached_features(model, data.train, train_tf, tmp_path, views=2, seed=5, progress=False)
    assert cached.views == 2 and not np.allclose(cached.features[0], cached.features[1])
    fresh = cached_features(model, data.train, train_tf, tmp_path / "other", views=2, seed=5, progress=False)
    assert np.array_equal(np.asarray(fresh.features), np.asarray(cached.features))


def test_head_on_cached_features_equals_the_uncached_head(class_folder, tiny_options, tmp_path):
    options = {**tiny_options, "strategy": "linear-probe", "epochs": 3, "augment": "none", "head_fit": "sgd",
               "patience": 0, "dropout": 0.2}
    cached = transferkit.train(class_folder, out=str(tmp_path / "cached"), progress=False, **options)
    plain = transferkit.train(class_folder, out=str(tmp_path / "plain"), progress=False, feature_cache="off",
                              **options)
    assert {h["inputs"] for h in cached.history} == {"cached features"}
    assert {h["inputs"] for h in plain.history} == {"images"}
    a, b = cached.model.model.head.state_dict(), plain.model.model.head.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=2e-3, rtol=1e-3), key
    assert [round(h["val_accuracy"], 6) for h in cached.history] == [round(h["val_accuracy"], 6) for h in plain.history]
    backbone_a, backbone_b = cached.model.model.backbone.state_dict(), plain.model.model.backbone.state_dict()
    assert all(torch.equal(backbone_a[k], backbone_b[k]) for k in backbone_a)


def test_cache_is_shared_across_runs_with_cache_dir(class_folder, tiny_options, tmp_path, caplog):
    options = {**tiny_options, "strategy": "linear-probe", "epochs": 1, "cache_dir": str(tmp_path / "shared")}
    one = transferkit.train(class_folder, out=str(tmp_path / "one"), progress=False, **options)
    with caplog.at_level("INFO", logger="transferkit"):
        two = transferkit.train(class_folder, out=str(tmp_path / "two"), progress=False, **options)
    assert "Feature cache hit (train)" in caplog.text and "Feature cache hit (val)" in caplog.text
    assert not (tmp_path / "two" / "feature-cache").exists()
    # what the second run reused is accounted at what the first run paid to build it (train + val features)
    built = json.loads((tmp_path / "one" / "transferkit.json").read_text())["metrics"]["cache_seconds_built"]
    saved = json.loads((tmp_path / "two" / "transferkit.json").read_text())["metrics"]
    assert one.cache_seconds_saved == 0 and built > 0
    assert two.cache_seconds_saved == pytest.approx(built, abs=0.01) and saved["cache_seconds_built"] == 0


def test_two_stage_uses_the_exact_fit_then_trains_on_images(class_folder, tiny_options, tmp_path):
    result = transferkit.train(class_folder, head_epochs=3, epochs=1, out=str(tmp_path / "r"),
                               progress=False, **{k: v for k, v in tiny_options.items() if k not in ("epochs",
                                                                                                      "head_epochs")})
    assert [h["inputs"] for h in result.history] == ["exact fit on cached features", "images"]
    assert result.history[0]["train_exact_fit_l2"] in L2_GRID


def test_exact_fit_solves_the_logistic_problem_and_folds_standardisation():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 4
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 16) + 50.0  # large offset: SGD-unfriendly raw features
    head = nn.Linear(16, 3)
    result = fit_linear_head(head, x[:200], y[:200], x[200:], y[200:])
    with torch.no_grad():
        accuracy = (head(x[200:]).argmax(1) == y[200:]).float().mean().item()
    assert accuracy == pytest.approx(result.val_accuracy) and accuracy > 0.95
    assert result.l2 in [row["l2"] for row in result.grid]
    assert result.val_loss == min(row["val_loss"] for row in result.grid)


def test_an_augmented_single_view_is_keyed_on_the_seed(setup):
    """--cache-views 1 stores one augmented view: another seed draws other crops, so it must not reuse it."""
    model, data, eval_tf = setup
    train_tf, _ = build_transforms(model.preprocessing, "light")
    assert cache_key(model, data.train, train_tf, 1, 0) != cache_key(model, data.train, train_tf, 1, 1)
    assert cache_key(model, data.train, train_tf, 2, 0) != cache_key(model, data.train, train_tf, 2, 1)
    # un-augmented features do not depend on the seed: every seed shares them
    assert cache_key(model, data.train, eval_tf, 1, 0) == cache_key(model, data.train, eval_tf, 1, 7)


def test_different_seeds_sharing_a_cache_dir_get_their_own_augmented_view(setup, tmp_path):
    model, data, _ = setup
    train_tf, _ = build_transforms(model.preprocessing, "heavy")
    first = cached_features(model, data.train, train_tf, tmp_path, views=1, seed=0, progress=False)
    other = cached_features(model, data.train, train_tf, tmp_path, views=1, seed=1, progress=False)
    assert not other.reused and not np.array_equal(np.asarray(other.features), np.asarray(first.features))


@pytest.mark.parametrize("package", ["torch", "torchvision", "timm", "transformers", "pillow"])
def test_cache_key_changes_with_library_versions(setup, monkeypatch, package):
    import importlib.metadata

    model, data, eval_tf = setup
    key = cache_key(model, data.train, eval_tf, 1, 0)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "99.0" if name.lower() == package else real(name))
    assert cache_key(model, data.train, eval_tf, 1, 0) != key


def _overlapping_classes(n=240, dim=12, classes=3, seed=0):
    """Three Gaussian classes that overlap (not separable: the L2 optimum is finite and well defined), with a large
    offset and unequal scales so standardisation matters."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=generator)
    x = centres[y] + 1.5 * torch.randn(n, dim, generator=generator)
    return x * torch.linspace(0.5, 20, dim) + 100.0, y


@pytest.mark.parametrize("l2, weighted", [(1e-1, False), (1e-3, False), (1e-2, True)])
def test_exact_fit_matches_scikit_learn_logistic_regression(l2, weighted):
    """Same problem, reference solver: mean CE + l2/2 ||W||^2 on standardised features (intercept not penalised) is
    scikit-learn's C * sum CE + 1/2 ||W||^2 divided by C * n, so C = 1 / (l2 * n) — with class weights, n is the sum
    of the samples' weights. The objective agrees to 1e-5 relative, the probabilities to 2e-3, the labels exactly."""
    from sklearn.linear_model import LogisticRegression

    x, y = _overlapping_classes()
    class_weights = torch.tensor([1.0, 2.0, 0.5]) if weighted else None
    head = nn.Linear(x.shape[1], 3)
    result = fit_linear_head(head, x, y, x[:30], y[:30], grid=(l2,), class_weights=class_weights, max_iter=500)
    assert result.converged and result.l2 == l2
    z = ((x - x.mean(0)) / x.std(0)).double().numpy()
    sample_weight = class_weights[y].double() if weighted else torch.ones(len(y), dtype=torch.float64)
    reference = LogisticRegression(C=1.0 / (l2 * float(sample_weight.sum())), tol=1e-12, max_iter=10_000)
    reference.fit(z, y.numpy(), sample_weight=sample_weight.numpy())
    logits = torch.from_numpy(z @ reference.coef_.T + reference.intercept_)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    objective = float((sample_weight * ce).sum() / sample_weight.sum() + l2 / 2 * (reference.coef_ ** 2).sum())
    assert result.objective == pytest.approx(objective, rel=1e-5)
    with torch.no_grad():
        ours = head(x).softmax(1).double()
    theirs = torch.from_numpy(reference.predict_proba(z))
    assert float((ours - theirs).abs().max()) < 2e-3
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_exact_fit_reports_non_convergence(caplog):
    x, y = _overlapping_classes()
    with caplog.at_level("WARNING", logger="transferkit"):
        stopped = fit_linear_head(nn.Linear(x.shape[1], 3), x, y, x, y, grid=(1e-3,), max_iter=3)
    assert not stopped.converged and stopped.iterations <= 3 and not stopped.grid[0]["converged"]
    assert "did not converge for the chosen L2 1e-03" in caplog.text
    assert f"stopped after {stopped.iterations} iterations" in caplog.text
    done = fit_linear_head(nn.Linear(x.shape[1], 3), x, y, x, y, grid=(1e-3,), max_iter=500)
    assert done.converged and done.iterations < 500

"""advise: the rules on synthetic measurements, and a real measurement on tiny data."""

from __future__ import annotations

import json

from transferkit.experiments.advise import Measurements, recommend


def measured(**changes):
    base = dict(modality="image", samples=5000, classes=10, min_per_class=400, max_per_class=600, median_size=224,
                model_input=224, probe_accuracy=0.8, knn_accuracy=0.7, domain_distance=0.3)
    return Measurements(**{**base, **changes})


def test_small_similar_data_gets_feature_extraction():
    advice = recommend(measured(samples=800, min_per_class=70, max_per_class=90))
    assert advice.strategy == "linear-probe" and "feature extraction" in advice.reasons[0]


def test_large_or_far_data_gets_two_stage():
    assert recommend(measured(samples=20000, min_per_class=1900, max_per_class=2100)).strategy == "two-stage"
    far = recommend(measured(samples=800, min_per_class=70, max_per_class=90, domain_distance=2.0))
    assert far.strategy == "two-stage" and "far from the pre-training" in far.reasons[0]
    assert far.options["epochs"] == 20


def test_separable_features_suffice():
    advice = recommend(measured(samples=20000, probe_accuracy=0.95))
    assert advice.strategy == "linear-probe" and "already separate" in advice.reasons[0]


def test_tiny_data_freezes_more_and_augments_heavily():
    advice = recommend(measured(samples=60, min_per_class=5, max_per_class=7, classes=10))
    assert advice.strategy == "linear-probe" and advice.options["augment"] == "heavy"


def test_imbalance_small_images_and_far_domain_warnings():
    advice = recommend(measured(min_per_class=50, max_per_class=900, median_size=28, probe_accuracy=0.5,
                                domain_distance=1.8))
    assert advice.options["class_weights"] == "auto" and advice.options["image_size"] == 112
    assert advice.warnings and "pre-trained on similar data" in advice.warnings[0]
    assert "--class-weights auto" in advice.command("d", "m")


def test_advise_measures_real_data(capsys, image_tree, tiny_weights):
    from test_cli import run_cli

    code, out, err = run_cli(capsys, "advise", "--data", image_tree, "--model", "timm:test_efficientnet", "--weights",
                             tiny_weights, "--json")
    assert code == 0, err
    advice = json.loads(out)
    m = advice["measurements"]
    assert m["samples"] == 33 and m["classes"] == 3 and m["median_size"] == 24
    assert 0 <= m["probe_accuracy"] <= 1 and 0 <= m["knn_accuracy"] <= 1 and m["domain_distance"] >= 0
    assert advice["strategy"] in ("linear-probe", "two-stage") and advice["reasons"]
    assert advice["command"].startswith(f"transferkit train --data {image_tree}")

"""``--strategy auto``: the data measured as ``advise`` does (on the features the head stage caches anyway), the
advised strategy and options applied (options the user set are kept), the reasons in the plan and the run folder."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

import transferkit
from transferkit.experiments.advise import Advice, auto_options

advise_module = importlib.import_module("transferkit.experiments.advise")  # the module, not the function


def test_auto_is_the_default_and_where_it_does_not_measure_it_is_two_stage():
    assert transferkit.TrainConfig(data="x").validate().strategy == "auto"
    with pytest.raises(transferkit.TransferKitError, match="strategy"):
        transferkit.TrainConfig(data="x", strategy="automatic").validate()
    # advise's rules are for classification; --adapt and --wise-ft need a backbone that fine-tunes
    assert transferkit.TrainConfig(data="x", task="segmentation").validate().strategy == "two-stage"
    assert transferkit.TrainConfig(data="x", task="detection").validate().strategy == "two-stage"
    assert transferkit.TrainConfig(data="x", wise_ft=True).validate().strategy == "two-stage"
    assert transferkit.TrainConfig(data="x", adapt="dann", target_data="t").validate().strategy == "two-stage"
    # a strategy the user names is never replaced
    assert transferkit.TrainConfig(data="x", task="segmentation", strategy="fine-tune").validate().strategy == \
        "fine-tune"


def test_the_plan_of_auto_measures_the_data_and_says_why(class_folder, tiny_options):
    """``plan`` / ``train --dry-run`` with the default: the data is measured as train would (24 images: the exact
    linear probe), the reasons are in the plan; without data, two-stage's plan with a note that says so."""
    options = {k: v for k, v in tiny_options.items() if k != "strategy"}
    measured = transferkit.plan(class_folder, **options)
    assert [p.runs_on for p in measured.phases] == ["exact-fit"]
    assert measured.notes[0].startswith("Strategy auto chose linear-probe")
    assert any("very little data" in note for note in measured.notes)
    unmeasured = transferkit.plan(**{k: v for k, v in options.items() if k != "weights"})
    assert [p.name for p in unmeasured.phases] == ["head", "all"]
    assert "here it cannot (no data given): this is the plan of two-stage" in unmeasured.notes[0]
    # plan must not fail where the weights cannot be loaded to measure (here: a timm name, offline, no --weights)
    fallback = transferkit.plan(class_folder, **{k: v for k, v in options.items() if k != "weights"})
    assert [p.name for p in fallback.phases] == ["head", "all"]
    assert "the pre-trained weights could not be loaded" in fallback.notes[0]


def test_the_advice_is_applied_except_what_the_user_set():
    advice = Advice("two-stage", {"lr": "1e-4", "augment": "light", "epochs": 20, "image_size": 112})
    config = transferkit.TrainConfig(data="x", epochs=5, augment="none").validate()
    applied, kept = auto_options(advice, {"epochs", "augment", "data"}, config)
    assert applied == {"lr": 1e-4, "image_size": 112} and isinstance(applied["lr"], float)
    assert kept == {"epochs": 5, "augment": "none"}


def test_auto_measures_chooses_and_records_why(class_folder, tiny_options, tmp_path, caplog):
    """24 images of 3 classes: advise's rule says linear-probe (the exact fit on un-augmented features); the head
    stage reuses the features the measurement cached."""
    with caplog.at_level("INFO", logger="transferkit"):
        result = transferkit.train(class_folder, out=str(tmp_path / "run"), progress=False,  # the default
                                   **{k: v for k, v in tiny_options.items() if k != "strategy"})
    info = json.loads((tmp_path / "run" / "transferkit.json").read_text())
    assert info["strategy"] == "linear-probe" and info["auto"]["strategy"] == "linear-probe"
    assert any("very little data" in reason for reason in info["auto"]["reasons"])
    assert info["auto"]["measurements"]["samples"] == 24 and 0 <= info["auto"]["measurements"]["probe_accuracy"] <= 1
    # the measurement wrote the features, the head stage read them
    assert "Feature cache written (train" in caplog.text and "Feature cache hit (train)" in caplog.text
    assert "Strategy auto chose linear-probe" in caplog.text
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["strategy"] == "linear-probe"  # --resume reads the resolved strategy
    assert [r["phase"] for r in result.history] == ["head"]


def test_auto_applies_a_two_stage_advice_and_prints_its_reasons(class_folder, tiny_options, tmp_path, monkeypatch,
                                                                caplog):
    advice = Advice("two-stage", {"lr": "3e-4", "augment": "light", "epochs": 20},
                    reasons=["enough data to adapt every layer (scripted)"])
    monkeypatch.setattr(advise_module, "recommend", lambda m: advice)
    options = {k: v for k, v in tiny_options.items() if k not in ("augment", "strategy")}
    with caplog.at_level("INFO", logger="transferkit"):
        transferkit.train(class_folder, strategy="auto", out=str(tmp_path / "run"), progress=False, **options)
    info = json.loads((tmp_path / "run" / "transferkit.json").read_text())
    assert info["strategy"] == "two-stage" and info["auto"]["options"] == {"lr": 3e-4, "augment": "light"}
    assert info["auto"]["kept"] == {"epochs": 2}  # tiny_options set it
    assert [p["name"] for p in info["phases"]] == ["head", "all"]
    assert "Strategy auto chose two-stage with --lr 0.0003, --augment light (kept as you set: --epochs)" in caplog.text
    assert "enough data to adapt every layer (scripted)" in caplog.text

"""The one option schema: the CLI is generated from it, recipes set it, a run's config.yaml reproduces the run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import transferkit
from test_cli import run_cli, tiny_flags
from transferkit import options as schema
from transferkit.errors import TransferKitError
from transferkit.options import TrainConfig, load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.*"))


def help_text(capsys, monkeypatch, command: str) -> str:
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    return re.sub(r"[│╭╮╰╯─]", " ", out)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_train_option_is_on_the_command_line_with_its_schema_help(capsys, monkeypatch):
    train_help, plan_help = help_text(capsys, monkeypatch, "train"), help_text(capsys, monkeypatch, "plan")
    compare_help = help_text(capsys, monkeypatch, "compare")
    for f in dataclasses.fields(TrainConfig):
        spec = schema.spec_of(f)
        if not spec.cli:
            continue
        first_words = " ".join(spec.help.replace("\\[", "[").split()[:4])
        for name, text in (("train", train_help), ("plan", plan_help), ("compare", compare_help)):
            excluded = {"plan": ("out", "overwrite"), "compare": schema.COMPARE_OWNS}.get(name, ())
            if f.name in excluded:
                continue
            assert flag(f.name) in text, (name, f.name)
            assert first_words in " ".join(text.split()), (name, f.name, first_words)
    assert "[default: 10 for images, 4 for text]" in " ".join(train_help.split())
    assert "Caches" in train_help and "Strategy and optimisation" in train_help  # options grouped by section


def test_schema_checks_reject_bad_values_before_anything_loads():
    with pytest.raises(TransferKitError, match="'cache_views' parameter must be 0"):
        TrainConfig.from_options({"data": "nowhere", "cache_views": -1})
    with pytest.raises(TransferKitError, match="'lr' parameter must be a learning rate"):
        TrainConfig.from_options({"data": "nowhere", "lr": 3})
    with pytest.raises(TransferKitError, match="Unknown option.*epoch.*Did you mean: epochs"):
        TrainConfig.from_options({"data": "nowhere", "epoch": 3})
    with pytest.raises(TransferKitError, match="lora strategy is for language models"):
        TrainConfig.from_options({"data": "nowhere", "strategy": "lora"})


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_each_shipped_recipe_parses_and_plans(recipe):
    options = load_recipe(recipe)
    config = TrainConfig(**{"data": "", **options}).validate()
    assert config.model and config.strategy in transferkit.STRATEGIES
    data = options.get("data")
    plan = transferkit.plan(data, num_classes=None if data else 2, config=recipe)
    assert plan.phases and sum(p.epochs for p in plan.phases) >= 1
    assert plan.phases[-1].lrs, "the last phase trains something"
    if config.lr is not None and config.strategy not in ("linear-probe", "lora"):
        assert config.lr in plan.phases[-1].lrs.values()


def test_recipe_formats_sections_and_errors(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text('[strategy]\nstrategy = "fine-tune"\nlr = 3e-5\n\n[data]\nper-class = 5\n')
    assert load_recipe(toml) == {"strategy": "fine-tune", "lr": 3e-5, "per_class": 5}
    flat = tmp_path / "r.yaml"
    flat.write_text("strategy: linear-probe\nhead-epochs: 2\n")
    assert load_recipe(flat) == {"strategy": "linear-probe", "head_epochs": 2}
    typo = tmp_path / "typo.yaml"
    typo.write_text("strategy: fine-tune\nlearning_rate: 0.1\n")
    with pytest.raises(TransferKitError, match=r"Unknown option in recipe .*typo.yaml\(s\) learning_rate"):
        load_recipe(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("strategy: [fine-tune\n")
    with pytest.raises(TransferKitError, match="Cannot parse recipe .*broken.yaml"):
        load_recipe(broken)
    with pytest.raises(TransferKitError, match="Recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_command_line_flags_override_the_recipe(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("strategy: two-stage\nepochs: 7\nhead_epochs: 2\nlr_decay: 0.5\n")
    code, out, err = run_cli(capsys, "plan", "--config", recipe, "--epochs", "3", "--json")
    assert code == 0, err
    phases = json.loads(out)["phases"]
    assert [(p["name"], p["epochs"]) for p in phases] == [("head", 2), ("all", 3)]  # epochs 3 beats the recipe's 7
    assert len(set(phases[1]["lrs"].values())) > 1  # lr_decay came from the recipe


def test_saved_config_is_a_recipe_that_reproduces_the_run(capsys, image_tree, tiny_weights, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    code, _, err = run_cli(capsys, "train", "--data", image_tree, "--strategy", "two-stage", "--epochs", "2",
                           "--head-epochs", "1", "--augment", "light", "--seed", "3", "--out", first,
                           *tiny_flags(tiny_weights))
    assert code == 0, err
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["augment"] == "light" and "out" not in saved
    assert (first / "config.yaml").read_text().startswith("# transferkit recipe")
    code, _, err = run_cli(capsys, "train", "--config", first / "config.yaml", "--out", second, "-q")
    assert code == 0, err
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    info = json.loads((second / "transferkit.json").read_text())
    assert info["config"]["seed"] == 3 and info["config"]["data"] == str(image_tree)


def test_resume_reads_a_legacy_config_json(class_folder, tiny_options, tmp_path):
    from test_training import InterruptAt

    options = {**tiny_options, "strategy": "fine-tune", "epochs": 2, "patience": 0}
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(class_folder, out=str(tmp_path / "old"), progress=False, callbacks=[InterruptAt(1)],
                          **options)
    saved = load_recipe(tmp_path / "old" / "config.yaml")
    (tmp_path / "old" / "config.yaml").unlink()
    (tmp_path / "old" / "config.json").write_text(json.dumps({**saved, "out": str(tmp_path / "old")}))
    result = transferkit.train(resume=tmp_path / "old", progress=False)
    assert len(result.history) == 2 and (tmp_path / "old" / "transferkit.json").is_file()

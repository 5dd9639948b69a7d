"""Domain shift and forgetting (issue 14): retention measures, WiSE-FT interpolation, domain adaptation.

Tiny models (timm ``test_efficientnet`` at 32 px, a 2-layer BERT) and tiny data; seconds each."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.adaptation.forgetting import compare_models, linear_cka, measure_run, relative_weight_change
from transferkit.cli import main
from transferkit.models.sources import load_model, pretrained_classifier


def _tiny(tiny_weights: Path, classes: int = 3):
    return load_model("timm:test_efficientnet", classes, weights=str(tiny_weights), image_size=32)


# --- retention measures ------------------------------------------------------------------------------


def test_cka_is_one_for_identical_and_rotated_features_and_near_zero_for_independent_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(500, 16, generator=generator)) < 0.05


def test_an_unchanged_model_keeps_everything(tiny_weights: Path) -> None:
    start = _tiny(tiny_weights)
    end = copy.deepcopy(start)
    classifier = pretrained_classifier("timm:test_efficientnet", str(tiny_weights))
    assert classifier is not None and classifier.out_features == 1000
    batches = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    result = compare_models(start, end, batches, classifier.eval())
    assert result.top1_agreement == 1.0
    assert result.kl == pytest.approx(0.0, abs=1e-9)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in result.cka.values())
    assert all(v == 0.0 for v in result.weight_change.values())


def test_the_original_classifier_is_the_pretrained_one(tiny_weights: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(tiny_weights))
    classifier = pretrained_classifier("timm:test_efficientnet", str(tiny_weights))
    assert torch.equal(classifier.weight, state["classifier.weight"])
    assert torch.equal(classifier.bias, state["classifier.bias"])


def test_relative_weight_change_per_group(tiny_weights: Path) -> None:
    from transferkit.adaptation.forgetting import backbone_groups

    start = _tiny(tiny_weights)
    end = copy.deepcopy(start)
    groups = backbone_groups(start)
    first = dict(end.backbone.named_parameters())[groups[0].param_names[0]]
    with torch.no_grad():
        first.mul_(2.0)  # one tensor doubled: its group moved, the others did not
    change = relative_weight_change(start.backbone, end.backbone, groups)
    assert change[groups[0].name] > 0 and all(change[g.name] == 0 for g in groups[1:])
    assert 0 < change["backbone"] < change[groups[0].name]


def test_the_builtin_reference_is_the_bundled_photos_and_their_crops() -> None:
    from transferkit.adaptation.reference import builtin_images
    from transferkit.data.photos import SIDES, photo_names

    photos = sum(len(photo_names(side)) for side in SIDES)
    images = builtin_images(crops_per_photo=2)
    assert len(images) == 3 * photos
    assert [im.size for im in images] == [im.size for im in builtin_images(crops_per_photo=2)]  # seeded


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_forgetting_of_a_finished_run(vision_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import make_class_folders

    reference = make_class_folders(tmp_path / "reference", per_class=2)  # labels are ignored
    result = measure_run(vision_run, reference)
    assert result.samples == 6
    assert 0.0 <= result.top1_agreement <= 1.0 and result.kl >= 0.0
    assert result.weight_change["backbone"] > 0  # two-stage trained the backbone
    assert list(result.cka)[-1] == "features"
    code, out, _ = run_cli(capsys, "forgetting", vision_run, "--reference", reference, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["top1_agreement"] == pytest.approx(result.top1_agreement)
    assert shown["most_changed_group"] in result.cka
    code, out, _ = run_cli(capsys, "evaluate", vision_run, "--json", "--reference", reference)
    assert code == 0 and json.loads(out)["retention"]["top1_agreement"] == pytest.approx(result.top1_agreement)
    code, out, _ = run_cli(capsys, "evaluate", vision_run, "--json", "--no-retention")
    assert code == 0 and "retention" not in json.loads(out)
    code, _, err = run_cli(capsys, "forgetting", vision_run, "--reference", tmp_path / "missing")
    assert code == 2 and "Reference images not found" in err and len(err.strip().splitlines()) == 1


# --- WiSE-FT ---------------------------------------------------------------------------------------------


def test_interpolation_at_zero_and_one_reproduces_the_end_points_exactly(tiny_weights: Path) -> None:
    from transferkit.adaptation.interpolate import interpolate_state

    start = _tiny(tiny_weights).state_dict()
    torch.manual_seed(1)
    end = {k: v + torch.randn_like(v) if v.is_floating_point() else v + 3 for k, v in start.items()}
    at0, at1 = interpolate_state(start, end, 0.0), interpolate_state(start, end, 1.0)
    floats = [k for k, v in start.items() if v.is_floating_point()]
    assert all(torch.equal(at0[k], start[k]) and torch.equal(at1[k], end[k]) for k in floats)
    assert all(torch.equal(at0[k], end[k]) for k in start if k not in floats)  # counters: the fine-tuned run's
    half = interpolate_state(start, end, 0.5)
    assert torch.allclose(half[floats[0]], (start[floats[0]] + end[floats[0]]) / 2)


def test_alpha_grids() -> None:
    from transferkit.adaptation.interpolate import parse_alphas
    from transferkit.errors import TransferKitError

    assert parse_alphas("0:1:0.1") == [round(i / 10, 10) for i in range(11)]
    assert parse_alphas("1,0,0.5,0.5") == [0.0, 0.5, 1.0]
    for bad in ("0:1:0", "0:2:0.5", "a,b", "1:0:0.1", "-0.1"):
        with pytest.raises(TransferKitError, match="alphas"):
            parse_alphas(bad)


def test_interpolate_writes_a_run_folder_at_the_chosen_alpha(vision_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    import transferkit
    from transferkit.adaptation.forgetting import pretrained_start
    from transferkit.adaptation.interpolate import interpolate_state, start_state
    from transferkit.runfolder import RunFolder

    assert (vision_run / "probe_head.safetensors").is_file()  # two-stage keeps its head-only stage's head
    out = tmp_path / "wise"
    code, printed, _ = run_cli(capsys, "interpolate", vision_run, "--alphas", "0,0.5,1", "--out", out, "--json")
    record = json.loads(printed)
    assert code == 0 and [p["alpha"] for p in record["sweep"]] == [0.0, 0.5, 1.0]
    assert record["sweep"][0]["top1_agreement"] == 1.0  # alpha 0 is the pre-trained backbone
    assert record["alpha"] == max(record["sweep"], key=lambda p: (p["val_accuracy"], -p["alpha"]))["alpha"]
    assert (out / "interpolation.json").is_file() and (out / "interpolation.png").is_file()
    loaded = transferkit.load(out)
    source = transferkit.load(vision_run)
    theta0 = start_state(pretrained_start(source.info), RunFolder(vision_run).probe_head())
    expected = interpolate_state(theta0, source.model.state_dict(), record["alpha"])
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.info["wise_ft"]["alpha"] == record["alpha"]


def test_train_with_wise_ft(tmp_path: Path, tiny_options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import transferkit
    from conftest import make_class_folders
    from transferkit.adaptation import reference

    monkeypatch.setattr(reference, "CROPS_PER_PHOTO", 0)  # the whole photos only: a faster retention check
    data = make_class_folders(tmp_path / "data", per_class=6)
    result = transferkit.train(str(data), out=str(tmp_path / "run"), wise_ft=True, progress=False, head_fit="sgd",
                               **{**tiny_options, "epochs": 1})
    record = result.model.info["wise_ft"]
    assert len(record["sweep"]) == 11 and record["sweep"][0]["top1_agreement"] == 1.0
    assert record["probe_head"].startswith("the head at the end")
    assert json.loads((tmp_path / "run" / "interpolation.json").read_text())["alpha"] == record["alpha"]


def test_wise_ft_needs_a_fine_tuned_backbone(tmp_path: Path, tiny_options: dict) -> None:
    import transferkit
    from transferkit.errors import TransferKitError

    with pytest.raises(TransferKitError, match="--wise-ft"):
        transferkit.train(str(tmp_path), wise_ft=True, **{**tiny_options, "strategy": "linear-probe"})


# --- domain adaptation ------------------------------------------------------------------------------------


def test_gradient_reversal_flips_and_scales_the_gradient_exactly() -> None:
    from transferkit.adaptation.dann import reverse_gradient

    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 7, dtype=torch.float64)
    y = reverse_gradient(x, 0.37)
    assert torch.equal(y, x)  # identity forward
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, -0.37 * upstream)
    x.grad = None
    (reverse_gradient(x, 0.0) * upstream).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(upstream))


def test_the_reversal_coefficient_follows_the_dann_schedule() -> None:
    import math

    from transferkit.adaptation.dann import DomainAdaptation, DomainAdversary, warmup_coefficient

    assert warmup_coefficient(0.0) == 0.0
    for p in (0.1, 0.25, 0.5, 1.0):
        assert warmup_coefficient(p) == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1, abs=1e-15)
    assert warmup_coefficient(2.0) == warmup_coefficient(1.0)  # progress is clipped to [0, 1]
    # through the run: image epoch 1 of 2, 5 steps each -> step 2 is at progress 7 / 10
    adaptation = DomainAdaptation("dann", DomainAdversary("dann", 4, 3), list(range(10)), batch_size=2,
                                  total_steps=10)
    adaptation._step0 = 5
    assert adaptation.coefficient(2) == warmup_coefficient(0.7)


def test_cdan_conditions_on_the_predictions() -> None:
    from transferkit.adaptation.dann import ConditionalMap

    f, g = torch.randn(6, 4), torch.softmax(torch.randn(6, 3), 1)
    exact = ConditionalMap(4, 3)
    assert not exact.random and torch.allclose(exact(f, g)[:, 4:8], f * g[:, 1:2])
    randomised = ConditionalMap(4, 3, limit=8)
    assert randomised.random and randomised(f, g).shape == (6, 8)


def _unlabelled_builtin(monkeypatch: pytest.MonkeyPatch, folder: Path) -> str:
    """builtin:no-labels: a target pool whose labels raise when read."""
    from transferkit.data import builtin
    from transferkit.data.samples import ImageSamples

    class NoLabels(ImageSamples):
        def __getattribute__(self, name: str):
            if name == "labels":
                raise AssertionError("a target label was read")
            return super().__getattribute__(name)

    files = sorted(folder.rglob("*.png"))
    pool = NoLabels(files, [0] * len(files), ["x"])
    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "no-labels",
                        lambda: builtin.BuiltinDataset("no-labels", pool, None, "target without readable labels"))
    return "builtin:no-labels"


def test_target_labels_are_never_read(tmp_path: Path, tiny_options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import transferkit
    from conftest import make_class_folders

    source = make_class_folders(tmp_path / "source", per_class=6)
    target = _unlabelled_builtin(monkeypatch, make_class_folders(tmp_path / "target", per_class=3, start=700))
    result = transferkit.train(str(source), out=str(tmp_path / "run"), target_data=target, adapt="cdan",
                               progress=False, **{**tiny_options, "strategy": "fine-tune", "epochs": 2})
    record = result.model.info["adaptation"]
    assert record["target_labels_read"] == "none" and record["selected_on"] == "the source validation split"
    epoch = result.history[-1]
    assert 0.0 <= epoch["train_domain_accuracy"] <= 1.0 and epoch["train_grl_coefficient"] > 0
    assert "domain_adversary" not in "".join(result.model.model.state_dict())  # not part of the trained model


def test_resume_of_an_adaptation_run_equals_an_uninterrupted_one(tmp_path: Path, tiny_options: dict) -> None:
    import transferkit
    from conftest import make_class_folders
    from test_seeds_and_failures import _interrupted_and_resumed, _same_weights

    source = make_class_folders(tmp_path / "source", per_class=3)
    target = make_class_folders(tmp_path / "target", per_class=2, start=900)
    options = {**tiny_options, "strategy": "fine-tune", "epochs": 2, "patience": 0, "augment": "light",
               "batch_size": 4, "target_data": str(target), "adapt": "dann"}
    full = transferkit.train(str(source), out=str(tmp_path / "full"), progress=False, **options)
    cut = _interrupted_and_resumed(str(source), options, tmp_path, "cut", at=1)
    assert _same_weights(tmp_path / "full", tmp_path / "cut")
    assert [h["train_domain_accuracy"] for h in full.history] == [h["train_domain_accuracy"] for h in cut.history]


def test_bad_adaptation_inputs_are_one_line_errors(tmp_path: Path, tiny_weights: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from conftest import make_class_folders

    source = make_class_folders(tmp_path / "source", per_class=3)
    target = make_class_folders(tmp_path / "target", per_class=1, start=50)
    flags = ["--model", "timm:test_efficientnet", "--weights", tiny_weights, "--image-size", "32", "--batch-size",
             "4", "--workers", "0", "-q", "--data", source]
    broken = tmp_path / "broken"
    make_class_folders(broken, per_class=1)
    (broken / "red" / "damaged.png").write_bytes(b"not an image")
    other_classes = make_class_folders(tmp_path / "other", per_class=1, classes={"purple": (128, 0, 128)})
    deep = make_class_folders(tmp_path / "deep", per_class=1)
    from PIL import Image

    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(deep / "red" / "sixteen-bit.png")
    cases = [
        (["--adapt", "dann"], "--target-data"),
        (["--target-data", broken, "--adapt", "dann"], "damaged.png"),
        (["--target-data", deep, "--adapt", "dann"], "sixteen-bit.png"),
        (["--target-data", target, "--adapt", "dann", "--target-val", other_classes], "purple"),
        (["--target-data", target, "--adapt", "dann", "--strategy", "linear-probe"], "--hidden"),
        (["--target-data", target, "--adapt", "bogus"], "adapt"),
        (["--target-data", target, "--target-val", "builtin:fashion-mnist-m"], "test set"),
        (["--target-data", target, "--adapt", "dann", "--task", "segmentation"], "classification"),
        (["--wise-ft", "--task", "segmentation"], "classification"),
    ]
    for extra, expected in cases:
        code, _, err = run_cli(capsys, "train", *flags, *extra, "--out", tmp_path / "never")
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp_path / "never").exists()
    code, _, err = run_cli(capsys, "train", "--model", "minilm-l6", "--data", "builtin:bbc-news", "--target-data",
                           target, "--adapt", "dann", "--out", tmp_path / "never")
    assert code == 2 and "language model" in err


def test_text_retention_is_the_sentence_embedding_cosine(tmp_path: Path) -> None:
    from conftest import _tiny_bert_folder
    from transferkit.adaptation.forgetting import reference_batches
    from transferkit.adaptation.reference import SENTENCES
    from transferkit.models.text import load_text_model

    start = load_text_model(str(_tiny_bert_folder(tmp_path / "bert")), 2, pooling="mean")
    end = copy.deepcopy(start)
    with torch.no_grad():
        for name, parameter in end.backbone.named_parameters():
            if ".layer.1." in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    batches = reference_batches(start, list(SENTENCES), batch_size=16)
    assert compare_models(start, copy.deepcopy(start), batches).embedding_cosine == pytest.approx(1.0)
    moved = compare_models(start, end, batches)
    assert moved.top1_agreement is None and moved.embedding_cosine < 1.0
    groups = [g for g in moved.cka if g != "features"]
    assert moved.cka[groups[0]] == pytest.approx(1.0) and moved.most_changed == groups[-1]
    assert moved.weight_change[groups[0]] == 0.0 and moved.weight_change[groups[-1]] > 0.0


def test_batchnorm_recalibration_takes_the_statistics_of_the_given_batches() -> None:
    from transferkit.adaptation.interpolate import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    batches = [torch.randn(16, 3) + 5, torch.randn(16, 3) - 1]
    recalibrate_batchnorm(model, batches)
    inputs = torch.cat([model[0](b) for b in batches]).detach()
    assert torch.allclose(model[1].running_mean, inputs.mean(0), atol=1e-5)  # cumulative mean over the batches
    assert not model.training and model[1].momentum == 0.1


def test_a_run_without_a_probe_head_gets_one_fitted(class_folder: Path, tiny_weights: Path) -> None:
    from transferkit.adaptation.interpolate import wise_ft
    from transferkit.data.sources import load_training_data

    split = load_training_data(class_folder, val_fraction=0.25, seed=0)
    start = _tiny(tiny_weights)
    tuned = copy.deepcopy(start)
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    points, chosen, source = wise_ft(tuned, start, None, split, alphas=[0.0, 1.0], batch_size=8, progress=False)
    assert source.startswith("fitted now") and [p.alpha for p in points] == [0.0, 1.0]
    assert points[0].val_accuracy >= 2 / 3  # the fitted probe separates the colours on the pre-trained features


def test_adaptation_plans_and_limits(class_folder: Path, tiny_options: dict) -> None:
    import transferkit
    from transferkit.api import _Target
    from transferkit.data.sources import load_training_data
    from transferkit.distributed import World
    from transferkit.errors import TransferKitError
    from transferkit.options import TrainConfig

    options = {k: v for k, v in tiny_options.items() if k not in ("workers", "strategy")}
    plan = transferkit.plan(class_folder, strategy="linear-probe", hidden=8, target_data=str(class_folder),
                            adapt="dann", **options)
    assert [p.runs_on for p in plan.phases] == ["images"] and "Domain adaptation (dann)" in str(plan)
    two_stage = transferkit.plan(class_folder, target_data=str(class_folder), adapt="cdan", **options)
    assert [p.runs_on for p in two_stage.phases] == ["exact-fit", "images"]  # the probe stage stays source-only
    config = TrainConfig(data=str(class_folder), target_data=str(class_folder), adapt="dann").validate()
    with pytest.raises(TransferKitError, match="one process"):
        _Target.load(config, load_training_data(class_folder), World(size=2))


def test_task_sequence_backward_transfer(vision_run: Path, tmp_path: Path, tiny_options: dict,
                                         capsys: pytest.CaptureFixture) -> None:
    import transferkit
    from conftest import make_class_folders

    task_b = make_class_folders(tmp_path / "b", per_class=4, classes={"cyan": (0, 200, 200), "grey": (128,) * 3})
    options = {**tiny_options, "weights": str(vision_run / "model.safetensors"), "strategy": "fine-tune",
               "epochs": 1, "lr": 0.05}
    transferkit.train(str(task_b), out=str(tmp_path / "run-b"), progress=False, **options)
    code, out, _ = run_cli(capsys, "forgetting", tmp_path / "run-b", "--previous", vision_run, "--reference",
                           task_b, "--json")
    sequence = json.loads(out)["task_sequence"]
    before = transferkit.load(vision_run).evaluate()["accuracy"]
    assert code == 0 and sequence["accuracy_before"] == before
    assert sequence["backward_transfer"] == pytest.approx(sequence["accuracy_after"] - before)
    code, _, err = run_cli(capsys, "forgetting", vision_run, "--previous", tmp_path / "run-b")
    assert code == 2 and "did not start from" in err

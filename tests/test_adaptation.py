"""Domain shift and forgetting (issue 14): retention measures, WiSE-FT interpolation, domain adaptation.

Tiny models (timm ``test_efficientnet`` at 32 px, a 2-layer BERT) and tiny data; seconds each."""

from __future__ import annotations

import copy
import json
from pathlib import Path

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


def test_train_with_wise_ft(tmp_path: Path, tiny_options: dict) -> None:
    import transferkit
    from conftest import make_class_folders

    data = make_class_folders(tmp_path / "data", per_class=6)
    result = transferkit.train(str(data), out=str(tmp_path / "run"), wise_ft=True, progress=False,
                               **{**tiny_options, "epochs": 1})
    record = result.model.info["wise_ft"]
    assert len(record["sweep"]) == 11 and record["sweep"][0]["top1_agreement"] == 1.0
    assert record["probe_head"].startswith("the head at the end")
    assert json.loads((tmp_path / "run" / "interpolation.json").read_text())["alpha"] == record["alpha"]


def test_wise_ft_needs_a_fine_tuned_backbone(tmp_path: Path, tiny_options: dict) -> None:
    import transferkit
    from transferkit.errors import TransferKitError

    with pytest.raises(TransferKitError, match="--wise-ft"):
        transferkit.train(str(tmp_path), strategy="linear-probe", wise_ft=True, **tiny_options)

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

"""On-device augmentation (--device-augment): the same crops, flips and normalisation as the CPU path."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import transferkit
from test_decoded import PREP, SIZES, smooth_images
from transferkit.data import build_transforms
from transferkit.data.decoded import DecodedDataset, decoded_images
from transferkit.data.device import DeviceAugment, DeviceCrops, device_augment_choice
from transferkit.errors import TransferKitError


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("augment", ["none", "light"])
def test_device_batches_equal_the_cpu_path(tmp_path, interpolation, augment):
    """Same RNG state, same crop box and flip: the parameters are drawn by the CPU path's own transform objects under
    the same seed (the RNG state after each draw is identical), so every box and flip is the same.

    Pixels: ``--augment none`` (a centre crop, no resampling) is bit-equal. Light crops resample with Pillow's
    coefficients and 8-bit fixed-point arithmetic (antialiased, as the CPU path's PIL resize is), each pass alone
    bit-equal to Pillow's; the installed Pillow runs some sizes' two passes in the other order, so the rounding
    between them differs: within 1 grey level (bilinear; 2 for bicubic) on these smooth images, under 0.1 level on
    average — far below the CPU path's own difference from decoding every epoch (4.5 levels, test_decoded)."""
    prep = replace(PREP, interpolation=interpolation)
    samples = smooth_images(tmp_path, SIZES)
    images = decoded_images(samples, prep, tmp_path / "cache", progress=False)
    cpu = DecodedDataset(images, samples.labels, build_transforms(prep, augment, decoded=True)[0])
    crops, augment_on_device = DeviceCrops(images, samples.labels, prep, augment), DeviceAugment(images, prep)
    expected, params = [], []
    for i in range(len(samples)):
        for seed in range(8):
            torch.manual_seed(seed)
            expected.append(cpu[i][0])
            after_cpu = torch.get_rng_state()
            torch.manual_seed(seed)
            drawn, label = crops[i]
            assert torch.equal(torch.get_rng_state(), after_cpu) and label == samples.labels[i]
            params.append(drawn)
    batch = augment_on_device(torch.stack(params))
    expected = torch.stack(expected)
    assert batch.shape == expected.shape == (len(params), 3, 32, 32) and batch.dtype == torch.float32
    difference = (batch - expected).abs() * 0.5 * 255  # in grey levels (std 0.5)
    if augment == "none":
        assert torch.equal(batch, expected)
    else:
        worst = 1 if interpolation == "bilinear" else 2  # bicubic's overshoot is clipped between the passes
        assert float(difference.max()) <= worst + 1e-4 and float(difference.mean()) < 0.1, difference.max()
        flips = torch.stack(params)[:, 5]
        assert 0 < int(flips.sum()) < len(flips)  # both branches are exercised


def test_normalisation_equals_the_cpu_transform(tmp_path):
    samples = smooth_images(tmp_path, SIZES[:2])
    images = decoded_images(samples, PREP, tmp_path / "cache", progress=False)
    prep = replace(PREP, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    _, evaluation = build_transforms(prep, "none", decoded=True)
    crops = DeviceCrops(images, samples.labels, prep, "none")
    batch = DeviceAugment(images, prep)(torch.stack([crops[i][0] for i in range(2)]))
    assert torch.equal(batch, torch.stack([DecodedDataset(images, samples.labels, evaluation)[i][0] for i in range(2)]))


def test_device_augment_choice():
    common = {"decoded": True, "augment": "light", "interpolation": "bicubic"}
    assert device_augment_choice("auto", cuda=True, **common)[0]
    assert not device_augment_choice("auto", cuda=False, **common)[0]
    assert device_augment_choice("on", cuda=False, **common)[0]  # on the CPU when asked (what the tests run)
    on, why = device_augment_choice("auto", cuda=True, **{**common, "augment": "heavy"})
    assert not on and "--augment heavy" in why
    with pytest.raises(TransferKitError, match="--device-augment on cannot run with --decoded-cache off"):
        device_augment_choice("on", cuda=True, **{**common, "decoded": False})
    assert not device_augment_choice("off", cuda=True, **common)[0]


def test_tiny_training_run_with_device_augment(class_folder, tiny_options, tmp_path, monkeypatch):
    seen = []
    original = transferkit.api.fit

    def spy(model, train_loader, *args, **kwargs):
        seen.append((type(train_loader.dataset).__name__, type(kwargs.get("batch_transform")).__name__))
        return original(model, train_loader, *args, **kwargs)

    monkeypatch.setattr(transferkit.api, "fit", spy)
    result = transferkit.train(class_folder, epochs=2, device_augment="on",
                               out=str(tmp_path / "r"), progress=False,
                               **{**{k: v for k, v in tiny_options.items() if k != "epochs"}, "augment": "light",
                                  "strategy": "fine-tune"})
    assert seen == [("DeviceCrops", "DeviceAugment")]
    assert len(result.history) == 2 and all(r["train_loss"] == r["train_loss"] for r in result.history)
    config = (result.run_dir / "config.yaml").read_text()
    assert "device_augment: 'on'" in config or "device_augment: on" in config
    info = json.loads((result.run_dir / "transferkit.json").read_text())
    assert info["device_augment"] == {"setting": "on", "used": True}


def test_option_in_help_and_plan(capsys, class_folder, tiny_options, monkeypatch):
    from test_cli import run_cli

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and "--device-augment" in out
    plan = transferkit.plan(class_folder, device_augment="on",
                            **{**tiny_options, "strategy": "fine-tune", "augment": "light"})
    assert "Input pipeline: on-device augmentation on" in str(plan)

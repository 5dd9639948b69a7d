"""Decoded-input cache: same pixels as decoding every epoch, stored once, reused, never stale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit
from conftest import make_image
from transferkit.data import build_transforms, load_training_data, open_image
from transferkit.data.decoded import DecodedDataset, decoded_images
from transferkit.models import Preprocessing

PREP = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32, crop_pct=0.8, interpolation="bilinear",
                     source="test")


def test_decoded_evaluation_matches_decoding_every_time(tmp_path):
    from PIL import Image

    for i, size in enumerate([(60, 60), (80, 50), (41, 77)]):
        image = np.random.default_rng(i).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    samples = transferkit.data.ImageSamples(sorted(tmp_path.glob("*.png")), [0, 1, 0], ["a", "b"])
    decoded = decoded_images(samples, PREP, tmp_path / "cache", progress=False)
    assert decoded.shape == (3, 3, PREP.resize_size, PREP.resize_size) and decoded.dtype == np.uint8
    _, eval_plain = build_transforms(PREP, "none")
    _, eval_decoded = build_transforms(PREP, "none", decoded=True)
    dataset = DecodedDataset(decoded, samples.labels, eval_decoded)
    for i, path in enumerate(samples.items):
        plain = eval_plain(open_image(path))
        from_cache, label = dataset[i]
        assert label == samples.labels[i] and from_cache.shape == plain.shape
        # identical pixels, up to a one-pixel shift of the centre crop when sizes round differently
        shifts = [torch.roll(from_cache, (dy, dx), (1, 2))[:, 1:-1, 1:-1] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert min(float((s - plain[:, 1:-1, 1:-1]).abs().max()) for s in shifts) < 1e-5


def test_decoded_cache_is_reused_and_keyed_on_the_files(class_folder, tmp_path):
    data = load_training_data(class_folder)
    cache = tmp_path / "cache"
    first = decoded_images(data.train, PREP, cache, progress=False)
    entries = list(cache.iterdir())
    again = decoded_images(data.train, PREP, cache, progress=False)
    assert np.array_equal(np.asarray(again), first) and list(cache.iterdir()) == entries
    make_image(data.train.items[0], (0, 0, 0), seed=99)  # the file changes on disk
    changed = decoded_images(data.train, PREP, cache, progress=False)
    assert not np.array_equal(np.asarray(changed[0]), first[0]) and len(list(cache.iterdir())) == 2
    bigger = decoded_images(data.train, PREP.with_image_size(48), cache, progress=False)
    assert bigger.shape[-1] == PREP.with_image_size(48).resize_size


@pytest.mark.parametrize("setting, expected", [("auto", "DecodedDataset"), ("off", "ImageDataset")])
def test_training_reads_the_decoded_cache(class_folder, tiny_options, tmp_path, setting, expected, monkeypatch):
    seen = []
    original = transferkit.api.fit

    def spy(model, train_loader, *args, **kwargs):
        seen.append(type(train_loader.dataset).__name__)
        return original(model, train_loader, *args, **kwargs)

    monkeypatch.setattr(transferkit.api, "fit", spy)
    transferkit.train(class_folder, strategy="fine-tune", epochs=1, decoded_cache=setting, out=str(tmp_path / "r"),
                      progress=False, **{k: v for k, v in tiny_options.items() if k != "epochs"})
    assert seen == [expected]

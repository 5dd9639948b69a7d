"""Decoded-input cache: same pixels as decoding every epoch, stored once, reused, never stale."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

import transferkit
from conftest import make_image
from transferkit.data import build_transforms, load_training_data, open_image
from transferkit.data.decoded import DecodedDataset, decoded_images, estimated_bytes
from transferkit.models import Preprocessing

PREP = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32, crop_pct=0.8, interpolation="bilinear",
                     source="test")


def smooth_images(folder, sizes):
    """Non-square PNGs of low-frequency content (gradients and a slow wave), where resampling twice (the cache's
    resize, then the crop's) gives the same pixels as resampling once up to a few grey levels."""
    from PIL import Image

    paths = []
    for i, (w, h) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        pixels = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 127 + 100 * np.sin(2 * np.pi * (x / w + y / h) + i)],
                          axis=-1)
        paths.append(folder / f"{i}.png")
        Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(paths[-1])
    return transferkit.data.ImageSamples(paths, [i % 2 for i in range(len(paths))], ["a", "b"])


SIZES = [(80, 50), (41, 77), (160, 45), (30, 20)]  # landscape, portrait, panorama, smaller than the resize


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("augment", ["light", "heavy"])
def test_decoded_training_crops_equal_decoding_every_time(tmp_path, interpolation, augment):
    """Same RNG state, same crop: the random resized crop's box is drawn on the source image's size in both paths
    (so it reaches the borders of non-square images), and the cached path takes it from the stored full image.

    Exact: both paths draw the same random numbers (the RNG state after each transform is identical), so every
    augmentation parameter is the same. Within interpolation tolerance, not pixel-equal: the cached path resamples
    twice (the cache's resize, then the crop's), so on these smooth images the light crops agree within 4.5 grey
    levels inside (0.035 after normalising by std 0.5) and 10 at the crop's edge, 0.6 levels on average; a crop of
    another region differs by up to 255. Heavy augmentation's thresholds (solarize, posterize) turn a one-level
    difference into a large one on a few pixels, so there only the mean is bounded.
    """
    prep = replace(PREP, interpolation=interpolation)
    samples = smooth_images(tmp_path, SIZES)
    train_plain, _ = build_transforms(prep, augment)
    train_cached, _ = build_transforms(prep, augment, decoded=True)
    dataset = DecodedDataset(decoded_images(samples, prep, tmp_path / "cache", progress=False), samples.labels,
                             train_cached)
    worst, inside, mean = 0.0, 0.0, []
    for i, path in enumerate(samples.items):
        for seed in range(12):
            torch.manual_seed(seed)
            plain = train_plain(open_image(path))
            after_plain = torch.get_rng_state()
            torch.manual_seed(seed)
            cached, label = dataset[i]
            assert torch.equal(torch.get_rng_state(), after_plain)  # the same random draws, in the same order
            assert label == samples.labels[i] and cached.shape == plain.shape == (3, 32, 32)
            difference = (cached - plain).abs()
            worst, inside = max(worst, float(difference.max())), max(inside, float(difference[:, 2:-2, 2:-2].max()))
            mean.append(float(difference.mean()))
    if augment == "light":
        assert worst < 0.08 and inside < 0.035, (worst, inside)
    assert np.mean(mean) < (0.005 if augment == "light" else 0.03), np.mean(mean)


def test_decoded_evaluation_matches_decoding_every_time(tmp_path):
    from PIL import Image

    for i, size in enumerate([(60, 60), (80, 50), (41, 77)]):
        image = np.random.default_rng(i).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    samples = transferkit.data.ImageSamples(sorted(tmp_path.glob("*.png")), [0, 1, 0], ["a", "b"])
    decoded = decoded_images(samples, PREP, tmp_path / "cache", progress=False)
    # the full image, short side resized to resize_size (40) with its aspect ratio kept
    assert [tuple(decoded[i].shape) for i in range(3)] == [(40, 40, 3), (40, 64, 3), (75, 40, 3)]
    assert decoded[0].dtype == np.uint8
    # what prepare.py can check against its size limit before decoding: from the headers, exact when all are probed
    assert estimated_bytes(samples, PREP) == decoded.nbytes == 3 * (40 * 40 + 40 * 64 + 75 * 40)
    for augment in ("none", "light"):
        _, eval_plain = build_transforms(PREP, augment)
        _, eval_decoded = build_transforms(PREP, augment, decoded=True)
        dataset = DecodedDataset(decoded, samples.labels, eval_decoded)
        for i, path in enumerate(samples.items):
            plain = eval_plain(open_image(path))
            from_cache, label = dataset[i]
            assert label == samples.labels[i] and torch.equal(from_cache, plain)  # pixel-equal: one resize in both


def test_decoded_cache_is_reused_and_keyed_on_the_files(class_folder, tmp_path):
    data = load_training_data(class_folder)
    cache = tmp_path / "cache"
    first = decoded_images(data.train, PREP, cache, progress=False)
    entries = list(cache.iterdir())
    again = decoded_images(data.train, PREP, cache, progress=False)
    assert all(np.array_equal(again[i], first[i]) for i in range(len(first))) and list(cache.iterdir()) == entries
    assert isinstance(again.pixels, np.memmap)  # reused entries are memory-mapped, not read into memory
    shipped = pickle.loads(pickle.dumps(again))  # to DataLoader workers: by path, mapped again there
    assert len(pickle.dumps(again)) < 1000 and isinstance(shipped.pixels, np.memmap)
    assert np.array_equal(shipped[3], first[3]) and shipped.source_size(3) == first.source_size(3) == (24, 24)
    make_image(data.train.items[0], (0, 0, 0), seed=99)  # the file changes on disk
    changed = decoded_images(data.train, PREP, cache, progress=False)
    assert not np.array_equal(changed[0], first[0]) and len(list(cache.iterdir())) == 2
    bigger = decoded_images(data.train, PREP.with_image_size(48), cache, progress=False)
    assert bigger[0].shape[0] == PREP.with_image_size(48).resize_size


@pytest.mark.parametrize("setting, expected", [("auto", "DecodedDataset"), ("off", "ImageDataset")])
def test_training_reads_the_decoded_cache(class_folder, tiny_options, tmp_path, setting, expected, monkeypatch):
    seen = []
    original = transferkit.api.fit

    def spy(model, train_loader, *args, **kwargs):
        seen.append(type(train_loader.dataset).__name__)
        return original(model, train_loader, *args, **kwargs)

    monkeypatch.setattr(transferkit.api, "fit", spy)
    transferkit.train(class_folder, epochs=1, decoded_cache=setting, out=str(tmp_path / "r"),
                      progress=False,
                      **{**{k: v for k, v in tiny_options.items() if k != "epochs"}, "strategy": "fine-tune"})
    assert seen == [expected]


def test_without_augmentation_the_decoded_cache_trains_exactly_like_decoding(tiny_options, tmp_path):
    """Non-square images, ``--augment none``: the cache must be a pure speed-up — bit-identical weights."""
    from PIL import Image

    for c, colour in enumerate([(220, 40, 40), (40, 200, 60)]):
        for i in range(6):
            rng = np.random.default_rng(100 * c + i)
            size = (24 + 7 * (i % 3), 24 + 5 * (i % 2))  # portrait, landscape and square, odd differences
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "data" / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    options = {**tiny_options, "strategy": "fine-tune", "epochs": 1, "augment": "none", "progress": False}
    cached = transferkit.train(tmp_path / "data", out=str(tmp_path / "cached"), decoded_cache="auto", **options)
    plain = transferkit.train(tmp_path / "data", out=str(tmp_path / "plain"), decoded_cache="off", **options)
    a, b = cached.model.model.state_dict(), plain.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

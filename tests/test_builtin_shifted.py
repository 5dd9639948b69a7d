"""Domain-shifted built-ins: builtin:fashion-mnist-m and builtin:font-digits."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_subset import write_fmnist_subset
from transferkit.data import load_builtin, load_training_data
from transferkit.data import shifted as shifted_module
from transferkit.data.builtin import BUILTIN_DATASETS, FASHION_MNIST_CLASSES
from transferkit.data.photos import photo_names
from transferkit.errors import TransferKitError

DIGIT_LEVELS = {int(round(k * 255 / 16)) for k in range(17)}


@pytest.fixture
def small_fmnist(tmp_path, monkeypatch):
    """$TRANSFERKIT_DATA with 300 train and 100 t10k Fashion-MNIST items (and the generated-data cache)."""
    monkeypatch.setenv("TRANSFERKIT_DATA", str(write_fmnist_subset(tmp_path / "data")))
    return tmp_path / "data"


@pytest.fixture
def small_font_digits(tmp_path, monkeypatch):
    """font-digits with 60 pool and 40 test images, cached in a temporary folder."""
    monkeypatch.delenv("TRANSFERKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(shifted_module, "FONT_DIGITS_COUNTS", {"pool": 60, "test": 40})
    return tmp_path / "cache"


def test_both_are_registered_classification_builtins():
    assert {"fashion-mnist-m", "font-digits"} <= set(BUILTIN_DATASETS)


def test_fashion_mnist_m_shapes_classes_and_cache(small_fmnist):
    plain = load_builtin("fashion-mnist")
    data = load_builtin("fashion-mnist-m")
    assert (len(data.pool), len(data.test)) == (300, 100)
    assert data.pool.classes == FASHION_MNIST_CLASSES == data.test.classes
    assert data.pool.labels == plain.pool.labels and data.test.labels == plain.test.labels
    pool = np.stack(data.pool.items)
    assert pool.shape == (300, 28, 28, 3) and pool.dtype == np.uint8
    # colour photo patches: the channels differ, and the images are far from the grey originals
    assert np.abs(pool[..., 0].astype(int) - pool[..., 2]).mean() > 5
    assert np.abs(pool.astype(int) - np.stack(plain.pool.items)[..., None]).mean() > 20
    cached = list((small_fmnist / "generated" / "fashion-mnist-m").glob("v*.npz"))
    assert len(cached) == 1
    again = load_builtin("fashion-mnist-m")  # read from the cache: the same bytes
    assert np.array_equal(np.stack(again.pool.items), pool)
    assert np.array_equal(np.stack(again.test.items), np.stack(data.test.items))


def test_mnist_m_blend_is_the_absolute_difference_and_deterministic():
    items = np.zeros((50, 28, 28), dtype=np.uint8)
    patches = shifted_module.mnist_m_blend(items, "train", seed=3)  # |patch - 0| = the patch itself
    inverted = shifted_module.mnist_m_blend(items + 255, "train", seed=3)  # |patch - 255| = 255 - patch
    assert np.array_equal(patches.astype(int) + inverted, np.full(patches.shape, 255))
    assert np.array_equal(shifted_module.mnist_m_blend(items, "train", seed=3), patches)
    assert not np.array_equal(shifted_module.mnist_m_blend(items, "train", seed=4), patches)
    assert not np.array_equal(shifted_module.mnist_m_blend(items, "test", seed=3), patches)


def test_patch_sources_are_disjoint_between_pool_and_test():
    train, test = set(photo_names("train", colour_only=True)), set(photo_names("test", colour_only=True))
    assert train and test and not train & test
    assert not set(photo_names("train")) & set(photo_names("test"))
    for side in ("train", "test"):
        sources = shifted_module._patch_sources(side)
        assert len(sources) == len(photo_names(side, colour_only=True)) * len(shifted_module.PATCH_SCALES)


def test_font_digits_load_like_sklearn_digits(small_font_digits):
    data = load_training_data("builtin:font-digits", per_class=3, seed=0)
    assert data.classes == [str(i) for i in range(10)] == load_training_data("builtin:digits").classes
    assert data.train.class_counts() == {str(i): 3 for i in range(10)}
    assert len(data.test) == 40 and sorted(set(data.test.labels)) == list(range(10))
    images = np.stack(data.train.items + data.test.items)
    assert images.shape[1:] == (8, 8) and images.dtype == np.uint8
    assert set(np.unique(images)) <= DIGIT_LEVELS  # 17 grey levels, scaled like builtin:digits
    # like scikit-learn's digits, the glyph spans (nearly) all rows and is not a blank or a full square
    rows_with_ink = (images > 0).any(axis=2).sum(axis=1)
    assert rows_with_ink.min() >= 7
    assert 0.2 < (images > 0).mean() < 0.8


def test_font_digits_is_deterministic_and_cached(small_font_digits):
    first = load_builtin("font-digits")
    assert len(list((small_font_digits / "transferkit" / "generated" / "font-digits").glob("v*.npz"))) == 1
    again = load_builtin("font-digits")
    assert np.array_equal(np.stack(first.pool.items), np.stack(again.pool.items))
    fresh, labels = shifted_module.render_font_digits(60, shifted_module.FONT_SPLIT["pool"], split_key=0)
    assert np.array_equal(fresh, np.stack(first.pool.items)) and list(labels) == first.pool.labels


def test_font_digits_pool_and_test_fonts_are_disjoint_and_installed():
    pool, test = (set(shifted_module.FONT_SPLIT[s]) for s in ("pool", "test"))
    assert pool and test and not pool & test
    for name in pool | test:
        assert (shifted_module.font_dir() / name).is_file()
    # each font gives ten different digits (a font without digit glyphs would draw ten identical boxes)
    for name in sorted(pool | test):
        images, _ = shifted_module.render_font_digits(10, (name,), seed=0)
        assert len({image.tobytes() for image in images}) == 10, name


def test_fonts_change_the_rendering():
    pool, _ = shifted_module.render_font_digits(20, shifted_module.FONT_SPLIT["pool"][:1], seed=0)
    test, _ = shifted_module.render_font_digits(20, shifted_module.FONT_SPLIT["test"][:1], seed=0)
    assert not np.array_equal(pool, test)


def test_missing_font_is_a_clear_error():
    with pytest.raises(TransferKitError, match="reinstall matplotlib"):
        shifted_module.render_font_digits(2, ("NoSuchFont.ttf",))

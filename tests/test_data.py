"""Data sources, splits, built-ins, transforms and bad-input errors."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_class_folders, make_image
from transferkit.data import build_transforms, load_eval_data, load_training_data, open_image
from transferkit.data import builtin as builtin_module
from transferkit.data import fashion_mnist as fashion_mnist_module
from transferkit.errors import TransferKitError
from transferkit.models import Preprocessing

PREP = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32, crop_pct=0.875, interpolation="bicubic",
                     source="test")


def test_single_folder_is_split_stratified_and_seeded(class_folder):
    data = load_training_data(class_folder, val_fraction=0.25, seed=3)
    assert data.classes == ["blue", "green", "red"]
    assert Counter(data.val.labels) == {0: 2, 1: 2, 2: 2} and len(data.train) == 18
    again = load_training_data(class_folder, val_fraction=0.25, seed=3)
    other = load_training_data(class_folder, val_fraction=0.25, seed=4)
    assert again.val.items == data.val.items and other.val.items != data.val.items
    assert not set(data.val.items) & set(data.train.items)


def test_tree_with_val_and_test(image_tree):
    data = load_training_data(image_tree)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 9, 9)
    assert load_training_data(image_tree, per_class=2).train.class_counts() == {"blue": 2, "green": 2, "red": 2}


def test_csv_manifest_with_relative_paths_and_split(class_folder, tmp_path):
    rows = ["path,label,split"]
    for i, path in enumerate(sorted(class_folder.rglob("*.png"))):
        rows.append(f"{path.relative_to(tmp_path)},{path.parent.name},{'val' if i % 4 == 0 else 'train'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    data = load_training_data(manifest)
    assert data.classes == ["blue", "green", "red"] and (len(data.train), len(data.val)) == (18, 6)


def test_csv_manifest_missing_columns_names_what_it_found(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.png,cat\n")
    with pytest.raises(TransferKitError, match=r"needs columns 'path' and 'label'.*found \['file', 'class'\]"):
        load_training_data(manifest)


def test_builtin_datasets_and_per_class():
    digits = load_training_data("builtin:digits", per_class=5, seed=1)
    assert digits.train.class_counts() == {str(i): 5 for i in range(10)}
    assert len(digits.test) == 539 and not set(map(id, digits.train.items)) & set(map(id, digits.test.items))
    faces = load_training_data("builtin:lfw-faces")
    assert faces.classes == ["face", "non-face"] and len(faces.train) + len(faces.val) + len(faces.test) == 200


def test_fashion_mnist_download_fallback_uses_the_url(tmp_path, monkeypatch):
    """No Debian package: the files are fetched from the configured URL (here a local file:// folder)."""
    server = tmp_path / "server"
    server.mkdir()
    rng = np.random.default_rng(0)
    for key, name in builtin_module.FASHION_MNIST_FILES.items():
        n = 30 if key.startswith("train") else 10
        if key.endswith("images"):
            payload = bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
            payload += rng.integers(0, 255, n * 784, dtype=np.uint8).tobytes()
        else:
            payload = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
        with gzip.open(server / name, "wb") as handle:
            handle.write(payload)
    monkeypatch.setattr(fashion_mnist_module, "FASHION_MNIST_DIRS", (tmp_path / "not-installed",))
    monkeypatch.delenv("TRANSFERKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERKIT_FASHION_MNIST_URL", server.as_uri() + "/")
    dataset = builtin_module.load_builtin("fashion-mnist")
    assert (len(dataset.pool), len(dataset.test)) == (30, 10)
    assert (tmp_path / "cache" / "transferkit" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    monkeypatch.setenv("TRANSFERKIT_FASHION_MNIST_URL", (tmp_path / "nowhere").as_uri() + "/")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    with pytest.raises(TransferKitError, match="apt-get install dataset-fashion-mnist"):
        builtin_module.load_builtin("fashion-mnist")


def test_greyscale_and_rgba_become_three_channels(tmp_path):
    make_image(tmp_path / "g.png", (100, 100, 100), 0, mode="L")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red: composited on white
    rgba.save(tmp_path / "a.png")
    assert open_image(tmp_path / "g.png").mode == "RGB"
    pixel = open_image(tmp_path / "a.png").getpixel((0, 0))
    assert pixel == (255, 255, 255)
    assert open_image(np.zeros((5, 5), dtype=np.uint8)).mode == "RGB"


@pytest.mark.parametrize("augment", ["none", "light", "heavy"])
def test_transforms_follow_the_preprocessing(augment):
    train_tf, eval_tf = build_transforms(PREP, augment)
    image = Image.fromarray(np.full((50, 70, 3), 255, dtype=np.uint8))
    for tf in (train_tf, eval_tf):
        assert tf(image).shape == (3, 32, 32)
    assert torch.allclose(eval_tf(image), torch.ones(3, 32, 32))  # (1 - 0.5) / 0.5
    with pytest.raises(TransferKitError, match="'augment' parameter"):
        build_transforms(PREP, "medium")


def test_missing_folder(tmp_path):
    with pytest.raises(TransferKitError, match="Data not found"):
        load_training_data(tmp_path / "nope")


def test_empty_class_folder(class_folder):
    (class_folder / "purple").mkdir()
    with pytest.raises(TransferKitError, match="purple has no images"):
        load_training_data(class_folder)


def test_single_class(tmp_path):
    make_class_folders(tmp_path / "one", classes={"only": (1, 2, 3)})
    with pytest.raises(TransferKitError, match="Only one class"):
        load_training_data(tmp_path / "one")


def test_unreadable_image_is_named_or_skipped(class_folder):
    bad = class_folder / "red" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(TransferKitError, match="broken.png.*--skip-bad-images"):
        load_training_data(class_folder)
    data = load_training_data(class_folder, skip_bad_images=True)
    assert data.skipped == [str(bad)] and len(data.train) + len(data.val) == 24


def test_eval_data_rejects_labels_unseen_in_training(tmp_path):
    make_class_folders(tmp_path / "eval", per_class=2, classes={"red": (200, 0, 0), "purple": (90, 0, 90)})
    with pytest.raises(TransferKitError, match="'purple'.*not seen in training"):
        load_eval_data(tmp_path / "eval", ["blue", "green", "red"])


def test_eval_data_maps_labels_onto_the_run_classes(tmp_path):
    make_class_folders(tmp_path / "eval", per_class=2, classes={"red": (200, 0, 0)})
    samples = load_eval_data(tmp_path / "eval", ["blue", "green", "red"])
    assert samples.labels == [2, 2] and samples.classes == ["blue", "green", "red"]


def test_per_class_beyond_the_pool_says_how_many_fit():
    with pytest.raises(TransferKitError, match=r"--per-class 200 leaves no validation data for 0, 1, 2, 3, 4 \.\.\. "
                                               r"\(the pool has 1\d\d .*Fix: use --per-class 1\d\d or less"):
        load_training_data("builtin:digits", per_class=200)
    data = load_training_data("builtin:digits", per_class=100)
    assert len(data.train) == 1000 and len(data.val) == 246  # 25 per class where the pool has them (some have 24)

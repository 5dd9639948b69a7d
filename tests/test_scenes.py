"""builtin:fashion-scenes: masks, boxes, COCO files, determinism, disjoint splits, cache and baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_subset import write_fmnist_subset
from transferkit.data import load_builtin
from transferkit.data import scenes as scenes_module
from transferkit.data.builtin import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, read_idx
from transferkit.data.photos import photo_names
from transferkit.errors import TransferKitError

COUNTS = {"train": 8, "test": 5}
SIZE = 96


def _generate(data_dir: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERKIT_DATA", str(data_dir))
        return scenes_module.fashion_scenes(train_scenes=COUNTS["train"], test_scenes=COUNTS["test"], size=SIZE,
                                            seed=1, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fmnist_subset(tmp_path_factory.mktemp("data"), train=300, test=100)


@pytest.fixture(scope="module")
def root(data_dir: Path) -> Path:
    return _generate(data_dir)


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _mask(root: Path, split: str, file_name: str) -> np.ndarray:
    with Image.open(root / "masks" / split / file_name) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_layout_and_description(root):
    info = scenes_module.read_scenes(root)
    assert info.splits == ("train", "test") and info.counts == COUNTS and info.size == SIZE
    assert info.classes == FASHION_MNIST_CLASSES and info.mask_classes == ["background", *FASHION_MNIST_CLASSES]
    assert json.loads((root / "classes.json").read_text()) == info.mask_classes
    for split in info.splits:
        names = [f"{i:05d}.png" for i in range(COUNTS[split])]
        assert sorted(p.name for p in info.images(split).iterdir()) == names
        assert sorted(p.name for p in info.masks(split).iterdir()) == names
        with Image.open(info.images(split) / names[0]) as image:
            assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        assert info.objects[split] == len(_coco(root, split)["annotations"]) >= COUNTS[split]
    assert not list(root.parent.glob(".tmp-*"))  # the temporary folder was renamed, not left behind


@pytest.mark.parametrize("split", ["train", "test"])
def test_coco_annotations_are_valid_and_match_the_masks(root, split):
    coco = _coco(root, split)
    assert [c["name"] for c in coco["categories"]] == FASHION_MNIST_CLASSES
    category_ids = {c["id"] for c in coco["categories"]}
    assert category_ids == set(range(1, 11))
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == COUNTS[split]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for image_id, anns in by_image.items():
        image = images[image_id]
        mask = _mask(root, split, image["file_name"])
        assert mask.shape == (image["height"], image["width"]) == (SIZE, SIZE) and mask.dtype == np.uint8
        assert mask.max() <= 10
        assert 1 <= len(anns) <= scenes_module.ITEMS_PER_SCENE[1]
        covered = np.zeros(mask.shape, dtype=int)
        for ann in anns:
            assert ann["category_id"] in category_ids and ann["iscrowd"] == 0
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            visible = scenes_module.rle_decode(ann["segmentation"])
            assert ann["area"] == visible.sum() > 0
            assert np.all(mask[visible] == ann["category_id"])  # the item's pixels carry its class in the mask
            ys, xs = np.nonzero(visible)  # the box bounds the visible pixels tightly
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert ann["area"] >= scenes_module.MIN_VISIBLE * ann["source"]["pixels"]  # occlusion is limited
            covered += visible
        assert covered.max() <= 1  # items do not share pixels
        assert np.array_equal(covered > 0, mask > 0)  # and every labelled pixel belongs to an item


def test_train_and_test_use_disjoint_items_and_backgrounds(root, data_dir):
    train, test = _coco(root, "train"), _coco(root, "test")
    assert {a["source"]["file"] for a in train["annotations"]} == {"train"}
    assert {a["source"]["file"] for a in test["annotations"]} == {"t10k"}
    train_bg = {image["background"]["source"] for image in train["images"]}
    test_bg = {image["background"]["source"] for image in test["images"]}
    assert train_bg <= set(photo_names("train")) and test_bg <= set(photo_names("test"))
    assert not set(photo_names("train")) & set(photo_names("test"))
    info = scenes_module.read_scenes(root)
    assert not set(info.backgrounds["train"]) & set(info.backgrounds["test"])
    # the recorded item index and class agree with the Fashion-MNIST file the split draws from
    for split, coco in (("train", train), ("test", test)):
        labels = read_idx(data_dir / "fashion-mnist" / FASHION_MNIST_FILES[f"{split}_labels"])
        for ann in coco["annotations"]:
            assert labels[ann["source"]["index"]] + 1 == ann["category_id"]


def test_same_call_gives_the_same_bytes(root, tmp_path):
    other = _generate(write_fmnist_subset(tmp_path / "data", train=300, test=100))
    assert other != root and other.name == root.name
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for relative in files:
        assert (root / relative).read_bytes() == (other / relative).read_bytes(), relative


def test_scene_depends_only_on_split_index_and_seed(data_dir):
    items = read_idx(data_dir / "fashion-mnist" / FASHION_MNIST_FILES["train_images"])
    labels = read_idx(data_dir / "fashion-mnist" / FASHION_MNIST_FILES["train_labels"])
    first = scenes_module.render_scene("train", 7, items, labels, size=64, seed=2)
    again = scenes_module.render_scene("train", 7, items, labels, size=64, seed=2)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert np.array_equal(first.boxes, again.boxes) and first.background == again.background
    for split, index, seed in (("train", 8, 2), ("train", 7, 3), ("test", 7, 2)):
        other = scenes_module.render_scene(split, index, items, labels, size=64, seed=seed)
        assert not np.array_equal(other.image, first.image)


def test_items_are_pasted_opaque_over_the_background(data_dir):
    """Outside the items the scene is the background crop; inside, the tinted item replaced it."""
    items = read_idx(data_dir / "fashion-mnist" / FASHION_MNIST_FILES["train_images"])
    labels = read_idx(data_dir / "fashion-mnist" / FASHION_MNIST_FILES["train_labels"])
    scene = scenes_module.render_scene("train", 0, items, labels, size=64, seed=0)
    background, record = scenes_module._background("train", 64, np.random.default_rng([0, 0, 0]))
    assert record == scene.background
    outside = scene.mask == 0
    assert np.array_equal(scene.image[outside], background[outside])
    assert np.any(scene.image[~outside] != background[~outside])


def test_cached_dataset_is_reused_and_failed_generation_leaves_nothing(root, data_dir, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA", str(data_dir))

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(scenes_module, "_write", fail)
    again = scenes_module.fashion_scenes(train_scenes=COUNTS["train"], test_scenes=COUNTS["test"], size=SIZE, seed=1)
    assert again == root  # served from the cache: _write was not called
    with pytest.raises(RuntimeError, match="interrupted"):
        scenes_module.fashion_scenes(train_scenes=2, test_scenes=1, size=SIZE, seed=1)
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]


def test_bad_parameters_and_classification_use_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp_path))
    with pytest.raises(TransferKitError, match="'train_scenes' parameter must be a positive integer"):
        scenes_module.fashion_scenes(train_scenes=0)
    with pytest.raises(TransferKitError, match="'size' parameter"):
        scenes_module.fashion_scenes(size=16)
    with pytest.raises(TransferKitError, match="--task segmentation"):
        load_builtin("fashion-scenes")
    with pytest.raises(TransferKitError, match="not a fashion-scenes dataset"):
        scenes_module.read_scenes(tmp_path)


def test_otsu_baseline_scores_against_the_true_masks(root):
    scores = {p: scenes_module.otsu_baseline(root, "test", polarity=p) for p in ("bright", "dark", "minority",
                                                                                "oracle")}
    for score in scores.values():
        assert score.scenes == COUNTS["test"] and 0.0 <= score.foreground_iou <= 1.0
    # the oracle picks the better side of the threshold per scene, so it bounds the other polarities
    best = max(scores[p].foreground_iou for p in ("bright", "dark", "minority"))
    assert scores["oracle"].foreground_iou >= best - 1e-12
    assert scores["oracle"].foreground_iou < 0.9  # a global threshold does not solve the task


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for first in (False, True):
        mask = rng.random((7, 5)) > 0.6
        mask[0, 0] = first
        rle = scenes_module.rle_encode(mask)
        assert sum(rle["counts"]) == mask.size and rle["size"] == [7, 5]
        assert (rle["counts"][0] == 0) == first
        assert np.array_equal(scenes_module.rle_decode(rle), mask)

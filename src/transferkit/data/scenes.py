"""``builtin:fashion-scenes``: Fashion-MNIST items pasted on real photographs, for segmentation and detection.

Each scene is a square RGB image (128x128 by default) cut from a scikit-image photograph or texture, with 1 to 4
Fashion-MNIST items pasted at random sizes, positions and colour tints. Masks and boxes are exact: an item covers
the pixels where its resized grey intensity reaches :data:`ITEM_THRESHOLD`, it is opaque there (its shading is
kept, multiplied by the tint), and a later item hides what it covers. Placements that would leave an earlier item
less than :data:`MIN_VISIBLE` of its pixels are redrawn.

Train scenes use Fashion-MNIST *train* items on the ``train`` photographs of :mod:`transferkit.data.photos`; test
scenes use *t10k* items on the ``test`` photographs, so the test measures generalisation to new items and new
backgrounds. Scene ``i`` of a split depends only on ``(seed, split, i)`` and the generation parameters.

The dataset is written once, in the formats users bring, and cached (:mod:`transferkit.data.generated`)::

    <root>/
      dataset.json                 format version, parameters, counts, background sources per split
      classes.json                 segmentation label map: ["background", "T-shirt/top", ..., "Ankle boot"]
      images/{train,test}/NNNNN.png      RGB scenes
      masks/{train,test}/NNNNN.png       single-channel uint8 class-index maps (0 background, 1..10 items)
      annotations/{train,test}.json      COCO detection/instance format

In the COCO files ``category_id`` = Fashion-MNIST class + 1 (1..10, the same value as in the masks), so a
0-based detection label is ``category_id - 1``. ``bbox`` is ``[x, y, w, h]`` in pixel-edge coordinates of the
item's *visible* pixels (``x + w`` is one past the last column), ``area`` counts those pixels and
``segmentation`` is their uncompressed COCO RLE. Extra keys record the provenance: ``source`` on each annotation
(Fashion-MNIST file, index, and pixel count before occlusion) and ``background`` on each image (photograph, crop, flip).
"""

from __future__ import annotations

import colorsys
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import TransferKitError, bad_value
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, fashion_mnist_dir, read_idx
from .generated import cache_key, generated_dir, publish_dir, temporary_name
from .photos import load_photo, photo_names

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the generator or the layout changes, so cached copies are regenerated."""
SPLITS = ("train", "test")
ITEM_SOURCES = {"train": "train", "test": "t10k"}
"""The Fashion-MNIST file each scene split takes its items from."""
MASK_CLASSES = ["background", *FASHION_MNIST_CLASSES]

ITEM_THRESHOLD = 24  # grey level (of 255) from which a resized item pixel belongs to the item: keeps ~91% of
#                      Fashion-MNIST's non-zero pixels and drops the faint anti-aliased fringe
ITEM_SCALE = (0.1875, 0.5)  # item side as a fraction of the scene side: 24-64 px in a 128 px scene
ITEMS_PER_SCENE = (1, 4)
MIN_VISIBLE = 0.6  # an earlier item must keep at least this share of its pixels visible
MAX_TRIES = 20  # placements tried per item before the item is left out
MIN_SHADE = 0.3  # an item pixel's brightness is tint * (MIN_SHADE + (1 - MIN_SHADE) * grey / 255)
MAX_CROP = 3.0  # background crops are size..MAX_CROP*size pixels wide (smaller if the photo is), then resized
PNG_LEVEL = 1  # zlib level: photos compress about as well as at the default 6, in a third of the time
PROGRESS_FROM = 200  # scenes from which generation shows a progress bar (roughly 3 ms each)


@dataclass
class Scene:
    """One rendered scene: the image, its class-index mask and the visible items."""

    image: np.ndarray  # (size, size, 3) uint8
    mask: np.ndarray  # (size, size) uint8, 0 background, 1..10 item class + 1
    instances: np.ndarray  # (size, size) int16, -1 background, k = the k-th item below
    boxes: np.ndarray  # (n, 4) int64 [xmin, ymin, xmax, ymax], xmax/ymax one past the last pixel
    labels: np.ndarray  # (n,) int64 Fashion-MNIST class 0..9
    item_indices: np.ndarray  # (n,) index into the Fashion-MNIST file of ITEM_SOURCES[split]
    item_pixels: np.ndarray  # (n,) pixels of each item before occlusion (its visible ones are in ``instances``)
    background: dict  # {"source": photo name, "crop": [x, y, side], "flipped": bool}


@dataclass(frozen=True)
class ScenesInfo:
    """What a generated fashion-scenes folder holds (read from its ``dataset.json``)."""

    root: Path
    splits: tuple[str, ...]
    classes: list[str]  # detection classes, label i <-> COCO category_id i + 1
    mask_classes: list[str]  # segmentation classes, mask value i; 0 is background
    counts: dict[str, int]  # scenes per split
    objects: dict[str, int]  # annotated items per split
    backgrounds: dict[str, list[str]]  # photograph names per split
    size: int

    def images(self, split: str) -> Path:
        return self.root / "images" / split

    def masks(self, split: str) -> Path:
        return self.root / "masks" / split

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / f"{split}.json"


# --- rendering -------------------------------------------------------------------------------------------


def render_scene(split: str, index: int, items: np.ndarray, item_labels: np.ndarray, *, size: int = 128,
                 seed: int = 0) -> Scene:
    """Render scene ``index`` of ``split`` (pure: no files are read or written).

    Args:
        split: ``"train"`` or ``"test"``; picks the background photographs.
        index: scene number; with ``seed`` and ``split`` it fixes every random choice.
        items: ``(N, 28, 28)`` uint8 Fashion-MNIST images of the split's source file.
        item_labels: ``(N,)`` their classes.
        size: scene side in pixels.
        seed: dataset seed.
    """
    _check_split(split)
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image, background = _background(split, size, rng)
    instances = np.full((size, size), -1, dtype=np.int16)
    full_areas: list[int] = []
    chosen: list[int] = []
    for _ in range(int(rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1))):
        which = int(rng.integers(len(items)))
        side = int(rng.integers(round(ITEM_SCALE[0] * size), round(ITEM_SCALE[1] * size) + 1))
        grey = np.asarray(Image.fromarray(items[which]).resize((side, side), Image.Resampling.BILINEAR))
        shape = grey >= ITEM_THRESHOLD
        if not shape.any():  # a (hypothetical) blank item: nothing to label
            continue
        tint = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.55, 1.0)))
        for _ in range(MAX_TRIES):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if _keeps_earlier_visible(instances[y:y + side, x:x + side], shape, full_areas, instances):
                break
        else:
            continue
        k = len(chosen)
        region = image[y:y + side, x:x + side]
        shade = MIN_SHADE + (1.0 - MIN_SHADE) * grey.astype(np.float32) / 255.0
        colour = np.round(255.0 * tint[None, None, :] * shade[:, :, None]).astype(np.uint8)
        region[shape] = colour[shape]
        instances[y:y + side, x:x + side][shape] = k
        full_areas.append(int(shape.sum()))
        chosen.append(which)
    item_indices = np.array(chosen, dtype=np.int64)
    labels = np.asarray(item_labels, dtype=np.int64)[item_indices]
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes = np.zeros((len(chosen), 4), dtype=np.int64)
    for k in range(len(chosen)):
        ys, xs = np.nonzero(instances == k)
        mask[ys, xs] = labels[k] + 1
        boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return Scene(image, mask, instances, boxes, labels, item_indices, np.array(full_areas, dtype=np.int64),
                 background)


def _keeps_earlier_visible(window: np.ndarray, shape: np.ndarray, full_areas: list[int],
                           instances: np.ndarray) -> bool:
    """Whether pasting ``shape`` over ``window`` leaves every earlier item ``MIN_VISIBLE`` of its pixels."""
    covered = np.bincount(window[shape].astype(np.int64) + 1, minlength=len(full_areas) + 1)[1:]
    if not covered.any():
        return True
    visible = np.bincount(instances.ravel().astype(np.int64) + 1, minlength=len(full_areas) + 1)[1:]
    return bool(np.all(visible - covered >= MIN_VISIBLE * np.asarray(full_areas)))


def _background(split: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A random square crop of one of the split's photographs, resized to ``size`` and maybe mirrored."""
    names = photo_names(split)
    name = names[int(rng.integers(len(names)))]
    photo = load_photo(name)
    height, width = photo.shape[:2]
    largest = min(height, width, int(MAX_CROP * size))
    side = int(rng.integers(min(size, largest), largest + 1))
    y = int(rng.integers(0, height - side + 1))
    x = int(rng.integers(0, width - side + 1))
    flipped = bool(rng.random() < 0.5)
    crop = Image.fromarray(photo[y:y + side, x:x + side])
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    image = np.array(crop)  # a writable copy
    if flipped:
        image = np.ascontiguousarray(image[:, ::-1])
    return image, {"source": name, "crop": [x, y, side], "flipped": flipped}


# --- the dataset on disk -------------------------------------------------------------------------------


def fashion_scenes(train_scenes: int = 3000, test_scenes: int = 500, size: int = 128, seed: int = 0,
                   progress: bool = True) -> Path:
    """The root folder of a fashion-scenes dataset, generated and cached on first use.

    Args:
        train_scenes: scenes in the ``train`` split (the pool to train and validate on).
        test_scenes: scenes in the ``test`` split (new items, new backgrounds).
        size: scene side in pixels (at least 32; item sizes scale with it).
        seed: dataset seed.
        progress: show a progress bar while generating.

    Returns:
        The dataset root; see the module docstring for its layout and :func:`read_scenes` to describe it.
    """
    counts = {"train": train_scenes, "test": test_scenes}
    for name, value in (("train_scenes", train_scenes), ("test_scenes", test_scenes)):
        if not isinstance(value, int) or value < 1:
            raise bad_value(name, value, "a positive integer")
    if not isinstance(size, int) or size < 32:
        raise bad_value("size", size, "an integer of at least 32 (pixels)")
    params = _params(counts, size, seed)
    parent = generated_dir() / "fashion-scenes"
    final = parent / f"{size}px-{train_scenes}+{test_scenes}-seed{seed}-{cache_key(FORMAT_VERSION, params)}"
    if (final / "dataset.json").is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(parent)
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stay on the published folder
    try:
        _write(tmp, counts, size, seed, params, progress)
        return publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_scenes(root: Path | str) -> ScenesInfo:
    """Describe a fashion-scenes folder from its ``dataset.json``."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise TransferKitError(f"{root} is not a fashion-scenes dataset (no dataset.json). Fix: pass the folder "
                               "returned by transferkit.data.scenes.fashion_scenes().")
    meta = json.loads(path.read_text())
    return ScenesInfo(root=root, splits=tuple(meta["splits"]), classes=list(meta["classes"]),
                      mask_classes=list(meta["mask_classes"]), counts=dict(meta["counts"]),
                      objects=dict(meta["objects"]), backgrounds=dict(meta["backgrounds"]), size=int(meta["size"]))


def _params(counts: dict[str, int], size: int, seed: int) -> dict:
    """Everything the generated bytes depend on (besides package versions)."""
    return {"counts": counts, "size": size, "seed": seed, "threshold": ITEM_THRESHOLD, "scale": list(ITEM_SCALE),
            "items": list(ITEMS_PER_SCENE), "min_visible": MIN_VISIBLE, "tries": MAX_TRIES, "shade": MIN_SHADE,
            "max_crop": MAX_CROP, "backgrounds": {s: list(photo_names(s)) for s in SPLITS},
            "item_sources": ITEM_SOURCES}


def _write(root: Path, counts: dict[str, int], size: int, seed: int, params: dict, progress: bool) -> None:
    folder = fashion_mnist_dir()
    objects = {}
    for split in SPLITS:
        start = time.perf_counter()
        prefix = "train" if ITEM_SOURCES[split] == "train" else "test"
        items = read_idx(folder / FASHION_MNIST_FILES[f"{prefix}_images"])
        item_labels = read_idx(folder / FASHION_MNIST_FILES[f"{prefix}_labels"])
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True)
        coco = _coco_header(split, params)
        bar = tqdm(range(counts[split]), desc=f"fashion-scenes {split}", leave=False,
                   disable=not progress or counts[split] < PROGRESS_FROM)
        for index in bar:
            scene = render_scene(split, index, items, item_labels, size=size, seed=seed)
            file_name = f"{index:05d}.png"
            Image.fromarray(scene.image).save(root / "images" / split / file_name, compress_level=PNG_LEVEL)
            Image.fromarray(scene.mask).save(root / "masks" / split / file_name, compress_level=PNG_LEVEL)
            _add_to_coco(coco, scene, index, file_name, split)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        objects[split] = len(coco["annotations"])
        logger.info("Generated %d fashion-scenes %s scenes (%d items) in %.1f s", counts[split], split,
                    objects[split], time.perf_counter() - start)
    (root / "classes.json").write_text(json.dumps(MASK_CLASSES, indent=1))
    meta = {"name": "fashion-scenes", "format_version": FORMAT_VERSION, "splits": list(SPLITS),
            "classes": FASHION_MNIST_CLASSES, "mask_classes": MASK_CLASSES, "counts": counts, "objects": objects,
            "backgrounds": {s: list(photo_names(s)) for s in SPLITS}, "item_sources": ITEM_SOURCES, "size": size,
            "seed": seed, "params": params}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))


def _coco_header(split: str, params: dict) -> dict:
    return {"info": {"description": f"transferkit fashion-scenes, {split} split: Fashion-MNIST "
                                    f"{ITEM_SOURCES[split]} items on scikit-image photographs",
                     "version": str(FORMAT_VERSION), "params": params},
            "licenses": [], "images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": name, "supercategory": "fashion"}
                           for i, name in enumerate(FASHION_MNIST_CLASSES)]}


def _add_to_coco(coco: dict, scene: Scene, index: int, file_name: str, split: str) -> None:
    height, width = scene.mask.shape
    image_id = index + 1  # COCO ids start at 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                           "background": scene.background})
    rows = zip(scene.boxes, scene.labels, scene.item_indices, scene.item_pixels, strict=True)
    for k, (box, label, which, pixels) in enumerate(rows):
        visible = scene.instances == k
        x0, y0, x1, y1 = (int(v) for v in box)
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": int(label) + 1,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(visible.sum()), "iscrowd": 0,
            "segmentation": rle_encode(visible),
            "source": {"file": ITEM_SOURCES[split], "index": int(which), "pixels": int(pixels)}})


def rle_encode(binary: np.ndarray) -> dict:
    """Uncompressed COCO run-length encoding (column-major runs, starting with background)."""
    flat = np.asarray(binary, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [int(binary.shape[0]), int(binary.shape[1])], "counts": runs}


def rle_decode(rle: dict) -> np.ndarray:
    """The bool mask of an uncompressed COCO RLE (inverse of :func:`rle_encode`)."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    return flat.reshape((height, width), order="F")


# --- a non-learned baseline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineScore:
    """Foreground/background IoU of a non-learned segmentation, averaged over scenes."""

    foreground_iou: float
    background_iou: float
    scenes: int
    polarity: str

    @property
    def mean_iou(self) -> float:
        """Mean of the foreground and background IoU (the binary mIoU)."""
        return (self.foreground_iou + self.background_iou) / 2


def otsu_baseline(root: Path | str, split: str = "test", polarity: str = "minority") -> BaselineScore:
    """Segment each scene by Otsu's threshold on its grey levels and score foreground vs background.

    Args:
        root: a fashion-scenes folder (:func:`fashion_scenes`).
        split: which split's images and masks to read.
        polarity: which side of the threshold is foreground: ``"bright"``, ``"dark"``, ``"minority"`` (the side
            with fewer pixels — items cover less than half of most scenes; uses no labels), or ``"oracle"`` (the
            side that scores better against the true mask: an upper bound for a global threshold, not a method).
    """
    from skimage.color import rgb2gray
    from skimage.filters import threshold_otsu

    if polarity not in ("bright", "dark", "minority", "oracle"):
        raise bad_value("polarity", polarity, "one of 'bright', 'dark', 'minority', 'oracle'")
    info = read_scenes(root)
    _check_split(split)
    fg_scores, bg_scores = [], []
    for path in sorted(info.images(split).glob("*.png")):
        grey = rgb2gray(np.asarray(Image.open(path).convert("RGB")))
        truth = np.asarray(Image.open(info.masks(split) / path.name)) > 0
        bright = grey > threshold_otsu(grey)
        if polarity == "bright":
            guess = bright
        elif polarity == "dark":
            guess = ~bright
        elif polarity == "minority":
            guess = bright if bright.mean() <= 0.5 else ~bright
        else:
            guess = max((bright, ~bright), key=lambda g: _iou(g, truth))
        fg_scores.append(_iou(guess, truth))
        bg_scores.append(_iou(~guess, ~truth))
    if not fg_scores:
        raise TransferKitError(f"No scenes in {info.images(split)}. Fix: regenerate with fashion_scenes().")
    return BaselineScore(float(np.mean(fg_scores)), float(np.mean(bg_scores)), len(fg_scores), polarity)


def _iou(guess: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(guess, truth).sum()
    return float(np.logical_and(guess, truth).sum() / union) if union else 1.0


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise bad_value("split", split, "'train' or 'test'")


BUILTIN_SCENES = {"train_scenes": 3000, "test_scenes": 500, "size": 128, "seed": 0}
"""The settings of ``builtin:fashion-scenes`` (segmentation and detection read the same generated folder)."""


def builtin_scenes(name: str, task: str, targets: str) -> tuple[Path, str]:
    """``builtin:NAME`` for a dense ``task``: the generated fashion-scenes folder and the start of its description;
    a one-line error for a classification built-in (it has no ``targets``) or an unknown name."""
    from .builtin import BUILTIN_DATASETS, DENSE_BUILTINS

    if name not in DENSE_BUILTINS:
        hint = (f" is a classification dataset (no {targets}). Fix: drop --task {task}, or use builtin:fashion-scenes"
                if name in BUILTIN_DATASETS else ": unknown. Fix: use builtin:fashion-scenes")
        raise TransferKitError(f"builtin:{name}{hint} for {task}.")
    scenes = BUILTIN_SCENES
    return fashion_scenes(**scenes), (f"builtin:fashion-scenes (Fashion-MNIST items on photographs, {scenes['size']} "
                                      f"px, {scenes['train_scenes']} train pool, {scenes['test_scenes']} test scenes")

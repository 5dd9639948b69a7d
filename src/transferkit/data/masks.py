"""Segmentation data: images with per-pixel class masks, read from folders or a CSV manifest, checked, split, and
augmented jointly.

Layouts (``--data``), masks pair with images by their path without the extension (``images/a/b.jpg`` ↔
``masks/a/b.png``)::

    root/images/{train,val,test}/...  +  root/masks/{train,val,test}/...     (builtin:fashion-scenes' layout)
    root/{train,val,test}/images/...  +  root/{train,val,test}/masks/...
    root/images/...                   +  root/masks/...                       (one folder: split by seed)
    manifest.csv with columns image,mask[,split]                             (paths relative to the CSV)

Masks are single-channel PNGs whose values are class indices (8-bit or 16-bit greyscale, or palette images, whose
palette indices are the classes); a greyscale mask saved as RGB (three equal channels) is read as greyscale, any
other RGB mask is refused. ``--ignore-index`` (default 255) marks pixels that count nowhere. The label map is
``classes.json`` (a list, or ``{"0": "background", ...}``) or ``classes.txt`` (one name per line) in the data folder
(or its parent); without one, classes are the indices found ("0", "1", ...). Class 0 is background by convention.

``--per-class N`` means N training *images* for segmentation (an image holds several classes), with validation
images taken as for classification: a built-in's pool gives N training images and N x val_fraction / (1 -
val_fraction) validation images from the rest; a folder without a validation split holds ``--val-fraction`` of its
images out first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..errors import TransferKitError
from ..models.preprocessing import Preprocessing
from .builtin import DENSE_BUILTINS
from .images import IMAGE_EXTENSIONS, check_augment, open_image
from .samples import EvalData, SplitData
from .sampling import with_item_seed
from .splits import dense_splits
from .tables import read_table, read_text_file

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LABEL_MAPS = ("classes.json", "classes.txt")


@dataclass
class MaskSamples:
    """Images with per-pixel class-index masks: the sample type of segmentation (no image-level label).

    Attributes:
        items: image files or uint8 arrays (H, W, 3).
        masks: mask files or integer arrays (H, W), one per item.
        classes: the label map (mask value i is ``classes[i]``).
        names: a display name per item.
        pixel_counts: labelled pixels per class, once :func:`check_masks` has read the masks.
    """

    items: list[Any]
    masks: list[Any]
    classes: list[str]
    names: list[str] = field(default_factory=list)
    pixel_counts: np.ndarray | None = None

    modality = "image"
    unit = "images"

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [str(it) if isinstance(it, Path) else f"#{i}" for i, it in enumerate(self.items)]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: list[int] | np.ndarray) -> MaskSamples:
        return MaskSamples([self.items[i] for i in indices], [self.masks[i] for i in indices], self.classes,
                           [self.names[i] for i in indices])

    def class_counts(self) -> dict[str, int]:
        """Labelled pixels per class (what ``--class-weights auto`` weighs by)."""
        counts = self.pixel_counts if self.pixel_counts is not None else np.zeros(len(self.classes), np.int64)
        return {name: int(counts[i]) for i, name in enumerate(self.classes)}


# --- where the masks are ---------------------------------------------------------------------------------


def find_masks(data: str | Path) -> str | None:
    """Where ``data`` keeps masks (a phrase for the plan), or ``None`` when it has none."""
    text = str(data)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        return f"{text} has per-pixel masks" if name in DENSE_BUILTINS else None
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        header, _ = read_table(path)
        return f"CSV manifest {path} has a mask column" if "mask" in header else None
    if not path.is_dir():
        return None
    if (path / "masks").is_dir():
        return f"masks in {path / 'masks'}"
    for name in SPLIT_NAMES:
        if (path / name / "masks").is_dir():
            return f"masks in {path / name / 'masks'}"
    return None


def _layout(root: Path) -> dict[str, tuple[Path, Path]]:
    """Split name -> (images folder, masks folder); ``all`` for one unsplit folder."""
    if (root / "images").is_dir() and (root / "masks").is_dir():
        splits = {SPLIT_NAMES[p.name]: p.name for p in (root / "images").iterdir() if p.is_dir() and
                  p.name in SPLIT_NAMES}
        if splits:
            return {split: (root / "images" / name, root / "masks" / name) for split, name in splits.items()}
        return {"all": (root / "images", root / "masks")}
    found = {SPLIT_NAMES[name]: (root / name / "images", root / name / "masks") for name in SPLIT_NAMES
             if (root / name / "images").is_dir()}
    if found:
        return found
    raise TransferKitError(f"No images/ and masks/ folders in {root}. Fix: put the images in {root}/images and "
                           f"masks with the same names in {root}/masks (or {root}/images/train and "
                           f"{root}/masks/train ...), or pass a CSV manifest with image,mask columns.")


def _pairs(images: Path, masks: Path) -> tuple[list[Path], list[Path]]:
    """Image files and their masks, paired by relative path without the extension."""
    if not masks.is_dir():
        raise TransferKitError(f"Masks folder {masks} not found for the images in {images}. Fix: add it, with one "
                               "mask per image under the same name.")
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TransferKitError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {images}. Fix: add images.")
    by_stem: dict[Path, Path] = {}
    for mask in masks.rglob("*"):
        if mask.suffix.lower() in IMAGE_EXTENSIONS:
            key = mask.relative_to(masks).with_suffix("")
            if key not in by_stem or mask.suffix.lower() == ".png":
                by_stem[key] = mask
    paired = []
    for image in files:
        mask = by_stem.get(image.relative_to(images).with_suffix(""))
        if mask is None:
            expected = masks / image.relative_to(images).with_suffix(".png")
            raise TransferKitError(f"No mask for image {image} (expected {expected}). Fix: add the mask, or remove "
                                   "the image.")
        paired.append(mask)
    return files, paired


def read_label_map(*folders: Path) -> list[str] | None:
    """The class names of ``classes.json`` / ``classes.txt`` in the first folder that has one, else ``None``."""
    for folder in folders:
        for name in LABEL_MAPS:
            path = folder / name
            if not path.is_file():
                continue
            if name.endswith(".txt"):
                classes = [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
            else:
                try:
                    raw = json.loads(read_text_file(path))
                except json.JSONDecodeError as exc:
                    raise TransferKitError(f"Cannot parse label map {path}: {exc}. Fix: write a JSON list of class "
                                           "names, index = mask value.") from exc
                if isinstance(raw, dict):
                    try:
                        indexed = {int(k): str(v) for k, v in raw.items()}
                    except ValueError as exc:
                        raise TransferKitError(f"Label map {path} must map mask values to names, e.g. "
                                               '{"0": "background", "1": "cat"}.') from exc
                    classes = [indexed.get(i, str(i)) for i in range(max(indexed) + 1)]
                else:
                    classes = [str(c) for c in raw]
            if len(classes) < 2:
                raise TransferKitError(f"Label map {path} names {len(classes)} class(es); segmentation needs at least "
                                       "two (background and one more). Fix: list every mask value's class.")
            return classes
    return None


# --- reading and checking masks ----------------------------------------------------------------------------


def read_mask(item: Path | np.ndarray) -> np.ndarray:
    """A mask as an integer array (H, W): greyscale or palette values are the class indices."""
    if isinstance(item, np.ndarray):
        return item
    try:
        image = Image.open(item)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TransferKitError(f"Cannot read mask {item}: {exc}. Fix: replace the file.") from exc
    if image.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image if image.mode != "1" else image.convert("L").point(lambda v: v // 255))
    if image.mode == "RGB":
        array = np.asarray(image)
        if (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
            return array[..., 0]
    raise TransferKitError(f"Mask {item} is an {image.mode} image, not a single-channel class-index or palette PNG. "
                           "Fix: save each mask as 8-bit greyscale (pixel value = class index) or as a palette PNG; "
                           "convert colour-coded masks to class indices first.")


def _image_size(item: Path | np.ndarray) -> tuple[int, int]:
    """(height, width) of an image without decoding it."""
    if isinstance(item, np.ndarray):
        return item.shape[0], item.shape[1]
    try:
        with Image.open(item) as image:
            return image.size[1], image.size[0]
    except (UnidentifiedImageError, OSError) as exc:
        raise TransferKitError(f"Cannot read image {item}: {exc}. Fix: remove or replace the file.") from exc


def scan_masks(samples: MaskSamples) -> np.ndarray:
    """Read every mask once: check it matches its image's size, and count its pixels per value (all values)."""
    counts = np.zeros(256, dtype=np.int64)
    for item, mask_item, name in zip(samples.items, samples.masks, samples.names, strict=True):
        mask = read_mask(mask_item)
        if mask.ndim != 2:
            raise TransferKitError(f"Mask {name} has shape {mask.shape}; a mask is one class index per pixel. Fix: "
                                   "save it as a single-channel image.")
        height, width = _image_size(item)
        if mask.shape != (height, width):
            raise TransferKitError(f"Mask {_label(mask_item)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                   f"{_label(item)} is {width}x{height}. Fix: masks must have their image's size.")
        found = np.bincount(mask.ravel().astype(np.int64))
        if len(found) > len(counts):
            counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[:len(found)] += found
    return counts


def check_values(samples: MaskSamples, counts: np.ndarray, classes: list[str], ignore_index: int, where: str) -> None:
    """Every mask value is a class of the label map or the ignore index; names the first file that is not."""
    bad = [v for v in np.flatnonzero(counts) if v >= len(classes) and v != ignore_index]
    if not bad:
        samples.pixel_counts = counts[:len(classes)].copy()
        return
    for mask_item in samples.masks:
        values = np.unique(read_mask(mask_item))
        outside = [int(v) for v in values if v >= len(classes) and v != ignore_index]
        if outside:
            raise TransferKitError(
                f"Mask {_label(mask_item)} ({where}) has value(s) {', '.join(map(str, outside[:5]))} outside the label "
                f"map ({len(classes)} classes: 0..{len(classes) - 1}; {ignore_index} = ignore). Fix: correct the mask, "
                "add the classes to classes.json, or pass --ignore-index for the value that marks unlabelled pixels.")


def _label(item: Any) -> str:
    return str(item) if isinstance(item, Path) else "(array)"


# --- reading a dataset -------------------------------------------------------------------------------------


def load_mask_training_data(spec: str | Path, *, val_fraction: float = 0.2, per_class: int | None = None,
                            seed: int = 0, ignore_index: int = 255, test_per_class: int | None = None) -> SplitData:
    """Resolve ``--data`` for a segmentation run: train / val (/ test) images with masks, checked.

    Args:
        spec: ``builtin:fashion-scenes``, a folder (layouts in the module docstring) or a CSV manifest.
        val_fraction: share of the images held out for validation when the data has no val split.
        per_class: N training images (segmentation's meaning of ``--per-class``).
        seed: seed for splitting and subsampling.
        ignore_index: mask value of pixels that count nowhere.
        test_per_class: keep N test images (seeded); ``None``: all.
    """
    splits, classes, description, pool = _read(spec)
    train, val, test, description = dense_splits(splits, description, pool, val_fraction=val_fraction,
                                                 per_class=per_class, seed=seed, test_per_class=test_per_class,
                                                 task="segmentation")
    parts = {"train": train, "val": val, **({"test": test} if test is not None else {})}
    counts = {name: scan_masks(part) for name, part in parts.items()}
    if classes is None:
        top = max(int(np.flatnonzero(c[:ignore_index] if ignore_index < len(c) else c).max(initial=0))
                  for c in counts.values())
        classes = [str(i) for i in range(max(top + 1, 2))]
        description += f"; no classes.json: classes are the mask values 0..{len(classes) - 1}"
    for name, part in parts.items():
        part.classes = list(classes)
        check_values(part, counts[name], classes, ignore_index, name)
    if len(classes) < 2:
        raise TransferKitError("Segmentation needs at least two classes (background and one more).")
    if not train.pixel_counts[1:].any():
        raise TransferKitError(f"Every training mask in {description} holds only class 0 ({classes[0]}) or ignored "
                               "pixels: there is nothing to segment. Fix: check that the masks hold class indices "
                               "(1, 2, ... for objects), not 0/1 scaled to 0/255 with --ignore-index 255.")
    return SplitData(list(classes), train, val, test, description)


def load_mask_eval_data(spec: str | Path, classes: list[str], *, ignore_index: int = 255) -> EvalData:
    """Images with masks to evaluate a run on, and which split they are — the rule of
    :func:`~transferkit.data.sources.eval_split`: a built-in's test split; a CSV's ``test`` rows (all rows when it
    has none); a folder's ``test``, else ``val``, else ``train`` split, or its one unsplit folder (``all``). Checked
    against the run's ``classes``."""
    splits, found, description, _ = _read(spec)
    split = next((s for s in ("test", "val", "train", "all") if s in splits), "all")
    samples = splits[split]
    if Path(str(spec)).suffix.lower() in (".csv", ".tsv") and split != "test":
        split, parts = "all", list(splits.values())
        samples = MaskSamples([i for p in parts for i in p.items], [m for p in parts for m in p.masks],
                              parts[0].classes)
    if found is not None and found != list(classes):
        raise TransferKitError(f"The label map of {description} ({', '.join(found[:4])}...) differs from the run's "
                               f"({', '.join(classes[:4])}...). Fix: evaluate on data labelled with the run's classes.")
    samples.classes = list(classes)
    check_values(samples, scan_masks(samples), list(classes), ignore_index, "evaluation")
    return EvalData(samples, split, str(spec))


def _read(spec: str | Path) -> tuple[dict[str, MaskSamples], list[str] | None, str, bool]:
    """(splits, label map or None, description, is a built-in pool)."""
    text = str(spec)
    if text.startswith("builtin:"):
        from .scenes import builtin_scenes

        root, description = builtin_scenes(text.removeprefix("builtin:"), "segmentation", "masks")
        splits, classes, _ = _read_folder(root)
        return splits, classes, f"{description}; {root})", True
    path = Path(text).expanduser()
    if not path.exists():
        raise TransferKitError(f"Data not found: {path}. Fix: pass --data with a folder holding images/ and masks/, a "
                               "CSV manifest (image,mask[,split]) or builtin:fashion-scenes.")
    if path.is_file():
        splits, classes = _read_manifest(path)
        return splits, classes, f"CSV manifest {path}", False
    splits, classes, description = _read_folder(path)
    return splits, classes, description, False


def _read_folder(root: Path) -> tuple[dict[str, MaskSamples], list[str] | None, str]:
    layout = _layout(root)
    classes = read_label_map(root, root.parent)
    splits = {}
    for split, (images, masks) in layout.items():
        files, mask_files = _pairs(images, masks)
        splits[split] = MaskSamples(list(files), list(mask_files), classes or [])
    names = ", ".join(f"{s} {len(v)}" for s, v in splits.items())
    return splits, classes, f"images and masks in {root} ({names})"


def _read_manifest(path: Path) -> tuple[dict[str, MaskSamples], list[str] | None]:
    columns, rows = read_table(path)
    if "image" not in columns or "mask" not in columns:
        raise TransferKitError(f"CSV manifest {path} needs columns 'image' and 'mask' (optional 'split') for "
                               f"segmentation; found {columns}. Fix: add a header line: image,mask,split")
    rows = [(line, row) for line, row in rows if row.get("image")]
    if not rows:
        raise TransferKitError(f"CSV manifest {path} has no rows. Fix: add one line per image: image,mask")
    grouped: dict[str, tuple[list[Path], list[Path]]] = {}
    for line, row in rows:
        split = SPLIT_NAMES.get((row.get("split") or "train").strip().lower())
        if split is None:
            raise TransferKitError(f"CSV manifest {path}, line {line}: split '{row.get('split')}' must be train, val "
                                   "or test.")
        files = []
        for column in ("image", "mask"):
            if not row.get(column):
                raise TransferKitError(f"CSV manifest {path}, line {line}: no {column} for {row.get('image')}. Fix: "
                                       f"give every image its mask.")
            file = Path(row[column])
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise TransferKitError(f"CSV manifest {path}, line {line}: {column} {file} does not exist. Fix: "
                                       "correct the path (relative paths are relative to the CSV's folder).")
            files.append(file)
        items, masks = grouped.setdefault(split, ([], []))
        items.append(files[0])
        masks.append(files[1])
    classes = read_label_map(path.parent)
    return {k: MaskSamples(v[0], v[1], classes or []) for k, v in grouped.items()}, classes


# --- joint augmentation and the dataset ----------------------------------------------------------------------


def mask_transforms(preprocessing: Preprocessing, augment: str = "light",
                    ignore_index: int = 255) -> tuple[T.Transform, T.Transform]:
    """Training and evaluation transforms of (image, mask) pairs: geometry applied to both (masks resized with
    nearest neighbours, by ``tv_tensors.Mask``), colour and normalisation to the image only. Images are resized to
    the weights' input size as a square (no centre crop: every pixel is predicted); normalisation comes from the
    weights.

    Args:
        augment: ``none``; ``light`` (random resized crop of 50-100% of the image, horizontal flip); ``heavy``
            (crops of 25-100%, flip, rotation up to 15 degrees — uncovered mask pixels ignored — and colour jitter).
    """
    check_augment("augment", augment)
    size = (preprocessing.input_size, preprocessing.input_size)
    interpolation = InterpolationMode(preprocessing.interpolation)
    normalise = [T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                 T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))]
    evaluation = T.Compose([T.Resize(size, interpolation=interpolation, antialias=True), *normalise])
    if augment == "none":
        return evaluation, evaluation
    scale = (0.5, 1.0) if augment == "light" else (0.25, 1.0)
    geometry = [T.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True),
                T.RandomHorizontalFlip()]
    if augment == "heavy":
        geometry += [T.RandomRotation(15, interpolation=InterpolationMode.BILINEAR,
                                      fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
                     T.ColorJitter(0.3, 0.3, 0.3, 0.05)]
    return T.Compose([*geometry, *normalise]), evaluation


def image_and_mask(item: Any, mask_item: Any) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """An (image, mask) pair as tv_tensors (uint8 CHW image, integer HW mask)."""
    image = tv_tensors.Image(torch.from_numpy(np.array(open_image(item))).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_item).astype(np.int64)))
    return image, mask


class MaskDataset(Dataset):
    """``(image tensor, mask tensor)`` pairs, transformed jointly; a ``(index, seed)`` key (the training loader's
    :class:`~transferkit.data.sampling.SeededShuffle`) augments under its own seed."""

    def __init__(self, samples: MaskSamples, transform: T.Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return with_item_seed(key, self._item)

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.transform(*image_and_mask(self.samples.items[index], self.samples.masks[index]))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

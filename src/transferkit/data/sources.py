"""Where images come from: a folder tree, a single class-folder, a CSV manifest, or a built-in dataset.

``load_training_data`` returns train/val(/test) splits with class names (a :class:`SplitData`);
``load_eval_data`` returns the images to evaluate, with labels mapped onto the classes a run was trained on.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..errors import TransferKitError
from .builtin import load_builtin
from .images import IMAGE_EXTENSIONS, is_readable_image
from .samples import EvalData, ImageSamples, SplitData
from .splits import from_pool, from_splits, onto_classes

logger = logging.getLogger(__name__)

VAL_NAMES = ("val", "valid", "validation")
ImageData = SplitData  # the name before texts shared the type


def load_training_data(spec: str | Path, *, val_fraction: float = 0.2, per_class: int | None = None,
                       seed: int = 0, skip_bad_images: bool = False) -> SplitData:
    """Resolve ``--data`` for training.

    Args:
        spec: ``builtin:NAME``, a folder with ``train/`` (and ``val/``, ``test/``), a folder with one
            sub-folder per class (split into train/val), or a CSV manifest with ``path,label`` columns.
        val_fraction: share of each class held out for validation when no validation split is given.
        per_class: keep only this many training images per class (seeded).
        seed: seed for splitting and subsampling.
        skip_bad_images: skip unreadable images (and count them) instead of failing.
    """
    skipped: list[str] = []
    text = str(spec)
    shaping = {"val_fraction": val_fraction, "per_class": per_class, "seed": seed}
    if text.startswith("builtin:"):
        dataset = load_builtin(text.removeprefix("builtin:"))
        data = from_pool(dataset.pool, dataset.test, dataset.description, **shaping)
    else:
        path = _existing(text)
        if path.suffix.lower() in (".csv", ".tsv"):
            splits, classes = _read_manifest(path, skipped, skip_bad_images)
            desc = f"CSV manifest {path}"
        elif (path / "train").is_dir():
            classes = _class_folders(path / "train")
            splits = {"train": _scan_classes(path / "train", classes, skipped, skip_bad_images)}
            val_dir = next((path / n for n in VAL_NAMES if (path / n).is_dir()), None)
            if val_dir is not None:
                splits["val"] = _scan_classes(val_dir, classes, skipped, skip_bad_images, split="val")
            if (path / "test").is_dir():
                splits["test"] = _scan_classes(path / "test", classes, skipped, skip_bad_images, split="test")
            desc = f"image folders {path}/{{{', '.join(splits)}}}"
        else:
            classes = _class_folders(path)
            splits = {"train": _scan_classes(path, classes, skipped, skip_bad_images)}
            desc = f"class folders in {path}"
        data = from_splits(splits, classes, desc, **shaping)
    data.skipped = skipped
    if skipped:
        logger.warning("Skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    return data


def load_eval_data(spec: str | Path, classes: list[str], *, skip_bad_images: bool = False) -> ImageSamples:
    """Images to evaluate, labelled with indices into the run's ``classes`` (see :func:`eval_split`)."""
    return eval_split(spec, classes, skip_bad_images=skip_bad_images).samples


def eval_split(spec: str | Path, classes: list[str], *, skip_bad_images: bool = False) -> EvalData:
    """The images to evaluate and which split they are — the one rule for the library and the CLI.

    A built-in dataset's test split; a CSV's ``test`` rows (all rows when it has none); a tree's ``test/``, else its
    ``val/``, else its ``train/``; a folder of class folders: all its images. A label the run never saw is an error.
    """
    text = str(spec)
    skipped: list[str] = []
    if text.startswith("builtin:"):
        return EvalData(_evaluable(load_builtin(text.removeprefix("builtin:")).test, classes, text), "test")
    path = _existing(text)
    if path.suffix.lower() in (".csv", ".tsv"):
        splits, found = _read_manifest(path, skipped, skip_bad_images)
        split = "test" if "test" in splits else "all"
        samples = splits.get("test")
        if samples is None:
            parts = list(splits.values())
            samples = parts[0]
            for part in parts[1:]:
                samples = samples.concat(part)
    else:
        folder, split = path, "all"
        for name in ("test", *VAL_NAMES, "train"):
            if (path / "train").is_dir() and (path / name).is_dir():
                folder, split = path / name, ("val" if name in VAL_NAMES else name)
                break
        found = _class_folders(folder, allow_single=True)
        samples = _scan_classes(folder, found, skipped, skip_bad_images)
    if skipped:
        logger.warning("Skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    return EvalData(_evaluable(samples, classes, text), split)


# --- helpers ---------------------------------------------------------------------------------------


def _existing(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise TransferKitError(f"Data not found: {path}. Fix: pass --data with an existing folder, a CSV "
                               "manifest, a text file, or a built-in dataset (builtin:fashion-mnist, "
                               "builtin:lfw-faces, builtin:digits, builtin:fashion-mnist-m, "
                               "builtin:font-digits, builtin:bbc-news).")
    return path


def _class_folders(folder: Path, allow_single: bool = False) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TransferKitError(f"No class sub-folders in {folder}. Fix: put each class's images in its own "
                               f"sub-folder ({folder}/<class>/image.jpg), or pass a CSV manifest (path,label).")
    if len(classes) < 2 and not allow_single:
        raise TransferKitError(f"Only one class ('{classes[0]}') in {folder}: a classifier needs at least two. "
                               "Fix: add a sub-folder per class.")
    return classes


def _scan_classes(folder: Path, classes: list[str], skipped: list[str], skip_bad: bool,
                  split: str = "train") -> ImageSamples:
    items: list[Path] = []
    labels: list[int] = []
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        if name not in classes:
            raise TransferKitError(f"Class '{name}' in {folder} is not among the training classes "
                                   f"({', '.join(classes)}). Fix: rename or remove {folder / name}.")
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files and split == "train":
            raise TransferKitError(f"Class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)}). "
                                   "Fix: add images or remove the folder.")
        for file in files:
            if _usable(file, skipped, skip_bad):
                items.append(file)
                labels.append(classes.index(name))
    return ImageSamples(items, labels, list(classes))


def _usable(file: Path, skipped: list[str], skip_bad: bool) -> bool:
    if is_readable_image(file):
        return True
    if not skip_bad:
        raise TransferKitError(f"Cannot read image {file}. Fix: remove or replace it, or pass "
                               "--skip-bad-images to skip unreadable images.")
    skipped.append(str(file))
    return False


def _read_manifest(path: Path, skipped: list[str], skip_bad: bool) -> tuple[dict[str, ImageSamples], list[str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        if "path" not in columns or "label" not in columns:
            raise TransferKitError(f"CSV manifest {path} needs columns 'path' and 'label' (optional 'split'); "
                                   f"found {columns}. Fix: add a header line: path,label")
        rows = [r for r in reader if r.get("path")]
    if not rows:
        raise TransferKitError(f"CSV manifest {path} has no rows. Fix: add one line per image: path,label")
    classes = sorted({r["label"] for r in rows if (r.get("split") or "train") == "train"})
    grouped: dict[str, tuple[list[Path], list[int]]] = {}
    for row in rows:
        split = (row.get("split") or "train").strip().lower()
        split = "val" if split in VAL_NAMES else split
        if split not in ("train", "val", "test"):
            raise TransferKitError(f"CSV manifest {path}: split '{split}' for {row['path']} must be train, val "
                                   "or test.")
        file = Path(row["path"])
        file = file if file.is_absolute() else path.parent / file
        if row["label"] not in classes:
            raise TransferKitError(f"CSV manifest {path}: label '{row['label']}' ({split}) never appears in the "
                                   f"training rows. Fix: add training images for it or drop those rows.")
        if not file.is_file():
            if not skip_bad:
                raise TransferKitError(f"CSV manifest {path}: image {file} does not exist. Fix: correct the path "
                                       "(relative paths are relative to the CSV's folder) or pass "
                                       "--skip-bad-images.")
            skipped.append(str(file))
            continue
        if _usable(file, skipped, skip_bad):
            items, labels = grouped.setdefault(split, ([], []))
            items.append(file)
            labels.append(classes.index(row["label"]))
    return {k: ImageSamples(v[0], v[1], classes) for k, v in grouped.items()}, classes


def _evaluable(samples: ImageSamples, classes: list[str], label: str) -> ImageSamples:
    samples = onto_classes(samples, classes, label)
    if len(samples) == 0:
        raise TransferKitError(f"No images to evaluate in {label}.")
    return samples

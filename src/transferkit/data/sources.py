"""Where images come from: a folder tree, a single class-folder, a CSV manifest, or a built-in dataset.

``load_training_data`` returns train/val(/test) splits with class names (a :class:`SplitData`);
``load_eval_data`` returns the images to evaluate, with labels mapped onto the classes a run was trained on.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ..errors import TransferKitError
from .builtin import load_builtin
from .images import IMAGE_EXTENSIONS, image_problem
from .samples import EvalData, ImageSamples, SplitData
from .splits import from_pool, from_splits, onto_classes
from .tables import clean_label, read_table

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
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TransferKitError(f"The folder name {name!r} in {folder} is not valid UTF-8 (its name is a class "
                                   "name). Fix: rename the folder.") from exc
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
        files, ignored = _image_files(folder / name)
        if ignored:
            logger.warning("Ignored %d file(s) in %s that are hidden or not images by their extension (%s)",
                           sum(ignored.values()), folder / name, ", ".join(f"{n} x {k}" for k, n in ignored.items()))
        if not files and split == "train":
            raise TransferKitError(f"Class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)}). "
                                   "Fix: add images or remove the folder.")
        for file in files:
            if _usable(file, skipped, skip_bad):
                items.append(file)
                labels.append(classes.index(name))
    return ImageSamples(items, labels, list(classes))


def _image_files(folder: Path) -> tuple[list[Path], Counter[str]]:
    """The image files under ``folder`` (by extension; hidden files such as macOS ``._photo.jpg`` left out), and a
    count of the files left out by kind."""
    files, ignored = [], Counter()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if not path.is_file():
            continue
        if any(part.startswith(".") for part in relative):
            ignored["hidden"] += 1
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(path)
        else:
            ignored[path.suffix.lower() or "no extension"] += 1
    return files, ignored


def _usable(file: Path, skipped: list[str], skip_bad: bool) -> bool:
    """Whether ``file`` is a usable image: its header (and, with ``skip_bad``, all its pixels) decode; an error
    naming the file and the problem otherwise, or the file is counted as skipped."""
    problem = image_problem(file, thorough=skip_bad)
    if problem is None:
        return True
    if not skip_bad:
        raise TransferKitError(f"Cannot read image {file}: {problem}. Fix: remove or replace it, or pass "
                               "--skip-bad-images to skip unreadable images.")
    skipped.append(str(file))
    return False


def _read_manifest(path: Path, skipped: list[str], skip_bad: bool) -> tuple[dict[str, ImageSamples], list[str]]:
    """A ``path,label[,split]`` manifest, read by the rules of :mod:`.tables` (column names in any case)."""
    columns, records = read_table(path, lower_header=True)
    if "path" not in columns or "label" not in columns:
        raise TransferKitError(f"CSV manifest {path} needs columns 'path' and 'label' (optional 'split'); "
                               f"found {columns}. Fix: add a header line: path,label")
    rows = []
    for line, row in records:
        where = f"CSV manifest {path}, line {line}"
        if not row["path"].strip():
            raise TransferKitError(f"{where}: no path. Fix: give every row a path, or remove the row.")
        split = (row.get("split") or "").strip().lower() or "train"
        split = "val" if split in VAL_NAMES else split
        if split not in ("train", "val", "test"):
            raise TransferKitError(f"{where}: split '{split}' must be train, val or test (or empty for train).")
        rows.append((where, row["path"].strip(), clean_label(row["label"], where), split))
    if not rows:
        raise TransferKitError(f"CSV manifest {path} has no rows. Fix: add one line per image: path,label")
    classes = sorted({label for _, _, label, split in rows if split == "train"})
    grouped: dict[str, tuple[list[Path], list[int]]] = {}
    for where, name, label, split in rows:
        if "\0" in name:
            raise TransferKitError(f"{where}: the path {name!r} contains a NUL character. Fix: correct the path.")
        file = Path(name).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if label not in classes:
            raise TransferKitError(f"{where}: label '{label}' ({split}) never appears in the training rows. Fix: add "
                                   "training images for it or drop those rows.")
        if not file.is_file():
            if not skip_bad:
                raise TransferKitError(f"{where}: image {file} does not exist. Fix: correct the path (relative paths "
                                       "are relative to the CSV's folder) or pass --skip-bad-images.")
            skipped.append(str(file))
            continue
        if _usable(file, skipped, skip_bad):
            items, labels = grouped.setdefault(split, ([], []))
            items.append(file)
            labels.append(classes.index(label))
    return {k: ImageSamples(v[0], v[1], classes) for k, v in grouped.items()}, classes


def _evaluable(samples: ImageSamples, classes: list[str], label: str) -> ImageSamples:
    samples = onto_classes(samples, classes, label)
    if len(samples) == 0:
        raise TransferKitError(f"No images to evaluate in {label}.")
    return samples

"""Detection data: images with labelled boxes, read from COCO JSON, YOLO text folders or a CSV manifest, checked,
split, and augmented jointly (the boxes move with the image).

Formats (``--data``); every reader gives the same targets — per image, boxes ``[xmin, ymin, xmax, ymax]`` in pixel
edges (``xmax`` is one past the last column) and a 0-based class index into the label map::

    annotations.json                      COCO: "images", "annotations" (bbox = [x, y, w, h]), "categories";
                                          file_name relative to the JSON's folder (or its images/ sibling)
    root/annotations/{train,val,test}.json + root/images/{train,val,test}/    (builtin:fashion-scenes' layout)
    root/images/{split}/... + root/labels/{split}/NAME.txt                    YOLO: "class cx cy w h" per line,
    root/{split}/images/... + root/{split}/labels/...                          normalised to [0, 1], 0-based class
    root/images/... + root/labels/...     (one folder: split by seed)          ids; names in data.yaml, classes.txt
    manifest.csv with columns path,xmin,ymin,xmax,ymax,label[,split]         or classes.json
                                          (one row per box; a row with only a path: an image without boxes)

Images without boxes are kept as negatives (a YOLO image without a label file, a COCO image without annotations, a
CSV row without a box). Labels are class *indices* 0..K-1 with no background class (the detector scores each class
with its own sigmoid): COCO category ids map to indices in id order, YOLO ids are used as they are, CSV labels are
names (sorted, or in the order of a classes.txt / classes.json beside the CSV).

Bad input is refused with one line naming the file and the entry: zero-area or inverted boxes, unknown labels (a
YOLO id outside the names — 1-based ids are the usual cause), annotations for missing images, a COCO file without
categories. Boxes reaching outside their image are **clipped** to it and a warning says how many (a box wholly
outside is refused). COCO ``iscrowd`` annotations are left out (COCO's evaluation ignores them too).

``--per-class N`` means N training *images* (as for segmentation).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from ..errors import TransferKitError
from ..models.preprocessing import Preprocessing
from .images import IMAGE_EXTENSIONS, check_augment, open_image
from .samples import EvalData, SplitData
from .sampling import with_item_seed
from .splits import dense_splits
from .tables import read_table, read_text_file

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
BACKGROUND_NAMES = ("background", "__background__", "__background", "bg")
"""The parameters of ``builtin:fashion-scenes`` (the same scenes segmentation reads: its COCO files)."""


@dataclass
class BoxSamples:
    """Images with labelled boxes: the sample type of detection.

    Attributes:
        items: image files or uint8 arrays (H, W, 3).
        boxes: per image, a float32 array (n, 4) of ``[xmin, ymin, xmax, ymax]`` in pixels (n may be 0).
        labels: per image, an int64 array (n,) of class indices into ``classes``.
        classes: the label map.
        sizes: per image, ``(height, width)``.
        names: a display name per item.
    """

    items: list[Any]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    classes: list[str]
    sizes: list[tuple[int, int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    modality = "image"
    unit = "images"

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [str(it) if isinstance(it, Path) else f"#{i}" for i, it in enumerate(self.items)]
        if not self.sizes:
            self.sizes = [image_size(item) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: list[int] | np.ndarray) -> BoxSamples:
        return BoxSamples([self.items[i] for i in indices], [self.boxes[i] for i in indices],
                          [self.labels[i] for i in indices], self.classes, [self.sizes[i] for i in indices],
                          [self.names[i] for i in indices])

    def class_counts(self) -> dict[str, int]:
        """Boxes per class."""
        counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *self.labels]), minlength=len(self.classes))
        return {name: int(counts[i]) for i, name in enumerate(self.classes)}

    def target(self, index: int) -> dict[str, torch.Tensor]:
        """Image ``index``'s boxes and labels as torchvision detection targets."""
        return {"boxes": torch.as_tensor(self.boxes[index], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(self.labels[index], dtype=torch.int64).reshape(-1)}


def image_size(item: Path | np.ndarray) -> tuple[int, int]:
    """(height, width) of an image without decoding it."""
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    try:
        with Image.open(item) as image:
            return image.size[1], image.size[0]
    except FileNotFoundError as exc:
        raise TransferKitError(f"Image {item} does not exist. Fix: correct the annotation's path or add the "
                               "image.") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise TransferKitError(f"Cannot read image {item}: {exc}. Fix: remove or replace the file.") from exc


# --- where the boxes are ---------------------------------------------------------------------------------


def find_boxes(data: str | Path) -> str | None:
    """Where ``data`` keeps boxes (a phrase for the plan), or ``None`` when it has none."""
    text = str(data)
    if text.startswith("builtin:"):
        return None  # builtin:fashion-scenes has masks too: segmentation unless --task detection
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".json":
            return f"COCO annotations {path}"
        if path.suffix.lower() in (".csv", ".tsv"):
            header, _ = read_table(path, lower_header=True)
            return f"CSV manifest {path} has box columns" if set(BOX_COLUMNS) <= set(header) else None
        return None
    if not path.is_dir():
        return None
    if (path / "annotations").is_dir() and any((path / "annotations").glob("*.json")):
        return f"COCO annotations in {path / 'annotations'}"
    if (path / "labels").is_dir() and (path / "images").is_dir():
        return f"YOLO labels in {path / 'labels'}"
    for name in SPLIT_NAMES:
        if (path / name / "labels").is_dir() and (path / name / "images").is_dir():
            return f"YOLO labels in {path / name / 'labels'}"
    return None


# --- checks shared by the readers ----------------------------------------------------------------------------


class _Clipped:
    """Counts boxes clipped to their image, to say so once per dataset."""

    def __init__(self) -> None:
        self.count, self.first = 0, ""

    def add(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where

    def report(self, description: str) -> None:
        if self.count:
            logger.warning("Clipped %d box(es) of %s that reached outside their image to the image's edges (first: "
                           "%s)", self.count, description, self.first)


def _checked_box(box: list[float], size: tuple[int, int], where: str, fix: str, clipped: _Clipped) -> list[float]:
    """``box`` (xmin, ymin, xmax, ymax) checked: finite, positive width and height; clipped to the image."""
    xmin, ymin, xmax, ymax = box
    if not all(np.isfinite(box)):
        raise TransferKitError(f"{where}: box {_fmt(box)} is not a number. Fix: {fix}")
    if xmax <= xmin or ymax <= ymin:
        kind = "zero-area" if xmax == xmin or ymax == ymin else "inverted"
        raise TransferKitError(f"{where}: box {_fmt(box)} is {kind} (xmax must exceed xmin and ymax ymin). Fix: "
                               f"{fix}")
    height, width = size
    inside = [min(max(xmin, 0.0), width), min(max(ymin, 0.0), height), min(max(xmax, 0.0), width),
              min(max(ymax, 0.0), height)]
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        raise TransferKitError(f"{where}: box {_fmt(box)} lies wholly outside its {width}x{height} image. Fix: "
                               f"{fix}")
    if inside != [float(v) for v in box]:
        clipped.add(f"{where}, {_fmt(box)} -> {_fmt(inside)}")
    return inside


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _resolve_image(name: str, *folders: Path) -> Path | None:
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


# --- COCO ----------------------------------------------------------------------------------------------------


def read_coco(path: Path, image_folders: list[Path] | None = None, *, clipped: _Clipped | None = None,
              ) -> tuple[BoxSamples, list[str]]:
    """The images and boxes of one COCO detection file; labels are the categories' indices in id order."""
    clipped = clipped or _Clipped()
    try:
        coco = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise TransferKitError(f"Cannot parse COCO file {path}: {exc}. Fix: pass a valid COCO JSON file.") from exc
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise TransferKitError(f"COCO file {path} has no 'images' list. Fix: write COCO detection format "
                               "({\"images\": [...], \"annotations\": [...], \"categories\": [...]}).")
    categories = coco.get("categories")
    if not categories:
        raise TransferKitError(f"COCO file {path} has no categories. Fix: add \"categories\": [{{\"id\": 1, "
                               "\"name\": \"...\"}, ...] naming every category_id its annotations use.")
    annotations = coco.get("annotations") or []
    used = {a.get("category_id") for a in annotations if isinstance(a, dict)}
    kept = []
    for category in sorted(categories, key=lambda c: c.get("id", 0)):
        name = str(category.get("name", category.get("id")))
        if name.lower() in BACKGROUND_NAMES and category.get("id") not in used:
            logger.info("COCO file %s: category %s (%r) has no annotations and is left out: the detector needs no "
                        "background class", path, category.get("id"), name)
            continue
        if name.lower() in BACKGROUND_NAMES:
            raise TransferKitError(f"COCO file {path}: category {category.get('id')} is named '{name}' and has "
                                   "annotations. Fix: background is what no box covers; remove those annotations "
                                   "(or rename the category if it is a real object class).")
        kept.append(category)
    index = {c["id"]: i for i, c in enumerate(kept)}
    classes = [str(c.get("name", c["id"])) for c in kept]
    folders = image_folders or [path.parent, path.parent / "images", path.parent.parent / "images"]
    images, order = {}, []
    for entry in coco["images"]:
        if entry.get("id") in images:
            raise TransferKitError(f"COCO file {path}: image id {entry.get('id')} appears twice. Fix: give every "
                                   "image its own id.")
        file = _resolve_image(str(entry.get("file_name", "")), *folders)
        if file is None:
            raise TransferKitError(f"COCO file {path}, image id {entry.get('id')}: file {entry.get('file_name')!r} "
                                   f"not found (looked in {', '.join(str(f) for f in folders)}). Fix: correct "
                                   "file_name or put the image there.")
        size = (int(entry["height"]), int(entry["width"])) if "height" in entry and "width" in entry else \
            image_size(file)
        images[entry["id"]] = (file, size, [], [])
        order.append(entry["id"])
    crowd = 0
    for a in annotations:
        where = f"COCO file {path}, annotation {a.get('id')}"
        if a.get("image_id") not in images:
            raise TransferKitError(f"{where} refers to image id {a.get('image_id')}, which is not in 'images'. Fix: "
                                   "add the image entry or remove the annotation.")
        if a.get("iscrowd"):
            crowd += 1
            continue
        if a.get("category_id") not in index:
            raise TransferKitError(f"{where} has category_id {a.get('category_id')}, which is not among the "
                                   f"categories ({', '.join(str(c['id']) for c in kept)}). Fix: add the category or "
                                   "correct the id.")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise TransferKitError(f"{where}: bbox {bbox!r} must be [x, y, width, height]. Fix: correct it.")
        x, y, w, h = (float(v) for v in bbox)
        file, size, boxes, labels = images[a["image_id"]]
        boxes.append(_checked_box([x, y, x + w, y + h], size, f"{where} (image {file.name})",
                                  "give it a positive width and height ([x, y, w, h]) or remove it.", clipped))
        labels.append(index[a["category_id"]])
    if crowd:
        logger.info("COCO file %s: %d iscrowd annotation(s) left out", path, crowd)
    samples = _samples([images[i] for i in order], classes)
    return samples, classes


def _samples(rows: list[tuple[Path, tuple[int, int], list, list]], classes: list[str]) -> BoxSamples:
    return BoxSamples([r[0] for r in rows], [np.asarray(r[2], np.float32).reshape(-1, 4) for r in rows],
                      [np.asarray(r[3], np.int64) for r in rows], list(classes), [r[1] for r in rows])


def _split_of(stem: str) -> str | None:
    stem = stem.lower()
    for name, split in SPLIT_NAMES.items():
        if stem == name or stem.endswith(f"_{name}") or stem.endswith(f"-{name}") or stem.startswith(f"{name}_"):
            return split
    return None


def _read_coco_folder(root: Path) -> tuple[dict[str, BoxSamples], list[str], str]:
    files = sorted((root / "annotations").glob("*.json"))
    splits: dict[str, BoxSamples] = {}
    classes: list[str] | None = None
    clipped = _Clipped()
    for file in files:
        split = _split_of(file.stem) or ("all" if len(files) == 1 else None)
        if split is None:
            continue
        folders = [root / "images" / file.stem, root / "images" / split, root / file.stem, root / split,
                   root / "images", root]
        samples, found = read_coco(file, folders, clipped=clipped)
        if classes is not None and found != classes:
            raise TransferKitError(f"COCO file {file} has other categories ({', '.join(found[:4])}...) than the "
                                   f"other splits ({', '.join(classes[:4])}...). Fix: use one category list.")
        classes = found
        splits[split] = samples
    if not splits:
        raise TransferKitError(f"No COCO file named for a split (train.json, val.json, test.json) in "
                               f"{root / 'annotations'}. Fix: name the files by their split.")
    clipped.report(str(root))
    names = ", ".join(f"{s} {len(v)}" for s, v in splits.items())
    return splits, classes or [], f"COCO annotations in {root} ({names})"


# --- YOLO ----------------------------------------------------------------------------------------------------


def _yolo_layout(root: Path) -> dict[str, tuple[Path, Path]]:
    if (root / "images").is_dir() and (root / "labels").is_dir():
        splits = {SPLIT_NAMES[p.name]: p.name for p in (root / "images").iterdir()
                  if p.is_dir() and p.name in SPLIT_NAMES}
        if splits:
            return {s: (root / "images" / n, root / "labels" / n) for s, n in splits.items()}
        return {"all": (root / "images", root / "labels")}
    found = {SPLIT_NAMES[n]: (root / n / "images", root / n / "labels") for n in SPLIT_NAMES
             if (root / n / "images").is_dir()}
    if found:
        return found
    raise TransferKitError(f"No images/ and labels/ folders in {root}. Fix: put the images in {root}/images and one "
                           f"YOLO .txt per image in {root}/labels (or images/train + labels/train ...), or pass a COCO "
                           "JSON file or a CSV manifest.")


def yolo_names(root: Path) -> list[str]:
    """The class names of a YOLO dataset: ``data.yaml``'s ``names``, else ``classes.txt`` / ``classes.json``."""
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        path = root / name
        if path.is_file():
            import yaml

            try:
                names = (yaml.safe_load(read_text_file(path)) or {}).get("names")
            except yaml.YAMLError as exc:
                raise TransferKitError(f"Cannot parse {path}: {exc}. Fix: write valid YAML with a names: "
                                       "list.") from exc
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise TransferKitError(f"{path} has no names: list. Fix: add names: [class0, class1, ...] (index = YOLO "
                                   "class id).")
    names = label_map(root)
    if names is None:
        raise TransferKitError(f"No class names for the YOLO labels in {root}. Fix: add data.yaml with names: [...] "
                               "or classes.txt (one name per line; line 1 is class id 0).")
    return names


def label_map(folder: Path) -> list[str] | None:
    """Names from ``classes.txt`` (one per line) or ``classes.json`` (a list) in ``folder``, else ``None``."""
    if (folder / "classes.txt").is_file():
        return [line.strip() for line in read_text_file(folder / "classes.txt").splitlines() if line.strip()]
    if (folder / "classes.json").is_file():
        try:
            names = json.loads(read_text_file(folder / "classes.json"))
        except json.JSONDecodeError as exc:
            raise TransferKitError(f"Cannot parse {folder / 'classes.json'}: {exc}. Fix: write a JSON list of class "
                                   "names.") from exc
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


def read_yolo(images: Path, labels: Path, classes: list[str], clipped: _Clipped) -> BoxSamples:
    """The images of ``images`` with their YOLO label files (an image without one has no boxes)."""
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TransferKitError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {images}. Fix: add images.")
    stems = {f.relative_to(images).with_suffix("") for f in files}
    if labels.is_dir():
        for label_file in sorted(labels.rglob("*.txt")):
            if label_file.relative_to(labels).with_suffix("") not in stems:
                raise TransferKitError(f"YOLO label file {label_file} has no image in {images}. Fix: add the image "
                                       "(same name, an image extension) or remove the label file.")
    rows = []
    for file in files:
        size = image_size(file)
        height, width = size
        label_file = labels / file.relative_to(images).with_suffix(".txt")
        boxes, ids = [], []
        if label_file.is_file():
            for number, line in enumerate(read_text_file(label_file).splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"YOLO label file {label_file}, line {number}"
                parts = line.split()
                try:
                    cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                    if len(parts) != 5:
                        raise ValueError
                except (ValueError, IndexError) as exc:
                    raise TransferKitError(f"{where}: {line.strip()!r} is not 'class cx cy w h' (a class id and four "
                                           "numbers in [0, 1]). Fix: correct the line.") from exc
                if not 0 <= cls < len(classes):
                    hint = (" YOLO class ids are 0-based; ids 1..N suggest 1-based ones: subtract 1."
                            if cls == len(classes) else "")
                    raise TransferKitError(f"{where}: class id {cls} is not among the {len(classes)} names (0.."
                                           f"{len(classes) - 1}).{hint} Fix: correct the id or add the name to "
                                           "data.yaml / classes.txt.")
                box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                boxes.append(_checked_box(box, size, f"{where} ({width}x{height} image)",
                                          "give it a positive width and height, or remove the line.", clipped))
                ids.append(cls)
        rows.append((file, size, boxes, ids))
    return _samples(rows, classes)


def _read_yolo_folder(root: Path) -> tuple[dict[str, BoxSamples], list[str], str]:
    layout = _yolo_layout(root)
    classes = yolo_names(root)
    clipped = _Clipped()
    splits = {split: read_yolo(images, labels, classes, clipped) for split, (images, labels) in layout.items()}
    clipped.report(str(root))
    names = ", ".join(f"{s} {len(v)}" for s, v in splits.items())
    return splits, classes, f"YOLO images and labels in {root} ({names})"


# --- CSV -----------------------------------------------------------------------------------------------------


def read_box_manifest(path: Path) -> tuple[dict[str, BoxSamples], list[str]]:
    """A CSV manifest ``path,xmin,ymin,xmax,ymax,label[,split]``: one row per box, or a path alone for an image
    without boxes."""
    columns, rows = read_table(path, lower_header=True)
    column = "path" if "path" in columns else "image" if "image" in columns else None
    missing = [c for c in ("path", *BOX_COLUMNS, "label") if c not in columns and not (c == "path" and column)]
    if missing:
        raise TransferKitError(f"CSV manifest {path} needs columns path,xmin,ymin,xmax,ymax,label (optional split) "
                               f"for detection; {', '.join(missing)} missing (found {', '.join(columns)}). Fix: add a "
                               "header line: path,xmin,ymin,xmax,ymax,label")
    rows = [(line, row) for line, row in rows if row.get(column)]
    if not rows:
        raise TransferKitError(f"CSV manifest {path} has no rows. Fix: add one line per box.")
    given = label_map(path.parent)
    names = given or sorted({row["label"].strip() for _, row in rows if row.get("label", "").strip()})
    index = {name: i for i, name in enumerate(names)}
    clipped = _Clipped()
    grouped: dict[str, dict[Path, tuple[Path, tuple[int, int], list, list]]] = {}
    for line, row in rows:
        where = f"CSV manifest {path}, line {line}"
        split = SPLIT_NAMES.get((row.get("split") or "train").strip().lower())
        if split is None:
            raise TransferKitError(f"{where}: split '{row.get('split')}' must be train, val or test. Fix: correct it.")
        file = Path(row[column].strip())
        file = file if file.is_absolute() else path.parent / file
        images = grouped.setdefault(split, {})
        if file not in images:
            if not file.is_file():
                raise TransferKitError(f"{where}: image {file} does not exist. Fix: correct the path (relative paths "
                                       "are relative to the CSV's folder).")
            images[file] = (file, image_size(file), [], [])
        values = [(row.get(c) or "").strip() for c in (*BOX_COLUMNS, "label")]
        if not any(values):
            continue  # an image without boxes
        if not all(values):
            raise TransferKitError(f"{where}: a box needs xmin, ymin, xmax, ymax and label (found "
                                   f"{', '.join(v or '-' for v in values)}). Fix: fill them in, or leave all five "
                                   "empty for an image without boxes.")
        try:
            box = [float(v) for v in values[:4]]
        except ValueError as exc:
            raise TransferKitError(f"{where}: box {values[:4]} must be numbers (pixels). Fix: correct it.") from exc
        label = values[4]
        if label not in index:
            raise TransferKitError(f"{where}: label '{label}' is not in the label map ({', '.join(names[:8])}) of "
                                   f"{path.parent / 'classes.txt'}. Fix: add it there or correct the label.")
        _, size, boxes, labels = images[file]
        boxes.append(_checked_box(box, size, f"{where} ({file.name}, {size[1]}x{size[0]})",
                                  "correct xmin,ymin,xmax,ymax (pixels, xmax > xmin, ymax > ymin).", clipped))
        labels.append(index[label])
    clipped.report(str(path))
    return {split: _samples(list(images.values()), names) for split, images in grouped.items()}, names


# --- reading a dataset -------------------------------------------------------------------------------------


def _read(spec: str | Path) -> tuple[dict[str, BoxSamples], list[str], str, bool]:
    """(splits, label map, description, is a built-in pool)."""
    text = str(spec)
    if text.startswith("builtin:"):
        from .scenes import builtin_scenes

        root, description = builtin_scenes(text.removeprefix("builtin:"), "detection", "boxes")
        splits, classes, _ = _read_coco_folder(root)
        return splits, classes, f"{description}; COCO boxes in {root / 'annotations'})", True
    path = Path(text).expanduser()
    if not path.exists():
        raise TransferKitError(f"Data not found: {path}. Fix: pass --data with a COCO JSON file, a folder with "
                               "annotations/*.json or images/ + labels/ (YOLO), a CSV manifest "
                               "(path,xmin,ymin,xmax,ymax,label) or builtin:fashion-scenes.")
    if path.is_file():
        if path.suffix.lower() == ".json":
            clipped = _Clipped()
            samples, classes = read_coco(path, clipped=clipped)
            clipped.report(str(path))
            return {"all": samples}, classes, f"COCO file {path} ({len(samples)} images)", False
        splits, classes = read_box_manifest(path)
        return splits, classes, f"CSV manifest {path}", False
    if (path / "annotations").is_dir():
        splits, classes, description = _read_coco_folder(path)
    else:
        splits, classes, description = _read_yolo_folder(path)
    return splits, classes, description, False


def load_box_training_data(spec: str | Path, *, val_fraction: float = 0.2, per_class: int | None = None,
                           seed: int = 0, test_per_class: int | None = None) -> SplitData:
    """Resolve ``--data`` for a detection run: train / val (/ test) images with boxes, checked.

    Args:
        spec: ``builtin:fashion-scenes``, a COCO JSON file, a folder (COCO or YOLO layout) or a CSV manifest.
        val_fraction: share of the images held out for validation when the data has no val split.
        per_class: N training images (detection's meaning of ``--per-class``).
        seed: seed for splitting and subsampling.
        test_per_class: keep N test images (seeded); ``None``: all.
    """
    splits, classes, description, pool = _read(spec)
    train, val, test, description = dense_splits(splits, description, pool, val_fraction=val_fraction,
                                                 per_class=per_class, seed=seed, test_per_class=test_per_class,
                                                 task="detection")
    if not classes:
        raise TransferKitError(f"{description} names no classes. Fix: add categories / names for the labels.")
    if not sum(len(b) for b in train.boxes):
        raise TransferKitError(f"No training image in {description} has a box: there is nothing to detect. Fix: add "
                               "annotations (images without boxes are fine as negatives, but not all of them).")
    return SplitData(list(classes), train, val, test, description)


def load_box_eval_data(spec: str | Path, classes: list[str]) -> EvalData:
    """Images with boxes to evaluate a run on, and which split they are (test, else val, else train, else all;
    a CSV's test rows, or all of its rows when it has none); the label map must be the run's."""
    splits, found, description, _ = _read(spec)
    split = next((s for s in ("test", "val", "train", "all") if s in splits), "all")
    samples = splits[split]
    if Path(str(spec)).suffix.lower() in (".csv", ".tsv") and split != "test":
        split, parts = "all", list(splits.values())
        samples = BoxSamples([i for p in parts for i in p.items], [b for p in parts for b in p.boxes],
                             [lab for p in parts for lab in p.labels], found, [s for p in parts for s in p.sizes])
    if found != list(classes):
        if set(found) <= set(classes):  # a subset of the run's classes (e.g. a CSV without every label): remap
            remap = np.array([classes.index(name) for name in found], dtype=np.int64)
            samples = BoxSamples(samples.items, samples.boxes, [remap[lab] for lab in samples.labels], list(classes),
                                 samples.sizes, samples.names)
        else:
            unknown = [name for name in found if name not in classes]
            raise TransferKitError(f"{description} has label(s) {', '.join(unknown[:5])} the run was not trained on "
                                   f"(its classes: {', '.join(classes[:8])}). Fix: evaluate on data labelled with "
                                   "the run's classes.")
    samples.classes = list(classes)
    return EvalData(samples, split, str(spec))


# --- joint augmentation, the dataset, batches ----------------------------------------------------------------


def box_transforms(preprocessing: Preprocessing, augment: str = "light") -> tuple[T.Transform, T.Transform]:
    """Training and evaluation transforms of (image, target) pairs: geometry moves the ``BoundingBoxes`` with the
    image, boxes cut by the image edge are clipped and boxes that (nearly) vanish are dropped with their labels
    (``SanitizeBoundingBoxes``); then the image alone is scaled to [0, 1] and normalised with the weights' mean and
    std — the only normalisation (the detector's own transform is set to the identity). Images keep their size: the
    detector resizes them (``min_size`` / ``max_size``).

    Args:
        augment: ``none``; ``light`` (horizontal flip; half the time a random scale of 75-125% with a shift of up
            to 10%: zooming in crops the edges, zooming out pads with the mean colour); ``heavy`` (scales of
            50-150%, shifts up to 20%, and colour jitter).
    """
    check_augment("augment", augment)
    normalise = [T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                 T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))]
    evaluation = T.Compose(normalise)
    if augment == "none":
        return evaluation, evaluation
    fill = {tv_tensors.Image: tuple(int(round(255 * m)) for m in preprocessing.mean), "others": 0}
    if augment == "light":
        geometry = [T.RandomHorizontalFlip(),
                    T.RandomApply([T.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.75, 1.25), fill=fill)],
                                  p=0.5)]
    else:
        geometry = [T.RandomHorizontalFlip(),
                    T.RandomApply([T.RandomAffine(degrees=0, translate=(0.2, 0.2), scale=(0.5, 1.5), fill=fill)],
                                  p=0.8),
                    T.ColorJitter(0.3, 0.3, 0.3, 0.05)]
    return T.Compose([*geometry, T.ClampBoundingBoxes(), T.SanitizeBoundingBoxes(min_size=2), *normalise]), evaluation


def image_and_target(samples: BoxSamples, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """Image ``index`` as a uint8 CHW tv_tensor and its target with ``BoundingBoxes`` (XYXY, the image's canvas)."""
    image = tv_tensors.Image(torch.from_numpy(np.array(open_image(samples.items[index]))).permute(2, 0, 1))
    target = samples.target(index)
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
    return image, {"boxes": boxes, "labels": target["labels"]}


class BoxDataset(Dataset):
    """``(image tensor, target)`` pairs, transformed jointly; a ``(index, seed)`` key (the training loader's
    :class:`~transferkit.data.sampling.SeededShuffle`) augments under its own seed."""

    def __init__(self, samples: BoxSamples, transform: T.Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return with_item_seed(key, self._item)

    def _item(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.transform(*image_and_target(self.samples, index))
        return image.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor).float(),
                                                 "labels": target["labels"].long()}


class DetectionBatch(NamedTuple):
    """What a detection model takes while training or validating: the images (a list: sizes may differ) and their
    targets — torchvision detectors compute their losses inside, from both."""

    images: list[torch.Tensor]
    targets: list[dict[str, torch.Tensor]]


def collate_boxes(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
                  ) -> tuple[DetectionBatch, list[dict[str, torch.Tensor]]]:
    """A DataLoader batch: ``(DetectionBatch(images, targets), targets)`` — per-image targets stay a list."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return DetectionBatch(images, targets), targets

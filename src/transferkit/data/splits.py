"""Seeded, stratified splitting and per-class subsampling, and the one way a :class:`SplitData` is assembled
and checked — for images and texts alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TransferKitError, bad_value, check_range
from ..seeding import derive_seed
from .samples import S, Samples, SplitData
from .tables import check_label_names


def stratified_split(samples: S, fraction: float, seed: int) -> tuple[S, S]:
    """Split into (kept, held out) with ``fraction`` of every class held out (at least one per class
    that has two or more samples)."""
    check_range("val_fraction", fraction, 0, 1, low_open=True, example=0.2)
    rng = np.random.default_rng(seed)
    labels = np.asarray(samples.labels)
    kept, held = [], []
    for label in range(len(samples.classes)):
        indices = rng.permutation(np.flatnonzero(labels == label))
        n_held = int(round(len(indices) * fraction))
        if len(indices) >= 2:
            n_held = min(max(n_held, 1), len(indices) - 1)
        else:
            n_held = 0
        held += indices[:n_held].tolist()
        kept += indices[n_held:].tolist()
    return samples.subset(sorted(kept)), samples.subset(sorted(held))


def take_per_class(samples: S, per_class: int, seed: int) -> tuple[S, S]:
    """Take ``per_class`` random samples of every class; returns (taken, the rest)."""
    if per_class < 1:
        raise bad_value("per_class", per_class, "a positive integer", "Pass e.g. --per-class 100.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(samples.labels)
    taken, rest = [], []
    for label in range(len(samples.classes)):
        indices = rng.permutation(np.flatnonzero(labels == label))
        taken += indices[:per_class].tolist()
        rest += indices[per_class:].tolist()
    return samples.subset(sorted(taken)), samples.subset(sorted(rest))


def per_class_from_pool(pool: S, per_class: int, val_fraction: float, seed: int) -> tuple[S, S]:
    """``per_class`` training samples of every class from a pool, and a validation split from the rest (in the
    same train:val proportion), with a clear error when a class has too few to leave any for validation."""
    counts = np.bincount(np.asarray(pool.labels), minlength=len(pool.classes))
    short = [pool.classes[i] for i, n in enumerate(counts) if n <= per_class]
    if short and per_class >= 1:
        raise TransferKitError(f"--per-class {per_class} leaves no validation data for {', '.join(short[:5])}"
                               f"{' ...' if len(short) > 5 else ''} (the pool has {int(counts.min())} of the smallest "
                               f"class). Fix: use --per-class {max(1, int(counts.min()) - 1)} or less.")
    train, rest = take_per_class(pool, per_class, seed)
    val, _ = take_per_class(rest, max(1, int(round(per_class * val_fraction / (1.0 - val_fraction)))),
                            derive_seed(seed, "validation"))
    return train, val


# --- assembling and checking the splits of a run ----------------------------------------------------


def from_pool(pool: Samples, test: Samples | None, description: str, *, val_fraction: float,
              per_class: int | None, seed: int) -> SplitData:
    """A built-in dataset's pool split into train / val (``per_class`` taken from the pool first)."""
    if per_class is not None:
        train, val = per_class_from_pool(pool, per_class, val_fraction, seed)
    else:
        train, val = stratified_split(pool, val_fraction, seed)
    return check_trainable(SplitData(list(pool.classes), train, val, test, description))


def from_splits(splits: dict[str, Samples], classes: list[str], description: str, *, val_fraction: float,
                per_class: int | None, seed: int) -> SplitData:
    """Data with its own train (val, test) splits: a missing val split is held out of train (stratified, seeded),
    then ``per_class`` examples per class are kept for training."""
    train = splits.get("train")
    if train is None or len(train) == 0:
        raise TransferKitError(f"No training examples in {description}. Fix: add some (or rows with split=train).")
    val = splits.get("val")
    if val is None or len(val) == 0:
        train, val = stratified_split(train, val_fraction, seed)
        description += f"; {val_fraction:.0%} of each class held out for validation (seed {seed})"
    if per_class is not None:
        train, _ = take_per_class(train, per_class, seed)
    return check_trainable(SplitData(list(classes), train, val, splits.get("test"), description))


def check_trainable(data: SplitData) -> SplitData:
    """Class names told apart by more than case (:func:`.tables.check_label_names`), at least two classes, every class
    in training, a non-empty validation split."""
    unit = data.unit
    check_label_names(data.classes, data.description.split(";")[0])
    if len(data.classes) < 2:
        raise TransferKitError(f"Only one class ({', '.join(data.classes)}) in the training data: a classifier needs "
                               "at least two.")
    empty = [name for name, n in data.train.class_counts().items() if n == 0]
    if empty:
        raise TransferKitError(f"No training {unit} for class(es) {', '.join(empty)}. Fix: add {unit} for them or "
                               "remove the classes.")
    if len(data.val) == 0:
        raise TransferKitError(f"The validation split is empty: every class needs at least two {unit} so one can be "
                               "held out. Fix: add some or provide a validation split.")
    return data


def onto_classes(samples: S, classes: list[str], where: str, *, training: bool = False) -> S:
    """``samples`` relabelled onto a run's ``classes``; a label outside them is an error (during training: a label
    only in another split; afterwards: data the run never saw)."""
    found = sorted({samples.classes[i] for i in samples.labels})
    unknown = [name for name in found if name not in classes]
    if unknown:
        listed = ", ".join(repr(u) for u in unknown)
        if training:
            raise TransferKitError(f"Label(s) {listed} appear in the {where} split but never in training. Fix: add "
                                   "training examples for them or drop those rows.")
        raise TransferKitError(f"Label(s) {listed} in {where} were not seen in training; the run knows "
                               f"{', '.join(classes)}. Fix: evaluate on data with the training classes only.")
    return samples.relabelled(classes)


def dense_splits(splits: dict[str, Any], description: str, pool: bool, *, val_fraction: float,
                 per_class: int | None, seed: int, test_per_class: int | None,
                 task: str) -> tuple[Any, Any, Any, str]:
    """Train / val / test of a dense task's images (segmentation, detection: ``--per-class`` counts images, and
    nothing is stratified): a missing val split is drawn from the training images — from a generated ``pool``
    with ``per_class`` as many as a ``val_fraction`` share implies, else ``val_fraction`` of them at random —
    then ``per_class`` training images and ``test_per_class`` test images are kept (seeded). Returns the three
    parts (test ``None`` when there is none) and the description, with how val was drawn."""
    train = splits.get("train") or splits.get("all")
    if train is None or len(train) == 0:
        raise TransferKitError(f"No training images in {description}. Fix: add images (or rows with split=train).")
    val = splits.get("val")
    if val is None or len(val) == 0:
        order = np.random.default_rng(seed).permutation(len(train))
        if pool and per_class is not None:
            if per_class >= len(train):
                raise TransferKitError(f"--per-class {per_class} (training images) leaves no validation images: the "
                                       f"pool has {len(train)}. Fix: use --per-class {len(train) - 1} or less.")
            n_val = max(1, int(round(per_class * val_fraction / (1.0 - val_fraction))))
            val = train.subset(sorted(order[per_class:per_class + n_val]))
            train = train.subset(sorted(order[:per_class]))
            per_class = None
        else:
            held = min(max(int(round(len(train) * val_fraction)), 1), len(train) - 1) if len(train) >= 2 else 0
            train, val = train.subset(sorted(order[held:])), train.subset(sorted(order[:held]))
            description += f"; {val_fraction:.0%} of the images held out for validation (seed {seed})"
    if per_class is not None:
        if per_class > len(train):
            raise TransferKitError(f"--per-class {per_class} asks for {per_class} training images ({task} counts "
                                   f"images); {description} has {len(train)}. Fix: use --per-class {len(train)} or "
                                   "less.")
        train = train.subset(sorted(np.random.default_rng(seed).permutation(len(train))[:per_class]))
    test = splits.get("test")
    if test is not None and test_per_class is not None and test_per_class < len(test):
        test = test.subset(sorted(np.random.default_rng(0).permutation(len(test))[:test_per_class]))
    return train, val, test, description

"""Seeded, stratified splitting and per-class subsampling."""

from __future__ import annotations

import numpy as np

from ..errors import TransferKitError, bad_value
from .images import ImageSamples


def stratified_split(samples: ImageSamples, fraction: float, seed: int) -> tuple[ImageSamples, ImageSamples]:
    """Split into (kept, held out) with ``fraction`` of every class held out (at least one per class
    that has two or more samples)."""
    if not 0.0 < fraction < 1.0:
        raise bad_value("val_fraction", fraction, "a float in (0, 1)", "Pass e.g. --val-fraction 0.2.")
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


def take_per_class(samples: ImageSamples, per_class: int, seed: int) -> tuple[ImageSamples, ImageSamples]:
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


def per_class_from_pool(pool: ImageSamples, per_class: int, val_fraction: float,
                        seed: int) -> tuple[ImageSamples, ImageSamples]:
    """``per_class`` training samples of every class from a pool, and a validation split from the rest (in the
    same train:val proportion), with a clear error when a class has too few to leave any for validation."""
    counts = np.bincount(np.asarray(pool.labels), minlength=len(pool.classes))
    short = [pool.classes[i] for i, n in enumerate(counts) if n <= per_class]
    if short and per_class >= 1:
        raise TransferKitError(f"--per-class {per_class} leaves no validation data for {', '.join(short[:5])}"
                               f"{' ...' if len(short) > 5 else ''} (the pool has {int(counts.min())} of the smallest "
                               f"class). Fix: use --per-class {max(1, int(counts.min()) - 1)} or less.")
    train, rest = take_per_class(pool, per_class, seed)
    val, _ = take_per_class(rest, max(1, int(round(per_class * val_fraction / (1.0 - val_fraction)))), seed + 1)
    return train, val

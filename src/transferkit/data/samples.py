"""Sample types, one per modality, and the split data a run trains on.

``ImageSamples`` hold image files or in-memory uint8 arrays, ``TextSamples`` hold strings; both carry integer
labels into ``classes`` and a display name per item. :class:`SplitData` is what every data source resolves to:
class names, train / val (/ test) samples, a description, and the images skipped as unreadable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ImageItem = Path | np.ndarray
S = TypeVar("S", bound="Samples")


@dataclass
class Samples:
    """Items with integer labels into ``classes`` (base of the per-modality sample types)."""

    items: list[Any]
    labels: list[int]
    classes: list[str]
    names: list[str] = field(default_factory=list)

    modality = "none"

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [str(it) if isinstance(it, Path) else f"#{i}" for i, it in enumerate(self.items)]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self: S, indices: list[int] | np.ndarray) -> S:
        return type(self)([self.items[i] for i in indices], [self.labels[i] for i in indices],
                          self.classes, [self.names[i] for i in indices])

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def relabelled(self: S, classes: list[str]) -> S:
        """The same items with labels mapped onto ``classes`` by name (every label must be among them)."""
        return type(self)(self.items, [classes.index(self.classes[i]) for i in self.labels], list(classes),
                          self.names)

    def concat(self: S, other: S) -> S:
        return type(self)(self.items + other.items, self.labels + other.labels, self.classes,
                          self.names + other.names)


@dataclass
class ImageSamples(Samples):
    """Images: files (``Path``) or in-memory uint8 arrays."""

    modality = "image"
    unit = "images"


@dataclass
class TextSamples(Samples):
    """Texts: one string per example."""

    modality = "text"
    unit = "texts"


@dataclass
class EvalData:
    """Labelled examples to evaluate on, and which part of their source they are: ``test``, ``val``, ``train`` or
    ``all`` (a source without splits: every example)."""

    samples: Samples
    split: str


@dataclass
class SplitData:
    """Training data, split and labelled (images or texts)."""

    classes: list[str]
    train: Samples
    val: Samples
    test: Samples | None
    description: str
    skipped: list[str] = field(default_factory=list)

    @property
    def unit(self) -> str:
        return getattr(self.train, "unit", "examples")

"""In-memory image datasets: a built-in dataset's pool and test split as uint8 arrays (shared by the built-ins of
:mod:`.builtin` and the generated ones of :mod:`.shifted`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .samples import ImageSamples


@dataclass
class BuiltinDataset:
    """A training pool and an official (or fixed) held-out test split."""

    name: str
    pool: ImageSamples
    test: ImageSamples
    description: str


def arrays_to_samples(images: np.ndarray, labels: np.ndarray, classes: list[str], tag: str) -> ImageSamples:
    items = list(images)
    return ImageSamples(items, [int(v) for v in labels], list(classes), [f"{tag}#{i}" for i in range(len(items))])


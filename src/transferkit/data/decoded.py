"""Decoded-input cache: decode and resize every image once, then augment uint8 tensors every epoch.

Each image is opened, resized (short side to the preprocessing's resize size, with its interpolation)
and centre-cropped to a square of that size once; the results are one uint8 array (N, 3, R, R) in the
cache folder, memory-mapped on reuse. Later epochs skip JPEG/PNG decoding and the big resize: the
training transform crops and flips the stored square, the evaluation transform centre-crops it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from ..cache import CacheUse, dataset_fingerprint, key_of, load_or_compute
from ..models.preprocessing import Preprocessing
from .images import ImageSamples, open_image
from .sampling import with_item_seed

logger = logging.getLogger(__name__)


def decode_images(samples: ImageSamples, preprocessing: Preprocessing, progress: bool = True,
                  label: str = "") -> np.ndarray:
    """(N, 3, R, R) uint8: each image resized (short side R) and centre-cropped to R x R."""
    size = preprocessing.resize_size
    resize = T.Compose([T.Resize(size, interpolation=InterpolationMode(preprocessing.interpolation), antialias=True),
                        T.CenterCrop(size), T.PILToTensor()])
    out = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    for i, item in enumerate(tqdm(samples.items, desc=f"decoding {label} images", leave=False, disable=not progress)):
        out[i] = resize(open_image(item)).numpy()
    return out


def decoded_images(samples: ImageSamples, preprocessing: Preprocessing, cache_dir: Path, progress: bool = True,
                   label: str = "", use: CacheUse | None = None) -> np.ndarray:
    """The decoded array of ``samples``, from ``cache_dir`` or decoded now and stored there."""
    size = preprocessing.resize_size
    key = key_of({"kind": "decoded", "data": dataset_fingerprint(samples), "size": size,
                  "interpolation": preprocessing.interpolation})
    array, reused = load_or_compute(cache_dir, key, (len(samples), 3, size, size),
                                    lambda: decode_images(samples, preprocessing, progress, label),
                                    {"kind": "decoded", "label": label}, use)
    logger.info("Decoded-input cache %s (%s, %d images at %d x %d, uint8): %s", "hit" if reused else "written",
                label, len(samples), size, size, Path(cache_dir) / key)
    return array


class DecodedDataset(Dataset):
    """``(tensor, label)`` pairs from a decoded uint8 array; ``transform`` works on uint8 tensors."""

    def __init__(self, images: np.ndarray, labels: list[int], transform: T.Transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return with_item_seed(key, self._item)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index]))
        return self.transform(image), self.labels[index]

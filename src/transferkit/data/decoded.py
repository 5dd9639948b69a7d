"""Decoded-input cache: decode and resize every image once, then augment the stored pixels every epoch.

Each image is opened and resized once exactly as the decode-every-epoch path resizes it for evaluation
(short side to the preprocessing's resize size, aspect ratio kept, with its interpolation) — the full
image, not a centre crop, so training crops still reach the borders of non-square images. The images have
different shapes, so they are stored as one flat uint8 buffer (each image ``H x W x 3``, one after another)
with an index of offsets, stored sizes and source sizes, in one cache entry, memory-mapped on reuse.

Transforms (see :func:`~transferkit.data.images.build_transforms` with ``decoded=True``): evaluation
centre-crops the stored image (pixel-equal to resizing every time); training draws the random resized
crop's box on the *source* image's size — the same random numbers, hence the same region, as the uncached
path for the same RNG state — and takes it from the stored image (see
:class:`~transferkit.data.images.SourceSizedCrop`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from ..cache import CacheUse, dataset_fingerprint, key_of, load_or_compute_arrays
from ..models.preprocessing import Preprocessing
from .images import ImageItem, ImageSamples, SourceSizedCrop, open_image
from .sampling import with_item_seed

logger = logging.getLogger(__name__)

FORMAT = 2  # 1: centre-cropped squares (N, 3, R, R); 2: full resized images in a flat buffer with an index
INDEX_COLUMNS = ("offset", "height", "width", "source_height", "source_width")


class DecodedImages:
    """Decoded images of different sizes: ``images[i]`` is an ``(H, W, 3)`` uint8 array (a view of the flat
    buffer, memory-mapped when it comes from the cache) and :meth:`source_size` the size it was resized from.

    Args:
        pixels: every image's ``H x W x 3`` bytes, one after another.
        index: ``(N, 5)`` int64 rows of :data:`INDEX_COLUMNS`.
        folder: the cache entry the arrays were memory-mapped from (pickled by path, so DataLoader workers
            map the file instead of receiving a copy).
    """

    def __init__(self, pixels: np.ndarray, index: np.ndarray, folder: Path | None = None) -> None:
        self.pixels = pixels
        self.index = index
        self.folder = folder

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        offset, height, width = (int(v) for v in self.index[i, :3])
        return np.asarray(self.pixels[offset:offset + height * width * 3]).reshape(height, width, 3)

    def source_size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of the image before the resize."""
        return int(self.index[i, 3]), int(self.index[i, 4])

    @property
    def nbytes(self) -> int:
        return int(self.pixels.size)

    def __getstate__(self) -> dict[str, Any]:
        if self.folder is not None:
            return {"folder": self.folder}
        return {"pixels": np.asarray(self.pixels), "index": np.asarray(self.index), "folder": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder = state["folder"]
        if self.folder is not None:
            self.pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
            self.index = np.load(self.folder / "index.npy", mmap_mode="r")
        else:
            self.pixels, self.index = state["pixels"], state["index"]


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` after resizing the short side to ``short_side`` with the aspect ratio kept (the rule
    of torchvision's ``Resize(int)``: the long side is truncated)."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def source_size(item: ImageItem) -> tuple[int, int]:
    """``(height, width)`` of an image, from the file's header (nothing is decoded) or the array's shape."""
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    try:
        with Image.open(item) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - unreadable (PIL raises many types, DecompressionBombError is not an
        # OSError): open_image reports it in the house format
        image = open_image(item)
        width, height = image.size
    return height, width


def decode_images(samples: ImageSamples, preprocessing: Preprocessing, progress: bool = True,
                  label: str = "") -> dict[str, np.ndarray]:
    """Every image resized (short side to ``resize_size``, aspect kept): ``pixels`` (flat uint8) and ``index``.

    Two passes: the sizes from the file headers first (to allocate the buffer once), then the decoding.
    """
    size = preprocessing.resize_size
    resize = T.Resize(size, interpolation=InterpolationMode(preprocessing.interpolation), antialias=True)
    index = np.zeros((len(samples), len(INDEX_COLUMNS)), dtype=np.int64)
    offset = 0
    for i, item in enumerate(samples.items):
        height, width = source_size(item)
        stored = resized_size(height, width, size)
        index[i] = (offset, *stored, height, width)
        offset += stored[0] * stored[1] * 3
    pixels = np.empty(offset, dtype=np.uint8)
    for i, item in enumerate(tqdm(samples.items, desc=f"decoding {label} images", leave=False, disable=not progress)):
        image = open_image(item)
        source = (image.height, image.width)
        if source != tuple(index[i, 3:]):
            raise RuntimeError(f"{samples.names[i]}: decoded as {source[1]} x {source[0]} but its header says "
                               f"{index[i, 4]} x {index[i, 3]}.")
        array = np.asarray(resize(image))
        if array.shape != (index[i, 1], index[i, 2], 3):
            raise RuntimeError(f"{samples.names[i]}: resized to {array.shape}, expected "
                               f"{(int(index[i, 1]), int(index[i, 2]), 3)} (torchvision's Resize rule changed?).")
        start = int(index[i, 0])
        pixels[start:start + array.size] = array.reshape(-1)
    return {"pixels": pixels, "index": index}


def decoded_images(samples: ImageSamples, preprocessing: Preprocessing, cache_dir: Path, progress: bool = True,
                   label: str = "", use: CacheUse | None = None) -> DecodedImages:
    """The decoded images of ``samples``, from ``cache_dir`` or decoded now and stored there."""
    size = preprocessing.resize_size
    key = key_of({"kind": "decoded", "format": FORMAT, "data": dataset_fingerprint(samples), "size": size,
                  "interpolation": preprocessing.interpolation, "pillow": Image.__version__})
    arrays, reused = load_or_compute_arrays(cache_dir, key, lambda: decode_images(samples, preprocessing, progress,
                                                                                  label),
                                            {"kind": "decoded", "format": FORMAT, "label": label}, use)
    images = DecodedImages(arrays["pixels"], arrays["index"], Path(cache_dir) / key)
    logger.info("Decoded-input cache %s (%s, %d images, short side %d, %.1f MB uint8): %s",
                "hit" if reused else "written", label, len(samples), size, images.nbytes / 1e6, Path(cache_dir) / key)
    return images


def estimated_bytes(samples: ImageSamples, preprocessing: Preprocessing, probe: int = 200) -> int:
    """Disk and memory the decoded cache of ``samples`` would take, from the aspect ratios of up to ``probe``
    images spread over the samples (their headers only)."""
    if len(samples) == 0:
        return 0
    picks = np.linspace(0, len(samples) - 1, min(probe, len(samples))).round().astype(int)
    size = preprocessing.resize_size
    per_image = [np.prod(resized_size(*source_size(samples.items[i]), size)) * 3 for i in picks]
    return int(np.mean(per_image) * len(samples))


class DecodedDataset(Dataset):
    """``(tensor, label)`` pairs from decoded images; ``transform`` gets each stored image as a PIL image (and,
    for a :class:`~transferkit.data.images.SourceSizedCrop`, the size it was resized from)."""

    def __init__(self, images: DecodedImages, labels: list[int], transform: Any) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return with_item_seed(key, self._item)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        if isinstance(self.transform, SourceSizedCrop):
            return self.transform(image, self.images.source_size(index)), self.labels[index]
        return self.transform(image), self.labels[index]

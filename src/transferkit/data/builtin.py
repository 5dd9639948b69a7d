"""Built-in offline datasets: ``builtin:fashion-mnist``, ``builtin:lfw-faces``, ``builtin:digits``, and the
domain-shifted ``builtin:fashion-mnist-m`` and ``builtin:font-digits`` (generated, see :mod:`.shifted`).

Each loader returns a pool of training images and a held-out test set, as in-memory uint8 arrays.
Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (or ``$TRANSFERKIT_DATA``, or a
download from the dataset authors' repository into the user's cache as a last resort); LFW faces from
scikit-image; digits from scikit-learn. ``builtin:fashion-scenes`` (segmentation and detection scenes,
:mod:`.scenes`) is not a classification dataset and is therefore not in :data:`BUILTIN_DATASETS`; segmentation
reads it with :mod:`.masks`.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TransferKitError, did_you_mean
from .samples import ImageSamples

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
                       "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"


@dataclass
class BuiltinDataset:
    """A training pool and an official (or fixed) held-out test split."""

    name: str
    pool: ImageSamples
    test: ImageSamples
    description: str


def load_builtin(name: str) -> BuiltinDataset:
    """Load a built-in dataset by name (without the ``builtin:`` prefix)."""
    if name in DENSE_BUILTINS:
        raise TransferKitError(f"'builtin:{name}' is {DENSE_BUILTINS[name]}, not a classification dataset: "
                               "it has no image-level labels. Fix: use it with --task segmentation (or leave --task "
                               "out: masks imply segmentation); for "
                               f"classification use one of {', '.join('builtin:' + n for n in BUILTIN_DATASETS)}.")
    if name not in BUILTIN_DATASETS:
        raise TransferKitError(f"Unknown built-in dataset 'builtin:{name}'. Available: "
                               f"{', '.join('builtin:' + n for n in BUILTIN_DATASETS)}. "
                               + did_you_mean(name, BUILTIN_DATASETS))
    return BUILTIN_DATASETS[name]()


# --- Fashion-MNIST --------------------------------------------------------------------------------


def fashion_mnist_dir() -> Path:
    """A folder holding the four Fashion-MNIST files: the Debian package, $TRANSFERKIT_DATA, or a download."""
    candidates = list(FASHION_MNIST_DIRS)
    if os.environ.get("TRANSFERKIT_DATA"):
        candidates.insert(0, Path(os.environ["TRANSFERKIT_DATA"]) / "fashion-mnist")
    cache = _cache_dir() / "fashion-mnist"
    candidates.append(cache)
    for folder in candidates:
        if all((folder / f).is_file() for f in FASHION_MNIST_FILES.values()):
            return folder
    base_url = os.environ.get("TRANSFERKIT_FASHION_MNIST_URL", FASHION_MNIST_URL)
    try:
        download_files(base_url, list(FASHION_MNIST_FILES.values()), cache)
    except OSError as exc:
        raise TransferKitError(
            f"Fashion-MNIST is not installed and could not be downloaded ({exc}). Fix: "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four *-ubyte.gz files in "
            "$TRANSFERKIT_DATA/fashion-mnist/.") from exc
    return cache


def download_files(base_url: str, names: list[str], folder: Path) -> None:
    """Download ``base_url + name`` for each name into ``folder``; all or nothing (atomic renames)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for name in names:
            logger.info("Downloading %s%s", base_url, name)
            with urllib.request.urlopen(base_url + name, timeout=30) as response, \
                    open(Path(tmp) / name, "wb") as out:
                shutil.copyfileobj(response, out)
        for name in names:
            os.replace(Path(tmp) / name, folder / name)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise TransferKitError(f"{path} is not an unsigned-byte IDX file. Fix: re-install the dataset files.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise TransferKitError(f"{path} is truncated. Fix: re-install the dataset files.")
    return array.reshape(shape)


def _fashion_mnist() -> BuiltinDataset:
    folder = fashion_mnist_dir()
    arrays = {key: read_idx(folder / name) for key, name in FASHION_MNIST_FILES.items()}
    pool = _arrays_to_samples(arrays["train_images"], arrays["train_labels"], FASHION_MNIST_CLASSES, "train")
    test = _arrays_to_samples(arrays["test_images"], arrays["test_labels"], FASHION_MNIST_CLASSES, "test")
    return BuiltinDataset("fashion-mnist", pool, test,
                          f"Fashion-MNIST (28x28 grey, 10 classes, {len(pool)} train pool, {len(test)} test; {folder})")


# --- LFW faces and digits: no official test split, so a fixed stratified 30% is held out ----------


def _lfw_faces() -> BuiltinDataset:
    from skimage.data import lfw_subset

    images = (np.clip(lfw_subset(), 0, 1) * 255).round().astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100)
    return _with_fixed_test("lfw-faces", images, labels, ["face", "non-face"],
                            "LFW subset (25x25 grey, faces vs non-faces, 200 images; scikit-image)")


def _digits() -> BuiltinDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return _with_fixed_test("digits", images, digits.target, [str(i) for i in range(10)],
                            "scikit-learn digits (8x8 grey, 10 classes, 1,797 images)")


def _with_fixed_test(name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                     description: str) -> BuiltinDataset:
    from .splits import stratified_split

    samples = _arrays_to_samples(images, labels, classes, name)
    pool, test = stratified_split(samples, fraction=0.3, seed=0)
    return BuiltinDataset(name, pool, test, f"{description}; fixed 30% test split")


def _arrays_to_samples(images: np.ndarray, labels: np.ndarray, classes: list[str], tag: str) -> ImageSamples:
    items = list(images)
    return ImageSamples(items, [int(v) for v in labels], list(classes), [f"{tag}#{i}" for i in range(len(items))])


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "transferkit"


# --- generated, domain-shifted datasets (imported on use: shifted.py builds on this module) ----------


def _fashion_mnist_m() -> BuiltinDataset:
    from .shifted import fashion_mnist_m

    return fashion_mnist_m()


def _font_digits() -> BuiltinDataset:
    from .shifted import font_digits

    return font_digits()


BUILTIN_DATASETS: dict[str, Callable[[], BuiltinDataset]] = {
    "fashion-mnist": _fashion_mnist,
    "lfw-faces": _lfw_faces,
    "digits": _digits,
    "fashion-mnist-m": _fashion_mnist_m,
    "font-digits": _font_digits,
}

DENSE_BUILTINS = {"fashion-scenes": "a segmentation and detection dataset (Fashion-MNIST items pasted on photos, "
                                    "with per-pixel masks and boxes)"}
"""Built-ins for dense tasks, named here only so that classification can refuse them with a clear message."""

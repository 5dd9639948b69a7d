"""The Fashion-MNIST files: where they are (the Debian package ``dataset-fashion-mnist``, ``$TRANSFERKIT_DATA``, or a
download from the dataset authors' repository into the user's cache as a last resort) and how to read them (IDX).
Used by ``builtin:fashion-mnist`` and by the datasets generated from it (``fashion-mnist-m``, ``fashion-scenes``)."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import TransferKitError

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
                       "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"


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


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "transferkit"

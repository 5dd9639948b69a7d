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

from collections.abc import Callable

import numpy as np

from ..errors import TransferKitError, did_you_mean
from .arrays import BuiltinDataset, arrays_to_samples
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, fashion_mnist_dir, read_idx

__all__ = ["BUILTIN_DATASETS", "DENSE_BUILTINS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "BuiltinDataset",
           "load_builtin"]


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


def _fashion_mnist() -> BuiltinDataset:
    folder = fashion_mnist_dir()
    arrays = {key: read_idx(folder / name) for key, name in FASHION_MNIST_FILES.items()}
    pool = arrays_to_samples(arrays["train_images"], arrays["train_labels"], FASHION_MNIST_CLASSES, "train")
    test = arrays_to_samples(arrays["test_images"], arrays["test_labels"], FASHION_MNIST_CLASSES, "test")
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

    samples = arrays_to_samples(images, labels, classes, name)
    pool, test = stratified_split(samples, fraction=0.3, seed=0)
    return BuiltinDataset(name, pool, test, f"{description}; fixed 30% test split")


# --- generated, domain-shifted datasets (imported on use: their generators are slow to import) ----------


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

"""A small Fashion-MNIST in IDX files for tests: the first items of the installed dataset, else synthetic items."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from transferkit.data import fashion_mnist as builtin_module


def write_fmnist_subset(folder: Path, train: int = 300, test: int = 100) -> Path:
    """Write ``folder/fashion-mnist/*-ubyte.gz`` with ``train`` and ``test`` items; returns ``folder``.

    Point ``$TRANSFERKIT_DATA`` at ``folder`` and every Fashion-MNIST reader uses these files.
    """
    real = next((d for d in builtin_module.FASHION_MNIST_DIRS
                 if all((d / f).is_file() for f in builtin_module.FASHION_MNIST_FILES.values())), None)
    target = folder / "fashion-mnist"
    target.mkdir(parents=True, exist_ok=True)
    for key, name in builtin_module.FASHION_MNIST_FILES.items():
        n = train if key.startswith("train") else test
        if real is not None:
            array = builtin_module.read_idx(real / name)[:n]
        elif key.endswith("images"):
            array = _synthetic_items(n, seed=0 if key.startswith("train") else 1)
        else:
            array = (np.arange(n) % 10).astype(np.uint8)
        header = bytes([0, 0, 8, array.ndim]) + b"".join(v.to_bytes(4, "big") for v in array.shape)
        with gzip.open(target / name, "wb") as handle:
            handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return folder


def _synthetic_items(n: int, seed: int) -> np.ndarray:
    """Light ellipses with texture on black, 28x28 (a stand-in when the Debian package is missing)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    items = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(11, 17), rng.uniform(11, 17), rng.uniform(5, 12), rng.uniform(5, 12)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        items[i][inside] = rng.integers(60, 256, size=int(inside.sum()))
    return items

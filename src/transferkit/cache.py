"""A keyed on-disk array store shared by the feature cache and the decoded-input cache.

Each entry is a folder ``<cache_dir>/<key>/`` holding ``data.npy`` and ``meta.json``; it is written in a
temporary folder and renamed into place, so an interrupted write leaves nothing that looks complete.
Entries are memory-mapped when read back. Keys are hashes of everything the array depends on, so a
changed input never maps onto a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def key_of(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def dataset_fingerprint(samples: Any) -> str:
    """Files by path, size and mtime; in-memory items (arrays, texts) by their bytes; plus the labels.

    Args:
        samples: anything with ``items`` and ``labels`` (``transferkit.data.ImageSamples``).
    """
    digest = hashlib.sha256()
    for item, label in zip(samples.items, samples.labels, strict=True):
        if isinstance(item, Path):
            stat = item.stat()
            digest.update(f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        elif isinstance(item, str):
            digest.update(item.encode("utf-8", errors="surrogatepass"))
        else:
            array = np.ascontiguousarray(item)
            digest.update(f"{array.shape}|{array.dtype}".encode())
            digest.update(array.tobytes())
        digest.update(f"|{label};".encode())
    return digest.hexdigest()


@dataclass
class CacheUse:
    """What one run's cache entries cost: seconds spent computing new entries, and the seconds that reused
    entries took to compute when an earlier run (or another process of this one) built them (so comparisons can
    count them as if paid); how many entries this process built and reused."""

    built_seconds: float = 0.0
    saved_seconds: float = 0.0
    built: int = 0
    reused: int = 0


def load_or_compute(cache_dir: Path, key: str, shape: tuple[int, ...], compute: Callable[[], np.ndarray],
                    meta: dict[str, Any], use: CacheUse | None = None) -> tuple[np.ndarray, bool]:
    """The array stored under ``key`` (memory-mapped), or ``compute()``'s result after storing it; the compute
    time is stored with the entry and added to ``use``.

    Returns:
        ``(array, reused)``.
    """
    folder = Path(cache_dir) / key
    if (folder / "meta.json").is_file():
        array = np.load(folder / "data.npy", mmap_mode="r")
        if array.shape == tuple(shape):
            if use is not None:
                use.saved_seconds += float(json.loads((folder / "meta.json").read_text()).get("seconds", 0.0))
                use.reused += 1
            return array, True
    started = time.perf_counter()
    array = compute()
    seconds = time.perf_counter() - started
    if use is not None:
        use.built_seconds += seconds
        use.built += 1
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        np.save(tmp / "data.npy", array)
        (tmp / "meta.json").write_text(json.dumps({**meta, "shape": list(array.shape), "dtype": str(array.dtype),
                                                         "seconds": round(seconds, 3)}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return array, False

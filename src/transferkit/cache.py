"""A keyed on-disk array store shared by the feature cache and the decoded-input cache.

Each entry is a folder ``<cache_dir>/<key>/`` holding ``data.npy`` (or several named ``.npy`` arrays, see
:func:`load_or_compute_arrays`) and ``meta.json``; it is written in a temporary folder and renamed into
place, so an interrupted write leaves nothing that looks complete.
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
    if (folder / "meta.json").is_file() and (folder / "data.npy").is_file():
        array = np.load(folder / "data.npy", mmap_mode="r")
        if array.shape == tuple(shape):
            _count_reuse(folder, use)
            return array, True
    started = time.perf_counter()
    array = compute()
    seconds = time.perf_counter() - started
    _store(Path(cache_dir), key, {"data": array}, {**meta, "shape": list(array.shape), "dtype": str(array.dtype)},
           seconds, use)
    return array, False


def load_or_compute_arrays(cache_dir: Path, key: str, compute: Callable[[], dict[str, np.ndarray]],
                           meta: dict[str, Any], use: CacheUse | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Several named arrays stored together under ``key`` (e.g. a flat pixel buffer and its index), each
    memory-mapped, or ``compute()``'s arrays after storing them (returned memory-mapped from the cache too).

    An entry is complete only if every array listed in its ``meta.json`` is there with its recorded shape and
    dtype; anything else is recomputed.

    Returns:
        ``({name: array}, reused)``.
    """
    folder = Path(cache_dir) / key
    arrays = _open_arrays(folder)
    if arrays is not None:
        _count_reuse(folder, use)
        return arrays, True
    started = time.perf_counter()
    computed = compute()
    seconds = time.perf_counter() - started
    listing = {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in computed.items()}
    _store(Path(cache_dir), key, computed, {**meta, "arrays": listing}, seconds, use)
    del computed
    arrays = _open_arrays(folder)
    if arrays is None:
        raise OSError(f"The cache entry {folder} could not be read back after writing it.")
    return arrays, False


def _open_arrays(folder: Path) -> dict[str, np.ndarray] | None:
    if not (folder / "meta.json").is_file():
        return None
    listing = json.loads((folder / "meta.json").read_text()).get("arrays")
    if not isinstance(listing, dict):
        return None
    arrays = {}
    for name, expected in listing.items():
        path = folder / f"{name}.npy"
        if not path.is_file():
            return None
        array = np.load(path, mmap_mode="r")
        if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
            return None
        arrays[name] = array
    return arrays


def _count_reuse(folder: Path, use: CacheUse | None) -> None:
    if use is not None:
        use.saved_seconds += float(json.loads((folder / "meta.json").read_text()).get("seconds", 0.0))
        use.reused += 1


def _store(cache_dir: Path, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any], seconds: float,
           use: CacheUse | None) -> None:
    """Write the arrays and ``meta.json`` in a temporary folder, then rename it into place."""
    if use is not None:
        use.built_seconds += seconds
        use.built += 1
    folder = cache_dir / key
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps({**meta, "seconds": round(seconds, 3)}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weights_fingerprint(module: Any) -> str:
    """SHA-256 over parameter and buffer names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()

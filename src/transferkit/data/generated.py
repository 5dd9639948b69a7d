"""The on-disk cache of generated datasets: where it lives, how it is keyed, and atomic writes.

Generated data goes to ``$TRANSFERKIT_DATA/generated/<name>/<key>`` when ``$TRANSFERKIT_DATA`` is set, else to
``$XDG_CACHE_HOME/transferkit/generated/<name>/<key>`` (``~/.cache`` without ``$XDG_CACHE_HOME``). The key
holds a format version and a short hash of every generation parameter, so changing either regenerates
instead of reading stale data. Every entry appears at once (written under a temporary name, then renamed):
a reader never sees half an entry, and two processes generating the same entry both end with a complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def generated_dir() -> Path:
    """The root of the generated-data cache (see the module docstring)."""
    if os.environ.get("TRANSFERKIT_DATA"):
        return Path(os.environ["TRANSFERKIT_DATA"]) / "generated"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "transferkit" / "generated"


def cache_key(version: int, params: dict) -> str:
    """``v<version>-<hash>``: the hash covers the JSON of ``params`` (sorted keys)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"v{version}-{digest}"


def cached_arrays(name: str, version: int, params: dict,
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from ``<generated_dir>/<name>/<key>.npz``, built and written atomically on first use.

    Args:
        name: dataset name (a folder of the cache).
        version: format version; bump it when the generator changes what it produces.
        params: every parameter the arrays depend on (JSON-serialisable).
        build: makes the arrays when they are not cached yet.
    """
    path = generated_dir() / name / f"{cache_key(version, params)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path.parent, ".npz")
        try:
            with open(tmp, "xb") as out:  # "x": never another writer's file; permissions follow the umask
                np.savez(out, **arrays)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        logger.info("Cached %s in %s", name, path)
    except OSError as exc:  # a read-only or full cache must not stop the user: the arrays are already built
        logger.warning("Could not cache %s in %s (%s); it will be generated again next time", name, path, exc)
    return arrays


def temporary_name(parent: Path, suffix: str = "") -> Path:
    """A fresh ``.tmp-*`` name in ``parent`` (unique across processes), for writing before an atomic rename."""
    return parent / f".tmp-{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def publish_dir(tmp: Path, final: Path) -> Path:
    """Rename a fully written temporary folder to ``final``; if another process got there first, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final

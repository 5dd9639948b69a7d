"""Target-domain images for unsupervised domain adaptation: unlabelled, by construction.

``--target-data`` is a folder of images (searched recursively; sub-folder names are ignored, so a labelled tree
can be used without its labels) or a built-in whose unlabelled pool is the target (``builtin:fashion-mnist-m``,
``builtin:digits``). Only the images are taken: :class:`TargetData` holds no labels, so adaptation cannot read
any. A built-in also brings its labelled test split, scored only after training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import TransferKitError
from .images import IMAGE_EXTENSIONS
from .samples import ImageSamples

USABLE_BANDS = {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}  # 8-bit modes


@dataclass
class TargetData:
    """Unlabelled target images (``items``: paths or uint8 arrays) and, for a built-in, its labelled test split."""

    items: list[Any]
    description: str
    test: ImageSamples | None = None


def load_target(spec: str, *, skip_bad_images: bool = False) -> TargetData:
    """Read ``--target-data``; a one-line error for a missing folder, unreadable files (named) or images whose
    channels the model cannot take (not 8-bit grey, colour or colour + alpha)."""
    text = str(spec)
    if text.startswith("builtin:"):
        from .builtin import load_builtin

        dataset = load_builtin(text.removeprefix("builtin:"))
        items = list(dataset.pool.items)  # the images only: the pool's labels stay where they are
        _check_arrays(items, text)
        return TargetData(items, f"{text}: {len(items)} unlabelled pool images ({dataset.description})", dataset.test)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise TransferKitError(f"--target-data {text} is not a folder. Fix: pass a folder of target images (searched "
                               "recursively) or builtin:fashion-mnist-m.")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TransferKitError(f"--target-data {text} holds no images ({', '.join(IMAGE_EXTENSIONS)}). Fix: pass the "
                               "folder of unlabelled target images.")
    bad, wrong = [], []
    for file in files:
        mode = _mode(file)
        if mode is None:
            bad.append(file)
        elif mode not in USABLE_BANDS:
            wrong.append((file, mode))
    if wrong:
        file, mode = wrong[0]
        raise TransferKitError(f"--target-data: {len(wrong)} image(s) have channels the model cannot take, e.g. {file} "
                               f"(PIL mode {mode}; the model takes 8-bit grey or colour images, as the source). Fix: "
                               "convert them to 8-bit RGB or greyscale.")
    if bad and not skip_bad_images:
        raise TransferKitError(f"--target-data: {len(bad)} unreadable image(s), e.g. {bad[0]}. Fix: remove or replace "
                               "them, or pass --skip-bad-images.")
    items = [f for f in files if f not in set(bad)]
    return TargetData(items, f"{text}: {len(items)} unlabelled images" + (f" ({len(bad)} unreadable skipped)"
                                                                           if bad else ""))


def _mode(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.mode
    except Exception:  # PIL raises many types for corrupt files
        return None


def _check_arrays(items: list[Any], spec: str) -> None:
    shapes = {np.asarray(items[i]).shape[2:] for i in range(0, len(items), max(1, len(items) // 64))}
    if any(shape not in ((), (1,), (3,), (4,)) for shape in shapes):
        raise TransferKitError(f"--target-data {spec}: images with channel shapes {sorted(shapes)}; the model takes "
                               "grey or colour images.")

"""Domain-shifted built-in datasets: ``builtin:fashion-mnist-m`` and ``builtin:font-digits``.

Two source → target pairs for domain adaptation, both generated offline and deterministically:

* ``builtin:fashion-mnist`` → ``builtin:fashion-mnist-m``: the MNIST-M recipe (Ganin et al., JMLR 2016) applied
  to Fashion-MNIST. Each 28x28 item is blended with a random 28x28 patch of a colour photograph by absolute
  difference, ``|patch - item|`` per channel. The unlabelled adaptation ``pool`` uses the 60,000 Fashion-MNIST
  training items and patches of the ``train`` photographs of :mod:`transferkit.data.photos`; the labelled
  ``test`` split uses the 10,000 t10k items and patches of the ``test`` photographs.
* ``builtin:font-digits`` → ``builtin:digits``: digits 0-9 rendered with the TrueType fonts that ship with
  matplotlib (random height, width, rotation, shift and stroke), binarised on a 32x32 grid and reduced to 8x8
  by counting the "on" pixels of each 4x4 block (0..16) — the recipe behind scikit-learn's handwritten
  digits — then scaled to 0..255 like ``builtin:digits``. Pool and test use disjoint font families
  (:data:`FONT_SPLIT`).

The same package versions give the same bytes (numpy's generators, Pillow's FreeType rendering).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import TransferKitError
from .arrays import BuiltinDataset, arrays_to_samples
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, fashion_mnist_dir, read_idx
from .generated import cached_arrays
from .photos import load_photo, photo_names

logger = logging.getLogger(__name__)

SEED = 0
"""Seed of the generated built-ins (they are fixed datasets, like the real ones)."""
FORMAT_VERSION = 1
"""Bump when the generators change what they produce, so cached copies are regenerated."""

# --- fashion-mnist-m --------------------------------------------------------------------------------

PATCH_SCALES = (1, 2)
"""Each photograph is used at full size and downscaled 2x, so a 28x28 patch shows finer or coarser texture."""


def mnist_m_blend(images: np.ndarray, side: str, seed: int = SEED) -> np.ndarray:
    """Blend grey 28x28 items with random colour photo patches: ``|patch - item|`` per channel.

    Args:
        images: ``(N, H, W)`` uint8 grey items (light on black, as in (Fashion-)MNIST).
        side: ``"train"`` or ``"test"``: which colour photographs of :mod:`transferkit.data.photos` to cut from.
        seed: the patch choice depends only on the seed, the side and the item's position in ``images``.

    Returns:
        ``(N, H, W, 3)`` uint8 RGB images.
    """
    images = np.asarray(images, dtype=np.uint8)
    n, height, width = images.shape
    sources = _patch_sources(side)
    rng = np.random.default_rng([seed, 0 if side == "train" else 1])
    which = rng.integers(len(sources), size=n)
    corners = rng.random((n, 2))
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for k, source in enumerate(sources):
        idx = np.flatnonzero(which == k)
        ys = (corners[idx, 0] * (source.shape[0] - height + 1)).astype(np.intp)
        xs = (corners[idx, 1] * (source.shape[1] - width + 1)).astype(np.intp)
        windows = np.lib.stride_tricks.sliding_window_view(source, (height, width), axis=(0, 1))
        patches = windows[ys, xs].transpose(0, 2, 3, 1)  # (m, 3, H, W) → (m, H, W, 3)
        items = images[idx, :, :, None]
        out[idx] = np.maximum(patches, items) - np.minimum(patches, items)  # |patch - item| without overflow
    return out


@functools.lru_cache(maxsize=2)
def _patch_sources(side: str) -> tuple[np.ndarray, ...]:
    sources = []
    for name in photo_names(side, colour_only=True):
        photo = load_photo(name)
        for factor in PATCH_SCALES:
            sources.append(_downscale(photo, factor))
    return tuple(sources)


def _downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downscaling by an integer factor (plain numpy: identical on every machine)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def fashion_mnist_m() -> BuiltinDataset:
    """``builtin:fashion-mnist-m``: 60,000 pool and 10,000 test 28x28 RGB images, Fashion-MNIST's 10 classes.

    Generated on first use (a few seconds) and cached (:mod:`transferkit.data.generated`).
    """
    params = {"seed": SEED, "scales": list(PATCH_SCALES),
              "photos": {side: list(photo_names(side, colour_only=True)) for side in ("train", "test")}}
    arrays = cached_arrays("fashion-mnist-m", FORMAT_VERSION, params, _build_fashion_mnist_m)
    pool = arrays_to_samples(arrays["pool_images"], arrays["pool_labels"], FASHION_MNIST_CLASSES, "pool")
    test = arrays_to_samples(arrays["test_images"], arrays["test_labels"], FASHION_MNIST_CLASSES, "test")
    return BuiltinDataset(
        "fashion-mnist-m", pool, test,
        f"Fashion-MNIST-M (Fashion-MNIST blended with colour photo patches, 28x28 RGB, 10 classes; "
        f"{len(pool)} pool = FMNIST train x photos {', '.join(photo_names('train', True))}; "
        f"{len(test)} test = FMNIST t10k x photos {', '.join(photo_names('test', True))})")


def _build_fashion_mnist_m() -> dict[str, np.ndarray]:
    start = time.perf_counter()
    folder = fashion_mnist_dir()
    arrays = {key: read_idx(folder / name) for key, name in FASHION_MNIST_FILES.items()}
    built = {"pool_images": mnist_m_blend(arrays["train_images"], "train"), "pool_labels": arrays["train_labels"],
             "test_images": mnist_m_blend(arrays["test_images"], "test"), "test_labels": arrays["test_labels"]}
    logger.info("Generated fashion-mnist-m in %.1f s", time.perf_counter() - start)
    return built


# --- font-digits -------------------------------------------------------------------------------------

FONT_SPLIT = {
    "pool": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
             "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
             "cmr10.ttf", "cmb10.ttf", "cmss10.ttf"),
    "test": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
             "DejaVuSansMono-BoldOblique.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
             "STIXGeneralBolIta.ttf", "cmti10.ttf", "cmtt10.ttf"),
}
"""Font files (in matplotlib's ``mpl-data/fonts/ttf``) per split; the families are disjoint."""

FONT_DIGITS_COUNTS = {"pool": 5000, "test": 1000}
"""Images per split, balanced over the 10 digits (scikit-learn's digits has 1,797 in all)."""

RENDER_PX = 64  # font size of the first rendering, before reduction to the 32x32 bitmap
GRID = 32  # the bitmap side of the scikit-learn (UCI optdigits) recipe: 32x32, then 4x4 blocks → 8x8
BLOCK = 4
HEIGHT_RANGE = (29, 32)  # glyph height on the 32 grid: scikit-learn's digits always span all 8 rows
WIDTH_STRETCH = (0.75, 1.15)  # horizontal stretch of the glyph's own aspect ratio
MAX_ROTATION = 12.0  # degrees either way
MAX_STROKE = 3  # extra stroke width in pixels at RENDER_PX (0 = the font's own weight)
PROGRESS_FROM = 2000  # show a progress bar from this many digits on (about a millisecond each)


def font_dir() -> Path:
    """matplotlib's bundled TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render_font_digits(count: int, fonts: tuple[str, ...], seed: int = SEED,
                       split_key: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render ``count`` digits as scikit-learn-style 8x8 images with 17 grey levels.

    Args:
        count: number of images; labels cycle through 0..9, so the classes are balanced.
        fonts: font file names in :func:`font_dir`.
        seed: random seed; image ``i`` depends only on ``(seed, split_key, i)`` and ``fonts``.
        split_key: separates the random streams of different splits.

    Returns:
        ``(count, 8, 8)`` uint8 images (levels 0..16 scaled by 255/16 and rounded) and ``(count,)`` labels.
    """
    from PIL import ImageFont

    folder = font_dir()
    missing = [f for f in fonts if not (folder / f).is_file()]
    if missing:
        raise TransferKitError(f"matplotlib's font files {', '.join(missing)} are missing from {folder}. "
                               "Fix: reinstall matplotlib (pip install --force-reinstall matplotlib).")
    faces = [ImageFont.truetype(str(folder / f), RENDER_PX) for f in fonts]
    images = np.empty((count, GRID // BLOCK, GRID // BLOCK), dtype=np.uint8)
    labels = np.arange(count) % 10
    bar = tqdm(range(count), desc="rendering font digits", leave=False, disable=count < PROGRESS_FROM)
    for i in bar:
        rng = np.random.default_rng([seed, split_key, i])
        bitmap = _render_bitmap(str(labels[i]), faces[rng.integers(len(faces))], rng)
        levels = bitmap.reshape(GRID // BLOCK, BLOCK, GRID // BLOCK, BLOCK).sum(axis=(1, 3))  # 0..16
        images[i] = np.round(levels * (255.0 / 16.0)).astype(np.uint8)
    return images, labels


def _render_bitmap(char: str, face, rng: np.random.Generator) -> np.ndarray:
    """One glyph as a 32x32 bool bitmap: drawn large, rotated, cropped to its ink, resized and shifted."""
    from PIL import Image, ImageDraw

    stroke = int(rng.integers(0, MAX_STROKE + 1))
    canvas = Image.new("L", (2 * RENDER_PX, 2 * RENDER_PX), 0)
    ImageDraw.Draw(canvas).text((RENDER_PX, RENDER_PX), char, font=face, fill=255, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    glyph = canvas.crop(canvas.getbbox())  # rotating only the ink's box is several times faster
    glyph = glyph.rotate(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), resample=Image.Resampling.BILINEAR,
                         expand=True)
    glyph = glyph.crop(glyph.getbbox())
    height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    aspect = glyph.width / glyph.height * rng.uniform(*WIDTH_STRETCH)
    width = int(np.clip(round(height * aspect), 2, GRID))
    glyph = glyph.resize((width, height), Image.Resampling.BILINEAR)
    top = int(rng.integers(0, GRID - height + 1))
    left = int(rng.integers(0, GRID - width + 1))
    bitmap = np.zeros((GRID, GRID), dtype=bool)
    bitmap[top:top + height, left:left + width] = np.asarray(glyph) >= 128
    return bitmap


def font_digits() -> BuiltinDataset:
    """``builtin:font-digits``: 8x8 digits rendered from matplotlib's fonts (pool and test fonts disjoint).

    Rendered on first use (a few seconds) and cached (:mod:`transferkit.data.generated`).
    """
    params = {"seed": SEED, "fonts": {k: list(v) for k, v in FONT_SPLIT.items()}, "counts": FONT_DIGITS_COUNTS,
              "render": [RENDER_PX, GRID, BLOCK, list(HEIGHT_RANGE), list(WIDTH_STRETCH), MAX_ROTATION, MAX_STROKE]}
    arrays = cached_arrays("font-digits", FORMAT_VERSION, params, _build_font_digits)
    classes = [str(i) for i in range(10)]
    pool = arrays_to_samples(arrays["pool_images"], arrays["pool_labels"], classes, "pool")
    test = arrays_to_samples(arrays["test_images"], arrays["test_labels"], classes, "test")
    return BuiltinDataset(
        "font-digits", pool, test,
        f"font digits (8x8 grey, 17 levels like builtin:digits, 10 classes; {len(pool)} pool from "
        f"{len(FONT_SPLIT['pool'])} DejaVu Sans/Serif and Computer Modern roman/bold/sans fonts, "
        f"{len(test)} test from {len(FONT_SPLIT['test'])} DejaVu Sans Mono, STIX and Computer Modern "
        "italic/typewriter fonts; matplotlib)")


def _build_font_digits() -> dict[str, np.ndarray]:
    start = time.perf_counter()
    built = {}
    for key, (split, fonts) in enumerate(FONT_SPLIT.items()):
        images, labels = render_font_digits(FONT_DIGITS_COUNTS[split], fonts, SEED, split_key=key)
        built[f"{split}_images"], built[f"{split}_labels"] = images, labels
    logger.info("Rendered font-digits in %.1f s", time.perf_counter() - start)
    return built

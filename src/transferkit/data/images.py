"""Image samples, image loading, and the transforms built from a model's preprocessing."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..errors import TransferKitError, check_choice
from ..models.preprocessing import Preprocessing
from .samples import ImageItem, ImageSamples
from .sampling import with_item_seed

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUGMENTATIONS = ("none", "light", "heavy")

def open_image(item: ImageItem) -> Image.Image:
    """Open a file or array as a 3-channel RGB image (see :func:`to_rgb`); a file that cannot be decoded is an error
    naming it."""
    if isinstance(item, np.ndarray):
        return to_rgb(Image.fromarray(item))
    try:
        image = _open(item)
        image.load()
        return to_rgb(image)
    except TransferKitError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files (OSError, SyntaxError, struct.error...)
        raise TransferKitError(
            f"Cannot read image {item}: {_reason(exc)}. Fix: remove or replace the file, or pass --skip-bad-images "
            "(which decodes every image up front and skips the unreadable ones).") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """3-channel 8-bit RGB: greyscale repeated; alpha composited on white; 16-bit images scaled to 8 bits (not
    clipped, as PIL's own conversion does); CMYK and palettes converted; an animated image's first frame. EXIF
    orientation is not applied: pixels are used as stored, the same in training, ``predict`` and ``serve`` (as
    timm's and torchvision's loaders read images)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":
        raise TransferKitError(f"Image {_name(image)} holds 32-bit floating-point pixels; transferkit reads 8- and "
                               "16-bit images. Fix: convert it to an 8- or 16-bit PNG.")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def max_image_pixels() -> int | None:
    """The largest image (width x height) transferkit decodes: PIL's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by
    default; ``None`` turns the guard off), checked from the header before any pixel is decoded — a guard against
    decompression bombs, small files that claim gigapixels."""
    return Image.MAX_IMAGE_PIXELS


def image_problem(path: Path, thorough: bool = False) -> str | None:
    """Why ``path`` is not a usable image, or ``None``. Checks the header (format, size against
    :func:`max_image_pixels`, pixel format) and the format's own verifier (PNG and WebP checksums); ``thorough``
    also decodes every pixel, which finds truncated JPEG, GIF, BMP and TIFF files too."""
    try:
        with _open(path) as image:
            if image.mode == "F":
                return "32-bit floating-point pixels (convert it to an 8- or 16-bit PNG)"
            image.verify()
        if thorough:
            with _open(path) as image:
                image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale — every byte is still read and checked
                image.load()
        return None
    except ImageTooLarge as exc:
        return exc.problem
    except Exception as exc:  # PIL raises many types for corrupt files
        return _reason(exc)


def is_readable_image(path: Path) -> bool:
    """Cheap integrity check: the header parses and the format's own verifier passes."""
    return image_problem(path) is None


def _open(path: Path) -> Image.Image:
    """``Image.open`` with the pixel limit checked from the header (PIL's own check only warns below twice its limit,
    and raises an error transferkit did not catch above it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below, with the fix
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise _too_large(path, str(exc)) from exc
    limit = max_image_pixels()
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise _too_large(path, f"{image.width} x {image.height} = {image.width * image.height:,} pixels")
    return image


class ImageTooLarge(TransferKitError):
    """An image above :func:`max_image_pixels` (found from its header, before decoding)."""

    def __init__(self, message: str, problem: str = "") -> None:  # one message argument, as DataLoader re-raises
        super().__init__(message)
        self.problem = problem or message


def _too_large(path: Path, size: str) -> ImageTooLarge:
    pixels = re.search(r"\((\d+) pixels\)", size)  # PIL's message: "Image size (N pixels) exceeds limit of ..."
    size = f"{int(pixels.group(1)):,} pixels" if pixels else size
    problem = f"too large ({size}; the limit against decompression bombs is {max_image_pixels():,} pixels)"
    return ImageTooLarge(f"Cannot read image {path}: {problem}. Fix: downscale it (training resizes images to a few "
                         "hundred pixels anyway), or remove it, or pass --skip-bad-images.", problem)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL recognises (empty, text, or damaged)"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _name(image: Image.Image) -> str:
    return str(getattr(image, "filename", "") or "(in memory)")


class ImageDataset(Dataset):
    """``(tensor, label)`` pairs: opens each image and applies ``transform``."""

    def __init__(self, samples: ImageSamples, transform: T.Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return with_item_seed(key, self._item)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        image = open_image(self.samples.items[index])
        return self.transform(image), self.samples.labels[index]


def check_augment(name: str, value: object) -> str:
    return check_choice(name, value, AUGMENTATIONS, "Pass e.g. --augment light.")


class SourceSizedCrop:
    """A random resized crop of an image stored resized (the decoded-input cache), drawn as on its source.

    The box is drawn by ``crop`` (a ``RandomResizedCrop``) on the *source* image's size — the same random numbers
    and the same box as the uncached path, which crops the source image — then scaled onto the stored image and
    resampled from it to the output size with the same filter; ``rest`` (flips, colour, normalisation) follows.
    The region is the same as the uncached path's; the pixels agree up to resampling twice instead of once.

    Args:
        crop: the random resized crop of the uncached training transform.
        rest: the transforms after it.
    """

    def __init__(self, crop: T.RandomResizedCrop, rest: T.Transform) -> None:
        self.crop = crop
        self.rest = rest
        self.resample = Image.Resampling[InterpolationMode(crop.interpolation).name]

    def draw_box(self, stored_size: tuple[int, int], source_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """Draw the crop (the random numbers of ``crop``) on the source's ``(height, width)`` and return its box on
        the stored image of ``stored_size``: ``(left, top, right, bottom)`` in stored pixels, not rounded."""
        height, width = source_size
        # make_params reads only the input's size: a zero-stride tensor of the source's size stands in for it
        stand_in = torch.zeros((), dtype=torch.uint8).expand(1, height, width)
        draw = getattr(self.crop, "make_params", None) or self.crop._get_params  # torchvision < 0.21: _get_params
        params = draw([stand_in])
        fx, fy = stored_size[1] / width, stored_size[0] / height
        return (params["left"] * fx, params["top"] * fy, min(stored_size[1], (params["left"] + params["width"]) * fx),
                min(stored_size[0], (params["top"] + params["height"]) * fy))

    def __call__(self, image: Image.Image, source_size: tuple[int, int]) -> torch.Tensor:
        box = self.draw_box((image.height, image.width), source_size)
        # crop the whole pixels that hold the box, then resample the box from them (as the uncached path resamples
        # its crop): the filter sees no pixels beyond the crop in either path
        outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
        region = image.crop(outer)
        inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
        out_h, out_w = self.crop.size
        return self.rest(region.resize((out_w, out_h), self.resample, box=inner))

    def __repr__(self) -> str:
        return f"SourceSizedCrop({self.crop!r}, {self.rest!r})"


def build_transforms(preprocessing: Preprocessing, augment: str = "light",
                     decoded: bool = False) -> tuple[T.Transform | SourceSizedCrop, T.Transform]:
    """The training and evaluation transforms for a model's preprocessing.

    Args:
        preprocessing: mean, std, size, crop and interpolation of the pre-training.
        augment: ``none`` (training sees the evaluation transform), ``light`` (random resized crop and
            horizontal flip) or ``heavy`` (plus rotation, colour jitter and RandAugment).
        decoded: inputs are images already resized as the evaluation transform resizes them (the decoded-input
            cache: short side to ``resize_size``, aspect kept), so the evaluation transform only centre-crops,
            and the training transform is a :class:`SourceSizedCrop` that needs each image's source size.
    """
    check_augment("augment", augment)
    interpolation = InterpolationMode(preprocessing.interpolation)
    to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True),
                 T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))]
    size = preprocessing.input_size
    resize = [] if decoded else [T.Resize(preprocessing.resize_size, interpolation=interpolation, antialias=True)]
    evaluation = T.Compose([*resize, T.CenterCrop(size), *to_tensor])
    if augment == "none":
        return evaluation, evaluation
    if augment == "light":
        train = [T.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=interpolation, antialias=True),
                 T.RandomHorizontalFlip()]
    else:
        train = [T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interpolation, antialias=True),
                 T.RandomHorizontalFlip(), T.RandomRotation(15, interpolation=interpolation),
                 T.ColorJitter(0.3, 0.3, 0.3, 0.05), T.RandAugment(num_ops=2, magnitude=9)]
    if decoded:
        return SourceSizedCrop(train[0], T.Compose([*train[1:], *to_tensor])), evaluation
    return T.Compose([*train, *to_tensor]), evaluation

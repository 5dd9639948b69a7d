"""Image samples, image loading, and the transforms built from a model's preprocessing."""

from __future__ import annotations

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
    """Open a file or array as a 3-channel RGB image (greyscale is repeated, alpha is composited on white)."""
    if isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    else:
        try:
            image = Image.open(item)
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise TransferKitError(
                f"Cannot read image {item}: {exc}. Fix: remove or replace the file, or pass "
                "--skip-bad-images to skip unreadable images.") from exc
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def is_readable_image(path: Path) -> bool:
    """Cheap integrity check: the header parses and the format's own verifier passes."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many types for corrupt files
        return False


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


def build_transforms(preprocessing: Preprocessing, augment: str = "light",
                     decoded: bool = False) -> tuple[T.Transform, T.Transform]:
    """The training and evaluation transforms for a model's preprocessing.

    Args:
        preprocessing: mean, std, size, crop and interpolation of the pre-training.
        augment: ``none`` (training sees the evaluation transform), ``light`` (random resized crop and
            horizontal flip) or ``heavy`` (plus rotation, colour jitter and RandAugment).
        decoded: inputs are uint8 tensors already resized to ``resize_size`` squares (the decoded-input
            cache), so the evaluation transform only centre-crops.
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
    return T.Compose([*train, *to_tensor]), evaluation

"""On-device augmentation (``--device-augment``): the decoded-input cache held on the training device, cropped,
flipped and normalised there in batches, so a GPU fine-tune is not bound by CPU image work.

The DataLoader still draws each example's augmentation in its workers, with the CPU path's own transform objects
(:class:`~transferkit.data.images.SourceSizedCrop` and its flip) under the example's own seed — so the crop boxes
and flips are those of the CPU path for the same RNG state — but returns only the parameters: ``(index, left, top,
right, bottom, flip)`` on the stored image. :class:`DeviceAugment` then resamples each box from the stored uint8
image on the device with Pillow's filter and 8-bit arithmetic (:mod:`.resample`), flips, and scales and normalises
with the same torchvision functions as the CPU path. Only ``--augment none`` and ``light`` run on the device
(``heavy``'s colour and RandAugment operations stay on the CPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from ..errors import TransferKitError
from ..models.preprocessing import Preprocessing
from .decoded import DecodedImages
from .images import SourceSizedCrop, build_transforms
from .resample import FILTERS, resample
from .sampling import with_item_seed

DEVICE_AUGMENTS = ("auto", "on", "off")
ON_DEVICE = ("none", "light")  # the --augment settings that run on the device
CHUNK = 64  # images resampled together (bounds the float64 buffers: 64 x 3 x 256 x 341 x 8 bytes = 134 MB)


def device_augment_choice(setting: str, *, cuda: bool, decoded: bool, augment: str, interpolation: str,
                          on_activations: bool = False) -> tuple[bool, str]:
    """Whether training batches are augmented on the device, and why (for the plan). ``on`` with something it cannot
    do is an error naming the fix; ``auto`` is on when training runs on CUDA from the decoded-input cache."""
    blocker = ("--decoded-cache off (the device holds the decoded cache)" if not decoded else
               f"--augment {augment} (only none and light run on the device)" if augment not in ON_DEVICE else
               f"the {interpolation} filter (bilinear and bicubic run on the device)" if interpolation not in FILTERS
               else "a phase trains on cached frozen-prefix activations" if on_activations else None)
    if setting == "off":
        return False, "off (--device-augment off)"
    if blocker is not None:
        if setting == "on":
            raise TransferKitError(f"--device-augment on cannot run with {blocker}. Fix: pass --device-augment auto "
                                   "(or off), or change that setting.")
        return False, f"off ({blocker})"
    if setting == "auto" and not cuda:
        return False, "off (no CUDA device; --device-augment on runs it on the CPU)"
    return True, "on: the decoded uint8 images are held on the training device; crops, flips and normalisation " \
                 "run there in batches (the same boxes and flips as the CPU path)"


class DeviceCrops(Dataset):
    """``(params, label)`` pairs: each example's augmentation parameters, drawn as the CPU path draws them.

    ``params`` is float64 ``(index, left, top, right, bottom, flip)``: the box on the stored image (not rounded) and
    whether to flip. Under ``--augment none`` the box is the evaluation's centre crop and nothing is drawn.
    """

    def __init__(self, images: DecodedImages, labels: list[int], preprocessing: Preprocessing,
                 augment: str = "light") -> None:
        if augment not in ON_DEVICE:
            raise TransferKitError(f"--augment {augment} does not run on the device (only {', '.join(ON_DEVICE)}). "
                                   "Fix: pass --device-augment off.")
        if preprocessing.resize_size < preprocessing.input_size:
            raise TransferKitError(f"The stored images (short side {preprocessing.resize_size}) are smaller than the "
                                   f"crop ({preprocessing.input_size}). Fix: pass --device-augment off.")
        self.images, self.labels, self.preprocessing = images, labels, preprocessing
        self.size = preprocessing.input_size
        train, _ = build_transforms(preprocessing, augment, decoded=True)
        self.crop = train if isinstance(train, SourceSizedCrop) else None
        self.flip = (next(t for t in train.rest.transforms if isinstance(t, T.RandomHorizontalFlip))
                     if self.crop is not None else None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return with_item_seed(key, self._item)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        stored = tuple(int(v) for v in self.images.index[index, 1:3])
        if self.crop is None:  # the evaluation's centre crop, as torchvision computes it
            top, left = int(round((stored[0] - self.size) / 2.0)), int(round((stored[1] - self.size) / 2.0))
            box, flip = (left, top, left + self.size, top + self.size), 0.0
        else:
            box = self.crop.draw_box(stored, self.images.source_size(index))
            # the flip draws its random numbers exactly as on the image: ask it about a 1 x 2 stand-in
            flip = float(self.flip(torch.tensor([[[0, 1]]], dtype=torch.uint8))[0, 0, 0] == 1)
        return torch.tensor([index, *box, flip], dtype=torch.float64), self.labels[index]


class DeviceAugment:
    """Turns a batch of :class:`DeviceCrops` parameters into the model's input batch, on the parameters' device.

    The decoded images move to a device once, on their first batch there. The CPU path crops the whole pixels that
    hold each box and resamples the box from them (the filter sees nothing beyond), so this does too.
    """

    def __init__(self, images: DecodedImages, preprocessing: Preprocessing) -> None:
        self.images = images
        self.size = (preprocessing.input_size, preprocessing.input_size)
        self.interpolation = preprocessing.interpolation
        self.mean, self.std = list(preprocessing.mean), list(preprocessing.std)
        self._pixels: torch.Tensor | None = None

    def pixels(self, device: torch.device) -> torch.Tensor:
        """The flat uint8 buffer of every stored image, on ``device``."""
        if self._pixels is None or self._pixels.device != device:
            self._pixels = torch.from_numpy(np.array(self.images.pixels)).to(device)  # one copy
        return self._pixels

    @property
    def nbytes(self) -> int:
        return self.images.nbytes

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        chunks = [self._chunk(params[i:i + CHUNK]) for i in range(0, len(params), CHUNK)]
        batch = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        return F.normalize(F.to_dtype(batch, torch.float32, scale=True), self.mean, self.std)

    def _chunk(self, params: torch.Tensor) -> torch.Tensor:
        pixels = self.pixels(params.device)
        rows = params.cpu().tolist()  # the regions' bounds index the buffer (one transfer per batch)
        regions = []
        for index, left, top, right, bottom, _ in rows:
            offset, height, width = (int(v) for v in self.images.index[int(index), :3])
            image = pixels[offset:offset + height * width * 3].view(height, width, 3)
            regions.append(image[math.floor(top):math.ceil(bottom), math.floor(left):math.ceil(right)])
        sizes = torch.tensor([r.shape[:2] for r in regions], device=params.device)
        padded = torch.zeros((len(regions), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max())), dtype=torch.uint8,
                             device=params.device)
        for i, region in enumerate(regions):
            padded[i, :, :region.shape[0], :region.shape[1]] = region.permute(2, 0, 1)
        boxes = params[:, 1:5].clone()
        boxes -= boxes.floor()[:, [0, 1, 0, 1]]  # the box inside its region
        out = resample(padded, sizes, boxes, self.size, self.interpolation)
        flip = params[:, 5].bool()[:, None, None, None]
        return torch.where(flip, out.flip(-1), out)

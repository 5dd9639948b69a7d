"""Checks on what actually reaches the model: is the input normalised the way the weights expect?

A correctly preprocessed image can only hold values in ``[(0 - mean) / std, (1 - mean) / std]`` per
channel, so values outside that box, no negative values at all, or values in the hundreds each point
to a specific mistake (normalised twice or with other statistics, not normalised, not scaled to [0, 1]).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..models.preprocessing import Preprocessing


def input_statistics(batches: Iterable, max_batches: int = 2) -> dict[str, torch.Tensor]:
    """Per-channel min, max, mean and std over the first ``max_batches`` batches of ``(images, labels)``."""
    seen = []
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        images = getattr(images, "images", images)  # a detection batch: a list of images of different sizes
        if isinstance(images, (tuple, list)):
            seen += [image.detach().float().cpu().reshape(image.shape[0], -1) for image in images]
            continue
        seen.append(images.detach().float().cpu().transpose(0, 1).reshape(images.shape[1], -1))
    values = torch.cat(seen, dim=1)
    return {"min": values.min(dim=1).values, "max": values.max(dim=1).values, "mean": values.mean(dim=1),
            "std": values.std(dim=1)}


def check_normalization(batches: Iterable, preprocessing: Preprocessing, max_batches: int = 2) -> list[str]:
    """Warnings (empty when all is well) about how the inputs are normalised, naming the likely cause."""
    stats = input_statistics(batches, max_batches)
    mean = torch.tensor(preprocessing.mean)
    std = torch.tensor(preprocessing.std)
    low, high = (0 - mean) / std, (1 - mean) / std
    tolerance = 0.05 * (high - low)
    measured = (f"measured per-channel mean {_fmt(stats['mean'])}, std {_fmt(stats['std'])}, range "
                f"[{stats['min'].min():.2f}, {stats['max'].max():.2f}]")
    expected = (f"the weights expect (x - {_fmt(mean)}) / {_fmt(std)} of pixels in [0, 1], i.e. values within "
                f"[{low.min():.2f}, {high.max():.2f}]")
    if stats["max"].max() > 20:
        return [f"Inputs look like 0-255 pixel values ({measured}); {expected}. Likely cause: images not scaled "
                "to [0, 1] before normalising (use ToDtype(torch.float32, scale=True) or ToTensor)."]
    if stats["min"].min() >= 0:
        return [f"Inputs are never negative ({measured}); {expected}. Likely cause: the images are not normalised "
                "with the model's mean and std."]
    if bool((stats["min"] < low - tolerance).any() or (stats["max"] > high + tolerance).any()):
        return [f"Inputs fall outside the range a correctly normalised image can have ({measured}); {expected}. "
                "Likely cause: normalised twice, or with other statistics (e.g. ImageNet's mean/std for a model "
                "trained with 0.5/0.5)."]
    return []


def _fmt(values: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"

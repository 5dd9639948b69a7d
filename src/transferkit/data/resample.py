"""Pillow's resampling of 8-bit images (``Image.resize(size, filter, box)``), in batched torch matrix products.

Pillow resizes in two separable passes, horizontal then vertical, each a weighted sum over a filter's support whose
coefficients it computes per output pixel (``precompute_coeffs`` in its ``Resample.c``), turns into 22-bit fixed
point and applies in integers, rounding each pass back to 8 bits. Here each pass is one matrix: row ``o`` holds
output pixel ``o``'s fixed-point coefficients in the columns of the input pixels it reads. The products of 8-bit
pixels and those integer coefficients and their sums stay below 2**53, so float64 matrix products compute them
exactly; the box is rounded to float32 and each pass rounded back to 8 bits as Pillow does. Each pass alone equals
Pillow's pixel for pixel (tested); the two passes together run horizontal first, as Pillow's source does, but the
Pillow 13 build in use runs some sizes vertical first, and the 8-bit rounding between the passes then differs: up
to 1 grey level (bilinear) on smooth images, more for bicubic on noise, whose overshoot is clipped in between.

Only the antialiasing filters Pillow shares with torchvision's ``antialias=True`` are here (bilinear, bicubic).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _triangle(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return torch.where(x < 1.0, 1.0 - x, 0.0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()  # each expression in Pillow's order of operations, so that every coefficient is bit-equal
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, 0.0))


FILTERS: dict[str, tuple[float, Callable[[torch.Tensor], torch.Tensor]]] = {"bilinear": (1.0, _triangle),
                                                                           "bicubic": (2.0, _cubic)}


def pass_matrices(in_sizes: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, out_size: int, width: int,
                  interpolation: str) -> torch.Tensor:
    """One resampling pass per image: ``(B, out_size, width)`` fixed-point coefficients (whole numbers, float64).

    Args:
        in_sizes: each input's length along the pass (its pixels beyond are never read).
        starts: each box's start along the pass (float64, input pixels).
        ends: each box's end.
        out_size: output pixels along the pass.
        width: columns of the matrices (at least the largest input size).
        interpolation: ``bilinear`` or ``bicubic``.
    """
    support_at_1, kernel = FILTERS[interpolation]
    scale = (ends - starts).to(torch.float32).to(torch.float64) / out_size  # Pillow: (double)(in1 - in0) in floats
    filterscale = scale.clamp(min=1.0)
    support = (support_at_1 * filterscale)[:, None]
    positions = torch.arange(out_size, dtype=torch.float64, device=starts.device)
    center = starts[:, None] + (positions + 0.5) * scale[:, None]
    first = (center - support + 0.5).trunc().clamp(min=0)  # C's (int) cast truncates
    count = torch.minimum((center + support + 0.5).trunc(), in_sizes[:, None].to(torch.float64)) - first
    taps, total = [], torch.zeros_like(center)
    for k in range(int(math.ceil(float(support.max()))) * 2 + 1):
        w = torch.where(k < count, kernel(((k + first) - center + 0.5) * (1.0 / filterscale)[:, None]), 0.0)
        total = total + w  # summed in Pillow's order
        taps.append(w)
    weights = torch.stack(taps, -1) / torch.where(total != 0, total, 1.0)[..., None]
    fixed = torch.where(weights < 0, -0.5 + weights * (1 << PRECISION_BITS),
                        0.5 + weights * (1 << PRECISION_BITS)).trunc()
    columns = (first[..., None] + torch.arange(len(taps), device=starts.device)).long()
    matrices = torch.zeros((*center.shape, width + len(taps)), dtype=torch.float64, device=starts.device)
    matrices.scatter_(-1, columns, fixed)  # taps past an input's end carry 0
    return matrices[..., :width]


def _round(sums: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8``: the fixed-point sums (plus one half) back to 8-bit values."""
    return torch.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp(0, 255)


def resample(images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int],
             interpolation: str) -> torch.Tensor:
    """Resample ``boxes`` of 8-bit images as Pillow's ``Image.resize(out_size[::-1], filter, box)`` does.

    Args:
        images: ``(B, 3, H, W)`` 8-bit values (any dtype), each image in the top-left corner (padding is never read).
        sizes: ``(B, 2)`` each image's ``(height, width)``.
        boxes: ``(B, 4)`` float64 ``(left, top, right, bottom)`` in each image's pixels.
        out_size: ``(height, width)``.
        interpolation: ``bilinear`` or ``bicubic``.

    Returns:
        ``(B, 3, height, width)`` uint8.
    """
    height, width = images.shape[-2:]
    boxes = boxes.to(torch.float32).to(torch.float64)  # Pillow reads the box as C floats
    across = pass_matrices(sizes[:, 1], boxes[:, 0], boxes[:, 2], out_size[1], width, interpolation)
    down = pass_matrices(sizes[:, 0], boxes[:, 1], boxes[:, 3], out_size[0], height, interpolation)
    rows = _round(images.to(torch.float64) @ across.transpose(1, 2)[:, None])  # (B, 3, H, out_w)
    return _round(down[:, None] @ rows).to(torch.uint8)

"""Augmentation that resumes exactly: every training example of an epoch carries its own random seed.

A DataLoader's workers keep their own random state across epochs (persistent workers), so after ``--resume`` the
workers would start from fresh states and augment differently than the uninterrupted run. Here the shuffle and one
seed per example are drawn in the main process when an epoch starts (from the epoch's stream, see
:mod:`transferkit.seeding`); the dataset augments example ``i`` under its own seed, whatever worker loads it. So the
crops and flips of an epoch depend only on the run's seed and the epoch — not on the number of workers, on whether
they persist, nor on an interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch.utils.data import Sampler

from ..seeding import derive_seed

T = TypeVar("T")


class SeededShuffle(Sampler[tuple[int, int]]):
    """A random order of ``n`` examples, each yielded as ``(index, seed)``; both come from the global torch RNG at
    the start of each pass (``set_seed`` the epoch's stream first)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(self.n, generator=generator).tolist()
        return iter([(index, derive_seed(epoch_seed, index)) for index in order])


def with_item_seed(key: int | tuple[int, int], load: Callable[[int], T]) -> T:
    """``load(index)``; for an ``(index, seed)`` key, under that seed (the global torch RNG is restored after)."""
    if not isinstance(key, tuple):
        return load(key)
    index, seed = key
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load(index)



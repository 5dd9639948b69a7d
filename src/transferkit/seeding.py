"""Random streams that cannot collide: one seed per (run seed, purpose, index), hashed by numpy's SeedSequence.

``seed + epoch`` gives seed ``s`` at epoch ``e`` the stream of seed ``s + 1`` at epoch ``e - 1``, so runs that
differ only in their seed (``compare``'s seeds) would replay each other's shuffles and augmentations one epoch
apart. :func:`derive_seed` hashes the whole tuple instead: two different tuples share a seed only by a 2^-32 chance.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *stream: int | str) -> int:
    """A 32-bit seed for the stream ``stream`` (e.g. ``("epoch", 3)``) of a run seeded with ``seed``."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF] + [_as_int(part) for part in stream]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _as_int(part: int | str) -> int:
    if isinstance(part, str):
        return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "big")
    return int(part) & 0xFFFFFFFFFFFFFFFF

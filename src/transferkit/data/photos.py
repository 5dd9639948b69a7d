"""Real photographs and textures that ship inside scikit-image, split once into train and test sources.

The generated datasets (``fashion-scenes``, ``fashion-mnist-m``) draw backgrounds and colour patches from
these images. Each image belongs to exactly one side, so a test set built from the ``test`` side shows
backgrounds no model saw during training:

========  ==========================================================  ==================================
side      colour photographs                                          grey photographs and textures
========  ==========================================================  ==================================
train     astronaut, coffee, rocket, immunohistochemistry, retina     brick, grass, camera, page, coins
test      chelsea, stereo_motorcycle (left view), hubble_deep_field,  gravel, moon, text, clock, cell
          colorwheel
========  ==========================================================  ==================================

Only images bundled in the scikit-image wheel are used (the ones behind ``pooch`` need the internet);
``cat`` is left out because it is the same picture as ``chelsea``.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import bad_value

COLOUR_PHOTOS = {"train": ("astronaut", "coffee", "rocket", "immunohistochemistry", "retina"),
                 "test": ("chelsea", "stereo_motorcycle", "hubble_deep_field", "colorwheel")}
GREY_PHOTOS = {"train": ("brick", "grass", "camera", "page", "coins"),
               "test": ("gravel", "moon", "text", "clock", "cell")}
SIDES = ("train", "test")


def photo_names(side: str, colour_only: bool = False) -> tuple[str, ...]:
    """The scikit-image images on one side of the split, colour photographs first.

    Args:
        side: ``"train"`` or ``"test"``.
        colour_only: leave out the grey photographs and textures.
    """
    if side not in SIDES:
        raise bad_value("side", side, "'train' or 'test'")
    return COLOUR_PHOTOS[side] if colour_only else COLOUR_PHOTOS[side] + GREY_PHOTOS[side]


@functools.lru_cache(maxsize=32)
def load_photo(name: str) -> np.ndarray:
    """One scikit-image picture as a read-only ``(H, W, 3)`` uint8 RGB array (grey is repeated)."""
    from skimage import data

    known = {n for side in SIDES for n in photo_names(side)}
    if name not in known:
        raise bad_value("name", name, f"one of {', '.join(sorted(known))}")
    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity): keep the left view
        image = image[0]
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3])
    image.setflags(write=False)
    return image

"""Reference inputs on which a fine-tuned model is compared with its pre-trained start.

* **Images**: the natural photographs and textures bundled with scikit-image (both sides of
  :mod:`transferkit.data.photos`), each whole and as seeded random crops (scale 0.1-1, random flip): close to
  the kind of picture ImageNet weights were trained on, offline and the same on every machine. Or the user's own
  images (``--reference FOLDER``; labels, if any, are ignored).
* **Text**: a fixed set of everyday English sentences (news, instructions, dialogue, description), or the user's
  own (``--reference FILE``, one per line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TransferKitError

CROPS_PER_PHOTO = 7

SENTENCES = (
    "The city council approved the new budget after a long debate on Tuesday night.",
    "Preheat the oven to 200 degrees and grease a large baking tray.",
    "She missed the last train home and had to walk across the bridge in the rain.",
    "Shares in the company fell sharply after it warned that profits would be lower than expected.",
    "Could you tell me where the nearest pharmacy is?",
    "The river flooded the valley twice in the same winter.",
    "He plays the violin in an amateur orchestra every Thursday evening.",
    "Scientists have found traces of water ice in a crater near the moon's south pole.",
    "The museum is closed on Mondays except during the summer holidays.",
    "Our flight was delayed by three hours because of fog at the airport.",
    "The striker scored twice in the second half to win the match.",
    "Please remember to switch off the lights when you leave the room.",
    "The old library was converted into apartments last year.",
    "A light breeze moved through the tall grass at the edge of the field.",
    "The government plans to raise the minimum wage from next April.",
    "I think the film was far too long, but the music was wonderful.",
    "Wash the vegetables, cut them into small pieces and fry them in olive oil.",
    "The new phone has a larger screen and a battery that lasts two days.",
    "Children in the village walk several miles to reach the nearest school.",
    "The negotiations ended without an agreement on the price of gas.",
    "My grandmother grew tomatoes and beans in her small garden.",
    "The hospital is looking for volunteers to help at the reception desk.",
    "Heavy snow closed several roads in the north of the country.",
    "The band announced a tour of twenty cities starting in March.",
    "He apologised for the mistake and promised to fix it by Friday.",
    "The committee will publish its report at the end of the month.",
    "A small cat was sleeping on the warm bonnet of the car.",
    "Prices of fresh fruit rose after a poor harvest in the south.",
    "The teacher asked the students to read the first chapter before the next lesson.",
    "Engineers are testing a bridge design that can withstand strong earthquakes.",
    "We spent the afternoon walking along the cliffs and watching the boats.",
    "The software update fixes a security problem in the web browser.",
)


def builtin_images(crops_per_photo: int = CROPS_PER_PHOTO, seed: int = 0) -> list[Image.Image]:
    """scikit-image's bundled photographs, each whole and as ``crops_per_photo`` seeded random crops."""
    from ..data.photos import SIDES, load_photo, photo_names

    rng = np.random.default_rng(seed)
    images: list[Image.Image] = []
    for name in (n for side in SIDES for n in photo_names(side)):
        photo = load_photo(name)
        images.append(Image.fromarray(photo))
        height, width = photo.shape[:2]
        for _ in range(crops_per_photo):
            scale, ratio = rng.uniform(0.1, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            h = int(min(height, round(np.sqrt(scale * height * width / ratio))))
            w = int(min(width, round(np.sqrt(scale * height * width * ratio))))
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            crop = photo[top:top + h, left:left + w]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            images.append(Image.fromarray(np.ascontiguousarray(crop)))
    return images


def reference_inputs(reference: str | Path | None, text: bool) -> tuple[list, str]:
    """The reference inputs and a description of them.

    Args:
        reference: ``None`` for the built-in set; else a folder or file of images (image models) or a file of
            sentences, one per line (language models).
        text: whether the model is a language model.
    """
    if reference is None:
        if text:
            return list(SENTENCES), f"{len(SENTENCES)} built-in everyday English sentences"
        images = builtin_images(CROPS_PER_PHOTO)
        return images, (f"{len(images)} natural images: scikit-image's bundled photographs, whole and as "
                        f"{CROPS_PER_PHOTO} seeded random crops each")
    path = Path(reference)
    if text:
        from ..data.text import read_lines

        if not path.is_file():
            raise TransferKitError(f"Reference file not found: {path}. Fix: pass --reference with a text file of "
                                   "sentences, one per line.")
        lines = [line for line in read_lines(path) if line.strip()]
        if len(lines) < 2:
            raise TransferKitError(f"--reference {path} holds {len(lines)} sentence(s); at least 2 are needed. Fix: "
                                   "pass a file with one sentence per line.")
        return lines, f"{len(lines)} sentences from {path}"
    from ..predict import expand_inputs

    if not path.exists():
        raise TransferKitError(f"Reference images not found: {path}. Fix: pass --reference with a folder of images "
                               "(searched recursively) or an image file.")
    items = [item for _, item in expand_inputs([path])]
    if len(items) < 2:
        raise TransferKitError(f"--reference {path} holds {len(items)} image(s); at least 2 are needed. Fix: pass a "
                               "folder with more images.")
    return items, f"{len(items)} images from {path}"

"""Decoded-input cache vs decoding every epoch: data-pipeline throughput on real photo-sized JPEGs.

    python benchmarks/decoded_cache.py              # 400 JPEGs of 640x480, EfficientNet-Lite0 preprocessing

The images are crops of scikit-image's bundled photographs, written as JPEG files. Both pipelines do
the same work per epoch that training needs from the data (light augmentation: random resized crop,
flip, normalise to 224 px); the cached one decodes and resizes each file once (epoch 1 includes that).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import parser, report  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from transferkit.data import ImageDataset, build_transforms, load_training_data  # noqa: E402
from transferkit.data.decoded import DecodedDataset, decoded_images  # noqa: E402
from transferkit.models import BUILTIN_MODELS  # noqa: E402


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    from skimage import data as photos

    sources = [photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket()]
    rng = np.random.default_rng(0)
    for i in range(count):
        source = sources[i % len(sources)]
        h, w = source.shape[:2]
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = Image.fromarray(source[top:top + 3 * h // 4, left:left + 3 * w // 4]).resize(size)
        target = folder / f"class{i % len(sources)}" / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, quality=90)


def epochs_img_s(loader: DataLoader, epochs: int, setup_s: float = 0.0) -> list[float]:
    rates = []
    for epoch in range(epochs):
        start = time.perf_counter()
        seen = sum(len(labels) for _, labels in loader)
        rates.append(seen / (time.perf_counter() - start + (setup_s if epoch == 0 else 0.0)))
    return rates


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.epochs = 8, 2
    prep = BUILTIN_MODELS["efficientnet_lite0"].preprocessing
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp) / "photos", args.images, (640, 480))
        samples = load_training_data(Path(tmp) / "photos", val_fraction=0.01).train
        train_tf, _ = build_transforms(prep, "light")
        plain = epochs_img_s(DataLoader(ImageDataset(samples, train_tf), batch_size=32, shuffle=True,
                                        num_workers=args.workers), args.epochs)
        start = time.perf_counter()
        array = decoded_images(samples, prep, Path(tmp) / "cache", progress=False)
        decode_s = time.perf_counter() - start
        cached_tf, _ = build_transforms(prep, "light", decoded=True)
        cached = epochs_img_s(DataLoader(DecodedDataset(array, samples.labels, cached_tf), batch_size=32, shuffle=True,
                                         num_workers=args.workers), args.epochs, setup_s=decode_s)
    rows = [{"epoch": i + 1, "decode_every_epoch_img_s": a, "decoded_cache_img_s": b, "speedup": b / a}
            for i, (a, b) in enumerate(zip(plain, cached, strict=True))]
    total_plain = args.epochs * len(samples) / sum(len(samples) / r for r in plain)
    total_cached = args.epochs * len(samples) / sum(len(samples) / r for r in cached)
    rows.append({"epoch": f"all {args.epochs}", "decode_every_epoch_img_s": total_plain,
                 "decoded_cache_img_s": total_cached, "speedup": total_cached / total_plain})
    report("decoded_cache", rows, ["epoch", "decode_every_epoch_img_s", "decoded_cache_img_s", "speedup"], args.out,
           notes=f"{len(samples)} JPEGs 640x480, light augmentation to 224 px, {args.workers} workers; epoch 1 of "
                 "the cached pipeline includes decoding and resizing every file once")
    return rows


if __name__ == "__main__":
    main()

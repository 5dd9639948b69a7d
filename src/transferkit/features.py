"""Frozen-backbone feature cache: run the frozen backbone once, train the head on stored features.

While the backbone is frozen (``linear-probe``, the head stage of ``two-stage`` and ``progressive``),
every epoch would push the same images through the same network. Instead the pooled features are
computed once, stored as float16 ``.npy`` files (memory-mapped on reuse) and the head trains on them.

The cache key covers everything the features depend on — the model source and a hash of the
backbone's weights, the preprocessing and transform, the dataset (file names, sizes and mtimes, or the
bytes of in-memory images, and the labels) and the number of augmented views — so a changed dataset,
model or preprocessing never reuses a stale cache. Entries are written to a temporary folder and
renamed into place, so an interrupted write leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data.images import ImageDataset, ImageSamples
from .models.model import TransferModel

logger = logging.getLogger(__name__)

FORMAT = 1


@dataclass
class CachedFeatures:
    """Backbone features of a dataset: ``features[view, sample]`` (float16), ``labels[sample]``."""

    features: np.ndarray
    labels: np.ndarray
    key: str
    path: Path
    reused: bool

    @property
    def views(self) -> int:
        return self.features.shape[0]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over parameter and buffer names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(samples: ImageSamples) -> str:
    """Files by path, size and mtime; in-memory images by their bytes; plus the labels."""
    digest = hashlib.sha256()
    for item, label in zip(samples.items, samples.labels, strict=True):
        if isinstance(item, Path):
            stat = item.stat()
            digest.update(f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            array = np.ascontiguousarray(item)
            digest.update(f"{array.shape}|{array.dtype}".encode())
            digest.update(array.tobytes())
        digest.update(f"|{label};".encode())
    return digest.hexdigest()


def cache_key(model: TransferModel, samples: ImageSamples, transform: object, views: int, seed: int) -> str:
    parts = {
        "format": FORMAT,
        "model": [model.spec.kind, model.spec.name],
        "weights": weights_fingerprint(model.backbone),
        "preprocessing": model.preprocessing.to_dict(),
        "transform": repr(transform),
        "data": dataset_fingerprint(samples),
        "views": views,
        "seed": seed if views > 1 else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@torch.no_grad()
def extract_features(model: TransferModel, samples: ImageSamples, transform: object, *, views: int = 1,
                     seed: int = 0, batch_size: int = 64, device: torch.device | None = None,
                     workers: int = 0, progress: bool = True, label: str = "") -> np.ndarray:
    """Run the backbone (eval mode) over every image ``views`` times; returns (views, N, D) float16."""
    device = device or next(model.parameters()).device
    was_training = model.backbone.training
    model.backbone.eval()
    loader = DataLoader(ImageDataset(samples, transform), batch_size=batch_size, shuffle=False, num_workers=workers)
    out = np.empty((views, len(samples), model.head_config.num_features), dtype=np.float16)
    try:
        for view in range(views):
            torch.manual_seed(seed + 7919 * view)  # each augmented view is reproducible
            start = 0
            desc = f"caching {label} features" + (f" (view {view + 1}/{views})" if views > 1 else "")
            for images, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
                feats = model.forward_features(images.to(device)).float().cpu().numpy()
                out[view, start:start + len(feats)] = feats
                start += len(feats)
    finally:
        model.backbone.train(was_training)
    return out


def cached_features(model: TransferModel, samples: ImageSamples, transform: object, cache_dir: Path, *,
                    views: int = 1, seed: int = 0, batch_size: int = 64, device: torch.device | None = None,
                    workers: int = 0, progress: bool = True, label: str = "") -> CachedFeatures:
    """Load the features of ``samples`` from ``cache_dir`` or compute and store them."""
    key = cache_key(model, samples, transform, views, seed)
    folder = Path(cache_dir) / key
    labels = np.asarray(samples.labels, dtype=np.int64)
    if (folder / "meta.json").is_file():
        features = np.load(folder / "features.npy", mmap_mode="r")
        if features.shape[:2] == (views, len(samples)):
            logger.info("Feature cache hit (%s): %s", label, folder)
            return CachedFeatures(features, labels, key, folder, reused=True)
    features = extract_features(model, samples, transform, views=views, seed=seed, batch_size=batch_size,
                                device=device, workers=workers, progress=progress, label=label)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        np.save(tmp / "features.npy", features)
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "model": model.spec.spec, "n": len(samples),
                                                   "views": views, "dim": features.shape[-1], "label": label}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Feature cache written (%s, %d x %d x %d, float16): %s", label, *features.shape, folder)
    return CachedFeatures(features, labels, key, folder, reused=False)


class FeatureDataset(Dataset):
    """``(feature, label)`` pairs of one view at a time (set ``view`` before each epoch)."""

    def __init__(self, cached: CachedFeatures) -> None:
        self.cached = cached
        self.view = 0

    def __len__(self) -> int:
        return self.cached.features.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = np.asarray(self.cached.features[self.view % self.cached.views, index], dtype=np.float32)
        return torch.from_numpy(row), int(self.cached.labels[index])

    def arrays(self, view: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole view as float32 tensors (for the exact head fit)."""
        return (torch.from_numpy(np.asarray(self.cached.features[view], dtype=np.float32)),
                torch.from_numpy(self.cached.labels))


@dataclass
class HeadFeatures:
    """Cached train and validation features for the head-only phases of a run."""

    train: FeatureDataset
    val: FeatureDataset
    batch_size: int
    drop_last: bool

    def loaders(self) -> tuple[DataLoader, DataLoader]:
        return (DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=self.drop_last),
                DataLoader(self.val, batch_size=max(self.batch_size, 256), shuffle=False))

"""Frozen-backbone feature cache: run the frozen backbone once, train the head on stored features.

While the backbone is frozen (``linear-probe``, the head stage of ``two-stage`` and ``progressive``),
every epoch would push the same images through the same network. Instead the pooled features are
computed once, stored as float16 ``.npy`` files (memory-mapped on reuse) and the head trains on them.

The cache key covers everything the features depend on — the model source and a hash of the
backbone's weights, the preprocessing and transform, the tokenizer's contents (vocabulary, normaliser,
special tokens) for language models, the dataset (file names, sizes and mtimes, or the bytes of in-memory
images, and the labels), the number of views, the seed whenever the transform is random (an augmented
view of seed 1 is not seed 0's), and the versions of the libraries that compute them (torch,
torchvision, timm, Pillow, transformers, tokenizers) — so a changed dataset, model, preprocessing,
tokenizer, seed or library never reuses a stale cache. Entries are written to a temporary folder and
renamed into place (see :mod:`transferkit.cache`), so an interrupted write leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch.utils.data import BatchSampler, DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .cache import CacheUse, dataset_fingerprint, key_of, load_or_compute, weights_fingerprint
from .data.images import ImageDataset
from .data.samples import Samples
from .data.sampling import SeededShuffle
from .distributed import ShardedBatches, share_of
from .models.model import TransferModel
from .seeding import derive_seed

logger = logging.getLogger(__name__)

FORMAT = 3  # 3: augmented views seeded by derive_seed(seed, "view", v); full keys
# Libraries whose versions can change the features (kernels, resampling filters, tokenisation).
FEATURE_LIBRARIES = ("torch", "torchvision", "timm", "pillow", "transformers", "tokenizers")
# Transforms that give the same output every call; anything else (unknown ones included) counts as random.
DETERMINISTIC_TRANSFORMS = {"Compose", "Resize", "CenterCrop", "ToImage", "ToDtype", "Normalize", "PILToTensor",
                            "ToTensor", "ToPureTensor", "ConvertImageDtype", "Grayscale", "Pad"}
# Tokenizer settings that name files or hold per-call state rather than change what a text becomes.
_TOKENIZER_STATE = {"name_or_path", "is_local", "local_files_only", "_commit_hash", "cache_dir", "max_length",
                    "stride", "truncation_strategy", "pad_to_multiple_of"}


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


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`FEATURE_LIBRARIES` (``absent`` for one that is not installed)."""
    found = {}
    for name in FEATURE_LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def is_random_transform(transform: object) -> bool:
    """Whether ``transform`` can give different outputs for the same input (an augmentation).

    Compositions are searched; flips with ``p`` of 0 or 1 are deterministic; a transform not known to be
    deterministic counts as random, so its features are keyed on the seed (a cache miss, never a stale hit).
    """
    if transform is None:
        return False
    name = type(transform).__name__
    if name == "Compose":
        return any(is_random_transform(t) for t in transform.transforms)
    if name in ("RandomHorizontalFlip", "RandomVerticalFlip"):
        return getattr(transform, "p", 0.5) not in (0.0, 1.0)
    return name not in DETERMINISTIC_TRANSFORMS


def tokenizer_fingerprint(tokenizer: object) -> str | None:
    """SHA-256 of what a tokenizer does to text: its serialised pipeline (vocabulary, normaliser, pre-tokeniser,
    post-processor, added tokens) or, for a tokenizer without one, its vocabulary; plus its class and settings.
    Per-call truncation and padding state and file paths are left out, so using a tokenizer keeps its key."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
    else:
        pipeline = sorted(tokenizer.get_vocab().items())
    settings = {k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items()
                if k not in _TOKENIZER_STATE and not k.endswith("_file")}
    text = json.dumps([type(tokenizer).__name__, pipeline, settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(model: TransferModel, samples: Samples, transform: object, views: int, seed: int) -> str:
    """The key of the features of ``samples``: everything they depend on (see the module docstring)."""
    return key_of({
        "format": FORMAT,
        "model": [model.spec.kind, model.spec.name],
        "weights": weights_fingerprint(model.backbone),
        "preprocessing": model.preprocessing.to_dict(),
        "tokenizer": tokenizer_fingerprint(getattr(model, "tokenizer", None)),
        "transform": repr(transform),
        "data": dataset_fingerprint(samples),
        "views": views,
        "seed": seed if is_random_transform(transform) else None,
        "libraries": library_versions(),
    })


@torch.no_grad()
def extract_features(model: TransferModel, samples: Samples, transform: object, *, views: int = 1,
                     seed: int = 0, batch_size: int = 64, device: torch.device | None = None,
                     workers: int = 0, progress: bool = True, label: str = "") -> np.ndarray:
    """Run the backbone (eval mode) over every image ``views`` times; returns (views, N, D) float16."""
    device = device or next(model.parameters()).device
    was_training = model.backbone.training
    model.backbone.eval()
    if model.is_text:
        from .data.text import TextCollator, TextDataset

        loader = DataLoader(TextDataset(samples), batch_size=batch_size, shuffle=False,
                            collate_fn=TextCollator(model.tokenizer, model.preprocessing.max_length))
    else:
        loader = DataLoader(ImageDataset(samples, transform), batch_size=batch_size, shuffle=False,
                            num_workers=workers)
    out = np.empty((views, len(samples), model.head_config.num_features), dtype=np.float16)
    try:
        for view in range(views):
            torch.manual_seed(derive_seed(seed, "view", view))  # each augmented view is reproducible
            start = 0
            desc = f"caching {label} features" + (f" (view {view + 1}/{views})" if views > 1 else "")
            for images, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
                feats = model.forward_features(send_to_device(images, device)).float().cpu().numpy()
                out[view, start:start + len(feats)] = feats
                start += len(feats)
    finally:
        model.backbone.train(was_training)
    return out


def cached_features(model: TransferModel, samples: Samples, transform: object, cache_dir: Path, *,
                    views: int = 1, seed: int = 0, batch_size: int = 64, device: torch.device | None = None,
                    workers: int = 0, progress: bool = True, label: str = "",
                    use: CacheUse | None = None) -> CachedFeatures:
    """Load the features of ``samples`` from ``cache_dir`` or compute and store them (``use`` adds up the cost)."""
    key = cache_key(model, samples, transform, views, seed)
    labels = np.asarray(samples.labels, dtype=np.int64)
    features, reused = load_or_compute(
        cache_dir, key, (views, len(samples), model.head_config.num_features),
        lambda: extract_features(model, samples, transform, views=views, seed=seed, batch_size=batch_size,
                                 device=device, workers=workers, progress=progress, label=label),
        {"kind": "features", "format": FORMAT, "model": model.spec.spec, "label": label}, use)
    if reused:
        logger.info("Feature cache hit (%s): %s", label, Path(cache_dir) / key)
    else:
        logger.info("Feature cache written (%s, %d x %d x %d, float16): %s", label, *features.shape,
                    Path(cache_dir) / key)
    return CachedFeatures(features, labels, key, Path(cache_dir) / key, reused=reused)


class FeatureDataset(Dataset):
    """``(feature, label)`` pairs of one cached view."""

    def __init__(self, cached: CachedFeatures, view: int = 0) -> None:
        self.cached = cached
        self.view = view % cached.views

    def __len__(self) -> int:
        return self.cached.features.shape[1]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index = key[0] if isinstance(key, tuple) else key  # features are not augmented: the item seed is unused
        row = np.asarray(self.cached.features[self.view, index], dtype=np.float32)
        return torch.from_numpy(row), int(self.cached.labels[index])

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole view as float32 tensors (for the exact head fit)."""
        return (torch.from_numpy(np.asarray(self.cached.features[self.view], dtype=np.float32)),
                torch.from_numpy(self.cached.labels))


@dataclass(frozen=True)
class HeadFeatures:
    """Cached train and validation features for the head-only phases of a run. Epoch ``e`` trains on the
    cached view ``e mod views``. With several processes, process ``rank`` gets its part of every batch and its
    share of the validation features (see :mod:`transferkit.distributed`)."""

    train: CachedFeatures
    val: CachedFeatures
    batch_size: int
    drop_last: bool
    rank: int = 0
    processes: int = 1

    def train_loader(self, epoch: int) -> DataLoader:
        """The same order of examples as the image loader draws for this epoch (:class:`SeededShuffle`), each global
        batch sliced for this process."""
        dataset = FeatureDataset(self.train, epoch)
        batches = BatchSampler(SeededShuffle(len(dataset)), self.batch_size, drop_last=self.drop_last)
        return DataLoader(dataset, batch_sampler=ShardedBatches(batches, self.rank, self.processes),
                          generator=torch.Generator().manual_seed(0))

    def val_loader(self) -> DataLoader:
        share = share_of(len(FeatureDataset(self.val)), self.rank, self.processes)
        return DataLoader(Subset(FeatureDataset(self.val), share), batch_size=max(self.batch_size, 256), shuffle=False,
                          generator=torch.Generator().manual_seed(0))

    def arrays(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((x_train, y_train), (x_val, y_val)) of the first view, float32 (for the exact head fit)."""
        return FeatureDataset(self.train).arrays(), FeatureDataset(self.val).arrays()

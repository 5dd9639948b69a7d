"""What a run needs before its loop starts, resolved from a :class:`~transferkit.api.TrainConfig`: the data,
the model (with LoRA adapters when asked), the loaders (decoded-input cache for images, length-bucketed
batches for texts), the frozen-backbone feature cache, and the device settings."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .cache import CacheUse
from .config import TrainConfig
from .data.decoded import DecodedDataset, decoded_images
from .data.images import ImageDataset, build_transforms
from .data.sources import ImageData, load_training_data
from .data.text import LengthBucketSampler, TextCollator, TextDataset, is_text_data, load_text_training_data
from .errors import TransferKitError
from .features import FeatureDataset, HeadFeatures, cached_features
from .models.sources import load_model
from .models.text import apply_lora, is_text_model, load_text_model
from .plan import Plan
from .strategies import uses_pretrained_weights
from .training.checkpoint import load_checkpoint_state
from .training.loop import linear_head

logger = logging.getLogger("transferkit.api")

DECODED_CACHE_LIMIT = 16e9  # bytes of uint8 images on disk (memory-mapped)


def is_text(model: Any) -> bool:
    return getattr(model, "modality", "image") == "text"


def load_data(config: TrainConfig) -> ImageData:
    text_model, text_data = is_text_model(config.model), is_text_data(config.data)
    if text_model and not text_data:
        raise TransferKitError(f"{config.model} is a language model but --data {config.data} holds no texts. Fix: pass "
                               "a CSV/TSV/JSONL file with text and label columns, a folder of them, a folder of .txt "
                               "files per class, or builtin:bbc-news.")
    if text_data and not text_model:
        raise TransferKitError(f"--data {config.data} holds texts but {config.model} is a vision model. Fix: pass a "
                               "language model, e.g. --model minilm-l6 or --model hf:bert-base-uncased.")
    if text_model:
        return load_text_training_data(config.data, text_column=config.text_column, label_column=config.label_column,
                                       val_fraction=config.val_fraction, per_class=config.per_class, seed=config.seed)
    return load_training_data(config.data, val_fraction=config.val_fraction, per_class=config.per_class,
                              seed=config.seed, skip_bad_images=config.skip_bad_images)


def load_run_model(config: TrainConfig, num_classes: int, pretrained: bool | None = None) -> Any:
    pretrained = uses_pretrained_weights(config.strategy) if pretrained is None else pretrained
    if not is_text_model(config.model):
        if config.strategy == "lora":
            raise TransferKitError("The lora strategy is for language models (hf:..., minilm-l6). Fix: pick another "
                                   "--strategy for vision models.")
        return load_model(config.model, num_classes, weights=config.weights, pretrained=pretrained,
                          dropout=config.dropout, hidden=config.hidden, image_size=config.image_size)
    model = load_text_model(config.model, num_classes, pretrained=pretrained, dropout=config.dropout,
                            hidden=config.hidden, pooling=config.pooling, max_length=config.max_length,
                            trust_remote_code=config.trust_remote_code)
    if config.strategy == "lora":
        targets = [t.strip() for t in config.lora_targets.split(",")] if config.lora_targets else None
        apply_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, targets=targets)
    return model


def data_and_model(config: TrainConfig) -> tuple[ImageData, Any]:
    data = load_data(config)
    return data, load_run_model(config, len(data.classes))


def text_loaders(data: ImageData, model: Any, config: TrainConfig) -> tuple[DataLoader, DataLoader]:
    """Length-bucketed, dynamically padded batches of tokenised texts."""
    collate = TextCollator(model.tokenizer, model.preprocessing.max_length)
    lengths = [len(t) for t in data.train.items]
    train = DataLoader(TextDataset(data.train), collate_fn=collate,
                       batch_sampler=LengthBucketSampler(lengths, config.batch_size, shuffle=True,
                                                         drop_last=len(data.train) > config.batch_size))
    val = DataLoader(TextDataset(data.val), collate_fn=collate,
                     batch_sampler=LengthBucketSampler([len(t) for t in data.val.items], max(config.batch_size, 32),
                                                       shuffle=False))
    return train, val


def head_features(model: Any, data: ImageData, config: TrainConfig, run_plan: Plan, run_dir: Path, resuming: bool,
                   progress: bool, use: CacheUse | None = None) -> HeadFeatures | None:
    """Cached backbone features for the leading head-only phases, or ``None`` (with the reason logged)."""
    leading = leading_head_phases(run_plan)
    if config.feature_cache == "off" or leading == 0:
        logger.info("Feature cache: off (%s)", "--feature-cache off" if config.feature_cache == "off" else
                    "no phase trains the head alone on a frozen backbone")
        return None
    if resuming and checkpoint_state(run_dir)["phase_index"] >= leading:
        return None
    if is_text(model):
        train_tf = eval_tf = None  # texts are not augmented: the collator tokenises them
        views = 0
    else:
        train_tf, eval_tf = build_transforms(model.preprocessing, config.augment)
        views = config.cache_views
    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "feature-cache"
    device = torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    model.to(device)
    common = {"seed": config.seed, "batch_size": max(64, config.batch_size), "device": device, "progress": progress,
              "use": use,
              "workers": config.workers if config.workers is not None else default_workers()}
    train = cached_features(model, data.train, train_tf if views else eval_tf, cache_dir, views=max(1, views),
                            label="train", **common)
    val = cached_features(model, data.val, eval_tf, cache_dir, label="val", **common)
    model.to("cpu")
    what = (f"{views} augmented view(s) per image ('{config.augment}' augmentation)" if views else
            "un-augmented features (--augment does not apply to head-only phases; --cache-views K caches K "
            "augmented views)")
    logger.info("Feature cache: on — the frozen backbone ran once (%s, %s); the first %d phase(s) train the head on "
                "%s. %s", "reused" if train.reused else "computed", cache_dir, leading, what,
                "--feature-cache off turns it off.")
    return HeadFeatures(FeatureDataset(train), FeatureDataset(val), config.batch_size,
                        drop_last=len(data.train) > config.batch_size)


def leading_head_phases(run_plan: Plan) -> int:
    """How many phases at the start train the head alone (the backbone is still the pre-trained one)."""
    head = run_plan.groups[-1][0]
    count = 0
    while count < len(run_plan.phases) and set(run_plan.phases[count].trainable) == {head}:
        count += 1
    return count


def use_channels_last(model: Any, config: TrainConfig) -> bool:
    if config.channels_last != "auto":
        return config.channels_last == "on"
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return has_conv and torch.cuda.is_available() and not config.cpu


def resolve_head_fit(model: Any, config: TrainConfig, features: HeadFeatures | None) -> str:
    """``auto``: the exact L-BFGS fit when the head is linear and trains on un-augmented cached features."""
    if config.head_fit != "auto":
        if config.head_fit == "lbfgs" and (features is None or linear_head(model) is None):
            logger.warning("--head-fit lbfgs needs a linear head (--hidden 0) and the feature cache; using SGD.")
        return config.head_fit
    return "lbfgs" if features is not None and config.cache_views == 0 and linear_head(model) is not None else "sgd"


def image_loaders(data: ImageData, model: Any, config: TrainConfig, run_dir: Path, on_images: bool,
                  progress: bool, use: CacheUse | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders, fed from the decoded-input cache when images are read every epoch."""
    size = model.preprocessing.resize_size
    footprint = (len(data.train) + len(data.val)) * 3 * size * size
    decoded = config.decoded_cache == "auto" and on_images and footprint <= DECODED_CACHE_LIMIT
    if config.decoded_cache == "auto" and on_images and not decoded:
        logger.info("Decoded-input cache: off (%.1f GB would exceed the %.0f GB limit); images are decoded every "
                    "epoch", footprint / 1e9, DECODED_CACHE_LIMIT / 1e9)
    train_tf, eval_tf = build_transforms(model.preprocessing, config.augment, decoded=decoded)
    if decoded:
        cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "feature-cache"
        train_set = DecodedDataset(decoded_images(data.train, model.preprocessing, cache_dir, progress, "train", use),
                                   data.train.labels, train_tf)
        val_set = DecodedDataset(decoded_images(data.val, model.preprocessing, cache_dir, progress, "val", use),
                                 data.val.labels, eval_tf)
    else:
        train_set, val_set = ImageDataset(data.train, train_tf), ImageDataset(data.val, eval_tf)
    workers = config.workers if config.workers is not None else default_workers()
    common = {"batch_size": config.batch_size, "num_workers": workers, "pin_memory": torch.cuda.is_available(),
              "persistent_workers": workers > 0}
    train = DataLoader(train_set, shuffle=True, drop_last=len(data.train) > config.batch_size, **common)
    val = DataLoader(val_set, shuffle=False, **common)
    return train, val


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(8, cpus - 1)


def class_weights(data: ImageData, config: TrainConfig) -> list[float] | None:
    if config.class_weights != "auto":
        return None
    counts = np.array(list(data.train.class_counts().values()), dtype=np.float64)
    return (counts.sum() / (len(counts) * counts)).tolist()


def resolve_mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if config.cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def checkpoint_state(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint_state(run_dir)["train"]

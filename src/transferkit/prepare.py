"""What a run needs before its loop starts, from a :class:`~transferkit.options.TrainConfig` and its
:class:`~transferkit.plan.Plan`: the data, the model (with LoRA adapters when asked), the loaders (decoded-input
cache for images, length-bucketed batches for texts), the frozen-backbone feature cache when the plan runs
phases on it, and the device settings. Loaders are made for this process of the run's
:class:`~transferkit.distributed.World`: its part of every training batch, its share of the validation set. A dense
task (segmentation) supplies its own data, model and datasets (:class:`transferkit.tasks.base.Task`); the rest is
shared."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Subset

from .cache import CacheUse
from .data.decoded import DecodedDataset, DecodedImages, decoded_images, estimated_bytes
from .data.device import DeviceAugment, DeviceCrops, device_augment_choice
from .data.images import ImageDataset, build_transforms
from .data.samples import SplitData
from .data.sampling import SeededShuffle
from .data.sources import load_training_data
from .data.text import (
    LengthBucketSampler,
    TextCollator,
    TextDataset,
    header_columns,
    is_text_data,
    load_text_training_data,
)
from .distributed import World
from .errors import TransferKitError
from .features import HeadFeatures, PrefixActivations, cached_activations, cached_features
from .models.layout import to_layout, uses_channels_last
from .models.model import TransferModel
from .models.sources import load_model
from .models.text import apply_lora, is_text_model, load_text_model
from .options import TrainConfig
from .plan import Plan
from .seeding import derive_seed
from .strategies import uses_pretrained_weights
from .tasks import get_task
from .training.loop import FitConfig

if TYPE_CHECKING:
    from .adaptation.dann import DomainAdaptation
    from .data.target import TargetData

logger = logging.getLogger("transferkit.api")

DECODED_CACHE_LIMIT = 16e9  # bytes of uint8 images on disk (memory-mapped)


def load_data(config: TrainConfig) -> SplitData:
    """The run's data: images or texts, as the model's modality needs; a dense task's own format."""
    task = get_task(config.task)
    if task.dense:
        return task.load_data(config)
    text_model, text_data = is_text_model(config.model), is_text_data(config.data)
    if text_model and not text_data:
        raise TransferKitError(f"{config.model} is a language model but --data {config.data} holds no texts. Fix: pass "
                               "a CSV/TSV/JSONL file with text and label columns, a folder of them, a folder of .txt "
                               "files per class, or builtin:bbc-news.")
    if text_data and not text_model and not _manifest_without_text(Path(config.data)):
        raise TransferKitError(f"--data {config.data} holds texts but {config.model} is a vision model. Fix: pass a "
                               "language model, e.g. --model minilm-l6 or --model hf:bert-base-uncased.")
    shaping = {"val_fraction": config.val_fraction, "per_class": config.per_class, "seed": config.seed}
    if text_model:
        return load_text_training_data(config.data, text_column=config.text_column, label_column=config.label_column,
                                       **shaping)
    return load_training_data(config.data, skip_bad_images=config.skip_bad_images, **shaping)


def _manifest_without_text(path: Path) -> bool:
    """A CSV/TSV with no ``text`` column, given to a vision model: read as an image manifest (whose reader names the
    columns it needs), not called text."""
    return path.is_file() and path.suffix.lower() in (".csv", ".tsv") and "text" not in header_columns(path)


def load_run_model(config: TrainConfig, num_classes: int, pretrained: bool | None = None) -> TransferModel:
    """The model with a new head for ``num_classes`` classes (LoRA adapters applied for ``lora``; a dense task's
    head, e.g. a segmentation decoder, on the backbone's feature pyramid)."""
    pretrained = uses_pretrained_weights(config.strategy) if pretrained is None else pretrained
    task = get_task(config.task)
    if task.dense:
        return _in_layout(task.build_model(config, num_classes, pretrained), config)
    if not is_text_model(config.model):
        return _in_layout(load_model(config.model, num_classes, weights=config.weights, pretrained=pretrained,
                                     dropout=config.dropout, hidden=config.hidden, image_size=config.image_size),
                          config)
    model = load_text_model(config.model, num_classes, pretrained=pretrained, dropout=config.dropout,
                            hidden=config.hidden, pooling=config.pooling, max_length=config.max_length,
                            trust_remote_code=config.trust_remote_code)
    if config.strategy == "lora":
        targets = [t.strip() for t in config.lora_targets.split(",")] if config.lora_targets else None
        apply_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, targets=targets)
    return model


def loaders(data: SplitData, model: TransferModel, config: TrainConfig, plan: Plan, start_phase: int,
            cache_dir: Path, progress: bool, use: CacheUse | None = None,
            world: World | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of the run's modality (a dense task's datasets, with joint augmentation),
    for this process of ``world``."""
    world = world or World()
    if model.is_text:
        return text_loaders(data, model, config, world)
    task = get_task(config.task)
    if task.dense:
        return _loaders(*task.datasets(data, model, config), config, world, task.collate)
    return image_loaders(data, model, config, cache_dir, plan.needs_images(start_phase), progress, use, world,
                         on_activations=plan.needs_activations(start_phase))


def text_loaders(data: SplitData, model: TransferModel, config: TrainConfig,
                 world: World | None = None) -> tuple[DataLoader, DataLoader]:
    """Length-bucketed, dynamically padded batches of tokenised texts. Several processes draw the same buckets and
    each takes its part of every batch; each validates on its own share of the texts, bucketed within it."""
    world = world or World()
    collate = TextCollator(model.tokenizer, model.preprocessing.max_length)
    lengths = [len(t) for t in data.train.items]
    train = DataLoader(TextDataset(data.train), collate_fn=collate,
                       batch_sampler=world.batches(LengthBucketSampler(lengths, config.batch_size, shuffle=True,
                                                                       drop_last=len(data.train) > config.batch_size)))
    share = world.share(len(data.val))
    val = DataLoader(Subset(TextDataset(data.val), share), collate_fn=collate,
                     batch_sampler=LengthBucketSampler([len(data.val.items[i]) for i in share],
                                                       max(config.batch_size, 32), shuffle=False))
    return train, val


def image_loaders(data: SplitData, model: TransferModel, config: TrainConfig, cache_dir: Path, on_images: bool,
                  progress: bool, use: CacheUse | None = None, world: World | None = None, *,
                  on_activations: bool = False) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders, fed from the decoded-input cache when images are read every epoch; with
    on-device augmentation (:mod:`transferkit.data.device`) the training loader yields each example's crop
    parameters, which :func:`batch_transform` turns into images on the device."""
    world = world or World()
    wanted = config.decoded_cache == "auto" and on_images
    footprint = (estimated_bytes(data.train, model.preprocessing) + estimated_bytes(data.val, model.preprocessing)
                 if wanted else 0)
    decoded = wanted and footprint <= DECODED_CACHE_LIMIT
    if wanted and not decoded:
        logger.info("Decoded-input cache: off (%.1f GB would exceed the %.0f GB limit); images are decoded every "
                    "epoch", footprint / 1e9, DECODED_CACHE_LIMIT / 1e9)
    train_tf, eval_tf = build_transforms(model.preprocessing, config.augment, decoded=decoded)
    if decoded:
        train_images = decoded_images(data.train, model.preprocessing, cache_dir, progress, "train", use)
        if _on_device(config, model, train_images, on_activations):
            train_set = DeviceCrops(train_images, data.train.labels, model.preprocessing, config.augment)
        else:
            train_set = DecodedDataset(train_images, data.train.labels, train_tf)
        val_set = DecodedDataset(decoded_images(data.val, model.preprocessing, cache_dir, progress, "val", use),
                                 data.val.labels, eval_tf)
    else:
        train_set, val_set = ImageDataset(data.train, train_tf), ImageDataset(data.val, eval_tf)
    return _loaders(train_set, val_set, config, world)


def _on_device(config: TrainConfig, model: TransferModel, images: DecodedImages, on_activations: bool) -> bool:
    """``--device-augment``, resolved with the decoded images at hand: ``auto`` also needs them to fit in half the
    GPU's free memory."""
    cuda = torch.cuda.is_available() and not config.cpu
    on, why = device_augment_choice(config.device_augment, cuda=cuda, decoded=True, augment=config.augment,
                                    interpolation=model.preprocessing.interpolation, on_activations=on_activations)
    if on and config.device_augment == "auto" and images.nbytes > torch.cuda.mem_get_info()[0] / 2:
        on, why = False, f"off ({images.nbytes / 1e9:.1f} GB of decoded images exceed half the GPU's free memory)"
    logger.info("On-device augmentation: %s", why)
    return on


def batch_transform(train_loader: DataLoader) -> DeviceAugment | None:
    """What turns the training loader's batches into the model's inputs on the device (on-device augmentation), or
    ``None`` when the loader yields the inputs themselves."""
    dataset = train_loader.dataset
    return DeviceAugment(dataset.images, dataset.preprocessing) if isinstance(dataset, DeviceCrops) else None


def _loaders(train_set: Dataset, val_set: Dataset, config: TrainConfig, world: World,
             collate: Callable | None = None) -> tuple[DataLoader, DataLoader]:
    """A training loader of this process's part of every seeded-shuffle batch (each example augmented under its own
    seed: the dataset must call :func:`~transferkit.data.sampling.with_item_seed`) and one over its share of the
    validation set."""
    workers = workers_for(config)
    common = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0,
              "collate_fn": collate}
    # Every example's augmentation runs under its own seed (SeededShuffle), and the loaders' own draws (worker base
    # seeds) come from private generators, so the global random stream that dropout and the shuffle use depends
    # neither on the number of workers nor on an interruption.
    batches = BatchSampler(SeededShuffle(len(train_set)), config.batch_size,
                           drop_last=len(train_set) > config.batch_size)
    train = DataLoader(train_set, batch_sampler=world.batches(batches), worker_init_fn=world.worker_init_fn(),
                       generator=torch.Generator().manual_seed(0), **common)
    val = DataLoader(Subset(val_set, world.share(len(val_set))), batch_size=config.batch_size, shuffle=False,
                     generator=torch.Generator().manual_seed(0), **common)
    return train, val


def head_features(model: TransferModel, data: SplitData, config: TrainConfig, plan: Plan, start_phase: int,
                  cache_dir: Path, progress: bool, use: CacheUse | None = None,
                  world: World | None = None) -> HeadFeatures | None:
    """The cached backbone features the plan's phases run on (from ``start_phase``), or ``None`` (with the reason
    logged). Computed on this process's device; with several processes, call it through
    ``World.first_on_each_file_system`` so that one process computes and the others read."""
    world = world or World(device=torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu"))
    if not plan.needs_features(start_phase):
        if not plan.needs_features():
            logger.info("Feature cache: off (%s)", "--feature-cache off" if config.feature_cache == "off" else
                        "no phase trains the head alone on a frozen backbone" if get_task(config.task).caches_features
                        else f"not used for {config.task}")
        return None
    if model.is_text:
        train_tf = eval_tf = None  # texts are not augmented: the collator tokenises them
        views = 0
    else:
        train_tf, eval_tf = build_transforms(model.preprocessing, config.augment)
        views = config.cache_views
    device = world.device
    model.to(device)
    common = {"seed": config.seed, "batch_size": max(64, config.batch_size), "device": device, "progress": progress,
              "use": use, "workers": workers_for(config)}
    train = cached_features(model, data.train, train_tf if views else eval_tf, cache_dir, views=max(1, views),
                            label="train", **common)
    val = cached_features(model, data.val, eval_tf, cache_dir, label="val", **common)
    model.to("cpu")
    what = (f"{views} augmented view(s) per image ('{config.augment}' augmentation)" if views else
            "un-augmented features (--augment does not apply to head-only phases; --cache-views K caches K "
            "augmented views)")
    leading = sum(p.runs_on in ("features", "exact-fit") for p in plan.phases)
    logger.info("Feature cache: on — the frozen backbone ran once (%s, %s); the first %d phase(s) train the head on "
                "%s. %s", "reused" if train.reused else "computed", cache_dir, leading, what,
                "--feature-cache off turns it off.")
    return HeadFeatures(train, val, config.batch_size, drop_last=len(data.train) > config.batch_size,
                        rank=world.rank, processes=world.size)


def prefix_activations(model: TransferModel, data: SplitData, config: TrainConfig, plan: Plan, start_phase: int,
                       train_loader: DataLoader, val_loader: DataLoader, cache_dir: Path, progress: bool,
                       use: CacheUse | None = None, world: World | None = None) -> dict[int, PrefixActivations]:
    """The frozen-prefix caches the plan's phases from ``start_phase`` train on (``Phase.runs_on == "activations"``),
    by cut: each frozen prefix runs once over the datasets of ``train_loader`` and ``val_loader`` (the images' own
    loaders: the same input tensors as the uncached path), from the current weights — the plan made sure no earlier
    phase trains them. Computed on this process's device; call it through ``World.first_on_each_file_system``."""
    from .models.prefix import Prefix, chain_links

    world = world or World(device=torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu"))
    wanted = sorted({(p.prefix, p.views) for p in plan.phases[start_phase:] if p.runs_on == "activations"})
    if not wanted:
        return {}
    device = world.device
    model.to(device)
    chain = chain_links(model.backbone)
    val_set = val_loader.dataset.dataset if isinstance(val_loader.dataset, Subset) else val_loader.dataset
    found = {}
    for cut, views in wanted:
        prefix = Prefix(chain, cut)
        common = {"seed": config.seed, "batch_size": max(64, config.batch_size), "device": device,
                  "progress": progress, "use": use}
        train = cached_activations(model, prefix, cut, train_loader.dataset, data.train, cache_dir, views=views,
                                   label="train", **common)
        val = cached_activations(model, prefix, cut, val_set, data.val, cache_dir, label="val", **common)
        found[cut] = PrefixActivations(HeadFeatures(train, val, config.batch_size,
                                                    drop_last=len(data.train) > config.batch_size, rank=world.rank,
                                                    processes=world.size), cut)
    model.to("cpu")
    return found


def fit_config(model: TransferModel, data: SplitData, config: TrainConfig, plan: Plan, progress: bool) -> FitConfig:
    """The loop's settings: optimisation from the configuration, devices resolved for this machine."""
    return FitConfig(seed=config.seed, weight_decay=config.weight_decay, warmup=config.warmup,
                     label_smoothing=config.label_smoothing, class_weights=class_weights(data, config),
                     patience=config.patience or None,
                     patience_fraction=config.patience_fraction, patience_after_lr=config.patience_after_lr,
                     keep=config.keep,
                     bn=plan.bn, l2_sp=config.l2_sp, groups=config.groups,
                     mixed_precision=resolve_mixed_precision(config), channels_last=use_channels_last(model, config),
                     compile=config.compile, cpu=config.cpu, progress=progress, schedule=config.schedule,
                     ema=config.ema, tta=config.tta == "flip")


def use_channels_last(model: TransferModel, config: TrainConfig) -> bool:
    """``--channels-last`` for this run (:func:`transferkit.models.layout.uses_channels_last`)."""
    return uses_channels_last(model, config.channels_last, on_gpu=_on_gpu(config))


def _in_layout(model: TransferModel, config: TrainConfig) -> TransferModel:
    """The model in the memory format it trains in, from the start: the feature and prefix caches, ``--strategy
    auto``'s measurements and ``advise`` then run as fast as training."""
    return to_layout(model, config.channels_last, on_gpu=_on_gpu(config))


def _on_gpu(config: TrainConfig) -> bool:
    return torch.cuda.is_available() and not config.cpu


def workers_for(config: TrainConfig) -> int:
    return config.workers if config.workers is not None else default_workers()


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(8, cpus - 1)


def class_weights(data: SplitData, config: TrainConfig) -> list[float] | None:
    if config.class_weights != "auto":
        return None
    counts = np.array(list(data.train.class_counts().values()), dtype=np.float64)  # segmentation: pixels
    return (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()


def resolve_mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if config.cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# --- domain adaptation -----------------------------------------------------------------------------


def domain_adaptation(model: TransferModel, target: TargetData, config: TrainConfig, plan: Plan,
                      steps_per_epoch: int, num_classes: int) -> DomainAdaptation:
    """The run's adaptation (``--adapt``): the discriminator on the features the head's last layer reads, the
    augmented target images, and the warm-up over the planned steps of the phases on images."""
    from .adaptation.dann import DomainAdaptation, DomainAdversary, UnlabelledImages, split_head

    width = split_head(model.head)[1].in_features
    torch.manual_seed(derive_seed(config.seed, "domain-adversary"))
    adversary = DomainAdversary(config.adapt, width, num_classes, seed=derive_seed(config.seed, "cdan-map"))
    train_tf, _ = build_transforms(model.preprocessing, config.augment)
    epochs = sum(p.epochs for p in plan.phases if p.runs_on == "images")
    return DomainAdaptation(config.adapt, adversary, UnlabelledImages(target.items, train_tf), config.batch_size,
                            epochs * steps_per_epoch, seed=config.seed, workers=workers_for(config))


def eval_loader(samples: Any, model: TransferModel, config: TrainConfig, world: World | None = None) -> DataLoader:
    """This process's share of labelled images through the evaluation transform (``--target-val``)."""
    world = world or World()
    dataset = ImageDataset(samples, build_transforms(model.preprocessing, "none")[1])
    return DataLoader(Subset(dataset, world.share(len(dataset))), batch_size=config.batch_size, shuffle=False,
                      num_workers=workers_for(config))

"""``transferkit.train``: data + model source + strategy in, a finished run folder out.

Order of work: validate everything (config, data, model) before the run folder exists, then train,
then write the final weights and ``transferkit.json`` last. A failure before the first checkpoint
removes the new folder; a failure after it leaves a resumable run (``--resume``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from .data.checks import check_normalization
from .data.sources import ImageData
from .data.splits import take_per_class
from .errors import TransferKitError, bad_value
from .evaluate import compute_metrics
from .models.text import is_text_model
from .plan import Plan
from .predict import TrainedModel
from .prepare import (
    checkpoint_state,
    class_weights,
    data_and_model,
    head_features,
    image_loaders,
    is_text,
    leading_head_phases,
    load_data,
    load_run_model,
    resolve_head_fit,
    resolve_mixed_precision,
    text_loaders,
    use_channels_last,
)
from .runfolder import (
    WEIGHTS,
    append_metrics,
    check_new_run_dir,
    create_run_dir,
    finish_run,
    has_checkpoint,
    is_finished,
    read_config,
    write_metrics,
)
from .strategies import STRATEGIES, build_phases, resolve_bn_policy, uses_pretrained_weights
from .training.callbacks import Callback
from .training.checkpoint import save_weights
from .training.loop import FitConfig, fit, linear_head

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
HEAD_FITS = ("auto", "lbfgs", "sgd")
TEXT_LR, TEXT_SCRATCH_LR, TEXT_LORA_LR = 3e-5, 1e-4, 5e-4  # BERT recipe: 2e-5..5e-5; LoRA adapters learn faster


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run folder (what ``--resume`` reads).

    See ``transferkit train --help`` for each field; defaults follow the usual rules of thumb.
    """

    data: str
    model: str = "efficientnet_lite0"
    strategy: str = "two-stage"
    out: str | None = None
    weights: str | None = None
    epochs: int | None = None
    head_epochs: int = 3
    lr: float | None = None
    head_lr: float | None = None
    lrs: str | None = None
    lr_decay: float | None = None
    unfreeze_every: int = 1
    max_unfrozen: int | None = None
    groups: int | None = None
    l2_sp: float = 0.0
    feature_cache: str = "auto"
    cache_dir: str | None = None
    cache_views: int = 0
    head_fit: str = "auto"
    decoded_cache: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    batch_size: int = 32
    image_size: int | None = None
    augment: str = "light"
    dropout: float | None = None
    hidden: int = 0
    text_column: str = "text"
    label_column: str = "label"
    max_length: int | None = None
    pooling: str | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str | None = None
    trust_remote_code: bool = False
    val_fraction: float = 0.2
    per_class: int | None = None
    test_per_class: int | None = None
    seed: int = 0
    patience: int = 3
    bn: str = "auto"
    label_smoothing: float = 0.0
    class_weights: str = "none"
    weight_decay: float = 0.01
    warmup: float = 0.1
    workers: int | None = None
    skip_bad_images: bool = False
    mixed_precision: str = "auto"
    cpu: bool = False
    overwrite: bool = False
    evaluate_test: bool = True

    def resolve_defaults(self) -> None:
        """Defaults that depend on the modality: images 10 epochs, head dropout 0.2; text (the BERT recipe)
        4 epochs, dropout 0.1."""
        text = is_text_model(self.model)
        if self.epochs is None:
            self.epochs = 4 if text else 10
        if self.dropout is None:
            self.dropout = 0.1 if text else 0.2

    def validate(self) -> None:
        self.resolve_defaults()
        if self.strategy not in STRATEGIES:
            raise bad_value("strategy", self.strategy, f"one of {', '.join(STRATEGIES)}")
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        _positive("head_epochs", self.head_epochs)
        if self.per_class is not None:
            _positive("per_class", self.per_class)
        if self.test_per_class is not None:
            _positive("test_per_class", self.test_per_class)
        if not 0.0 < self.val_fraction < 1.0:
            raise bad_value("val_fraction", self.val_fraction, "a float in (0, 1)", "Pass e.g. --val-fraction 0.2.")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise bad_value("patience", self.patience, "a non-negative integer (0 turns early stopping off)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad_value("label_smoothing", self.label_smoothing, "a float in [0, 1)")
        if self.class_weights not in ("none", "auto"):
            raise bad_value("class_weights", self.class_weights, "'none' or 'auto'")
        if self.weight_decay < 0:
            raise bad_value("weight_decay", self.weight_decay, "a non-negative float")
        resolve_bn_policy(self.bn, self.strategy, self.batch_size)
        if isinstance(self.lrs, (list, tuple)):
            self.lrs = ",".join(str(v) for v in self.lrs)
        _parse_lrs(self.lrs)
        if self.feature_cache not in ("auto", "off"):
            raise bad_value("feature_cache", self.feature_cache, "'auto' or 'off'")
        if self.decoded_cache not in ("auto", "off"):
            raise bad_value("decoded_cache", self.decoded_cache, "'auto' or 'off'")
        if self.channels_last not in ("auto", "on", "off"):
            raise bad_value("channels_last", self.channels_last, "'auto', 'on' or 'off'")
        if self.head_fit not in HEAD_FITS:
            raise bad_value("head_fit", self.head_fit, f"one of {', '.join(HEAD_FITS)}")
        if not isinstance(self.cache_views, int) or self.cache_views < 0:
            raise bad_value("cache_views", self.cache_views, "0 (un-augmented features) or a positive number of "
                            "augmented views", "Pass e.g. --cache-views 5.")
        if self.l2_sp < 0:
            raise bad_value("l2_sp", self.l2_sp, "a non-negative float (0: off)", "Pass e.g. --l2-sp 0.01.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad_value("mixed_precision", self.mixed_precision, f"one of {', '.join(MIXED_PRECISION)}")
        if self.workers is not None and self.workers < 0:
            raise bad_value("workers", self.workers, "a non-negative integer")


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is, how it went, and the trained model.

    ``seconds`` is the wall time of training: loading data and model, building the caches, and the
    epochs (not the final test-set evaluation).
    """

    run_dir: Path
    best_epoch: int
    val_accuracy: float
    seconds: float
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    model: TrainedModel
    data_description: str = ""


def train(data: str | Path | None = None, *, resume: str | Path | None = None, callbacks: Sequence[Callback] = (),
          progress: bool = True, **options: Any) -> TrainResult:
    """Fine-tune a pre-trained model on ``data`` and write a run folder.

    Args:
        data: ``builtin:NAME``, an image-folder tree, a folder of class folders, or a CSV manifest.
        resume: an interrupted run folder to continue (its saved configuration is used).
        callbacks: observers of the training loop.
        progress: show progress bars.
        **options: any :class:`TrainConfig` field, e.g. ``model="efficientnet_lite0"``, ``strategy="two-stage"``,
            ``epochs=10``, ``out="runs/pets"``.

    Returns:
        A :class:`TrainResult`; ``result.model.predict([...])`` runs inference.
    """
    _console_logging()
    config, run_dir = _resolve_config(data, resume, options)
    started = time.perf_counter()
    set_seed(config.seed)
    image_data, model = data_and_model(config)
    run_plan = _plan(model, config)
    unit = "texts" if is_text(model) else "images"
    logger.info("Data: %s — %d train, %d val %s, %d classes", image_data.description, len(image_data.train),
                len(image_data.val), unit, len(image_data.classes))
    logger.info("%s", run_plan)

    if resume is None:
        create_run_dir(run_dir, asdict(config), config.overwrite)
    else:
        write_metrics(run_dir, _checkpoint_history(run_dir))
    try:
        features = head_features(model, image_data, config, run_plan, run_dir, resume is not None, progress)
        on_images = features is None or leading_head_phases(run_plan) < len(run_plan.phases)
        if is_text(model):
            train_loader, val_loader = text_loaders(image_data, model, config)
        else:
            train_loader, val_loader = image_loaders(image_data, model, config, run_dir, on_images, progress)
            for warning in check_normalization(val_loader, model.preprocessing):
                logger.warning("Normalisation check: %s", warning)
        fit_config = FitConfig(seed=config.seed, weight_decay=config.weight_decay, warmup=config.warmup,
                               label_smoothing=config.label_smoothing,
                               class_weights=class_weights(image_data, config), patience=config.patience or None,
                               bn=run_plan.bn, l2_sp=config.l2_sp, groups=config.groups,
                               head_fit=resolve_head_fit(model, config, features),
                               mixed_precision=resolve_mixed_precision(config),
                               channels_last=use_channels_last(model, config), compile=config.compile, cpu=config.cpu,
                               progress=progress)
        setup_seconds = time.perf_counter() - started  # data, model, feature and decoded caches
        result = fit(model, train_loader, val_loader, run_plan.phases, fit_config, run_dir=run_dir,
                     resume=resume is not None, callbacks=[_MetricsWriter(run_dir), *callbacks], features=features)
    except BaseException:
        if resume is None and not has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    if is_text(model):
        model.save_parts(run_dir)
    if getattr(model, "has_lora", False):
        save_weights(run_dir / "head.safetensors", model.head.state_dict())  # the adapter is in adapter/
    else:
        save_weights(run_dir / WEIGHTS, model.state_dict())
    trained = TrainedModel(model, image_data.classes)
    test = _test_metrics(trained, image_data, config) if config.evaluate_test else None
    info = {
        "status": "complete", "modality": "text" if is_text(model) else "image", "model": asdict(model.spec),
        "head": model.head_config.to_dict(),
        "preprocessing": model.preprocessing.to_dict(), "classes": image_data.classes,
        "strategy": config.strategy, "bn_policy": run_plan.bn, "phases": [p.to_dict() for p in run_plan.phases],
        "layer_groups": [{"name": name, "params": count} for name, count in run_plan.groups],
        "data": {"description": image_data.description, "train": len(image_data.train), "val": len(image_data.val),
                 "skipped_images": len(image_data.skipped), "class_counts": image_data.train.class_counts()},
        "config": asdict(config),
        "metrics": {"best_epoch": result.best_epoch, "val_accuracy": result.best_val_accuracy,
                    "epochs_run": len(result.history), "seconds": round(setup_seconds + result.seconds, 2),
                    "setup_seconds": round(setup_seconds, 2), "fit_seconds": round(result.seconds, 2), "test": test},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    finish_run(run_dir, info)
    logger.info("Done: best epoch %d of %d, val accuracy %.4f%s, %.1f s — %s", result.best_epoch, len(result.history),
                result.best_val_accuracy, f", test accuracy {test['accuracy']:.4f}" if test else "",
                setup_seconds + result.seconds,
                run_dir)
    trained = TrainedModel(model, image_data.classes, info, run_dir)
    return TrainResult(run_dir, result.best_epoch, result.best_val_accuracy, setup_seconds + result.seconds,
                       result.history, test,
                       trained, image_data.description)


def plan(data: str | Path | None = None, *, num_classes: int | None = None, **options: Any) -> Plan:
    """What :func:`train` would do with these options, without training or downloading anything.

    Args:
        data: training data, used only to count the classes (optional).
        num_classes: the number of classes when ``data`` is not given (default 10).
        **options: any :class:`TrainConfig` field.
    """
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TransferKitError(f"Unknown option(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    config = TrainConfig(data=str(data or ""), **options)
    config.validate()
    if data is not None:
        num_classes = len(load_data(config).classes)
    model = load_run_model(config, num_classes or 10, pretrained=False)
    scratch = not uses_pretrained_weights(config.strategy)
    model.spec.weights = "random" if scratch else (config.weights or "pre-trained")  # what training would load
    return _plan(model, config)


# --- helpers ---------------------------------------------------------------------------------------


def _plan(model: Any, config: TrainConfig) -> Plan:
    groups = model.layer_groups(config.groups)
    lr = config.lr
    if lr is None and is_text(model):
        lr = {"lora": TEXT_LORA_LR, "scratch": TEXT_SCRATCH_LR}.get(config.strategy, TEXT_LR)
    phases = build_phases(config.strategy, groups, epochs=config.epochs, head_epochs=config.head_epochs,
                          lr=lr, head_lr=config.head_lr, lrs=_parse_lrs(config.lrs),
                          lr_decay=config.lr_decay, unfreeze_every=config.unfreeze_every,
                          max_unfrozen=config.max_unfrozen)
    bn = resolve_bn_policy(config.bn, config.strategy, config.batch_size)
    plan_ = Plan.build(model, groups, phases, bn, config.bn == "auto", config.warmup)
    leading = leading_head_phases(plan_)
    if leading and config.feature_cache == "auto":
        exact = config.head_fit == "lbfgs" or (config.head_fit == "auto" and config.cache_views == 0
                                               and linear_head(model) is not None)
        how = ("fitted exactly (L-BFGS logistic regression, L2 chosen on validation) in one step" if exact else
               f"trained with SGD on {'un-augmented' if not config.cache_views else config.cache_views} "
               f"{'view' if config.cache_views == 1 else 'views'}")
        which = "The head-only phase" if leading == 1 else f"Head-only phases 1-{leading}"
        plan_.notes = (f"{which}: on cached backbone features (the frozen backbone runs once); the head is {how}.",)
    return plan_


def _parse_lrs(value: str | Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        return tuple(float(v) for v in parts)
    except (TypeError, ValueError) as exc:
        raise bad_value("lrs", value, "comma-separated learning rates, early layers first",
                        "Pass e.g. --lrs 1e-5,1e-4,1e-3.") from exc


def _resolve_config(data: str | Path | None, resume: str | Path | None,
                    options: dict[str, Any]) -> tuple[TrainConfig, Path]:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TransferKitError(f"Unknown option(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    if resume is not None:
        run_dir = Path(resume)
        saved = read_config(run_dir)
        if is_finished(run_dir):
            raise TransferKitError(f"{run_dir} already finished; nothing to resume. Fix: load it with "
                                   "transferkit.load, or start a new run with another --out.")
        if not has_checkpoint(run_dir):
            raise TransferKitError(f"{run_dir} has no checkpoint (it stopped before the first epoch ended). "
                                   f"Fix: start again with --overwrite --out {run_dir}.")
        config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
        return config, run_dir
    if data is None:
        raise bad_value("data", None, "a folder, a CSV manifest or builtin:NAME", "Pass --data.")
    config = TrainConfig(data=str(data), **options)
    config.validate()
    if config.out is None:
        short = config.model.split(":")[-1].split("/")[-1]
        config.out = str(Path("runs") / f"{short}-{config.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(config.out)
    check_new_run_dir(run_dir, config.overwrite)
    return config, run_dir


def _test_metrics(trained: TrainedModel, data: ImageData, config: TrainConfig) -> dict[str, Any] | None:
    if data.test is None or len(data.test) == 0:
        return None
    test = data.test
    if config.test_per_class is not None:
        test, _ = take_per_class(test, config.test_per_class, seed=0)
    if torch.cuda.is_available() and not config.cpu:
        trained.model.cuda()
    probabilities = trained._probabilities(test.items, batch_size=max(64, config.batch_size))
    trained.model.cpu()
    return compute_metrics(np.asarray(test.labels), probabilities, data.classes)


def _checkpoint_history(run_dir: Path) -> list[dict[str, Any]]:
    return checkpoint_state(run_dir)["history"]


class _MetricsWriter(Callback):
    """Appends each epoch's record to ``metrics.jsonl`` and logs a one-line summary."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:
        append_metrics(self.run_dir, record)
        logger.info("epoch %d [%s] train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f samples/s | %.0f s%s",
                    record["epoch"], record["phase"], record["train_loss"], record["train_accuracy"],
                    record["val_loss"], record["val_accuracy"], record["train_samples_per_s"], record["seconds"],
                    " *" if record["best_epoch"] == record["epoch"] else "")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_value(name, value, "a positive integer", f"Pass e.g. --{name.replace('_', '-')} 8.")


def _console_logging() -> None:
    """Show transferkit's progress messages when the caller has not configured logging."""
    package = logging.getLogger("transferkit")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)

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

from .cache import CacheUse
from .config import TEXT_LORA_LR, TEXT_LR, TEXT_SCRATCH_LR, TrainConfig, parse_lrs
from .data.checks import check_normalization
from .data.sources import ImageData
from .data.splits import take_per_class
from .errors import TransferKitError, bad_value
from .evaluate import compute_metrics
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
from .strategies import build_phases, resolve_bn_policy, uses_pretrained_weights
from .training.callbacks import Callback
from .training.checkpoint import save_weights
from .training.loop import FitConfig, fit, linear_head

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is, how it went, and the trained model.

    ``seconds`` is the wall time of training: loading data and model, building the caches, and the
    epochs (not the final test-set evaluation); ``setup_seconds`` is the part before the first epoch (the
    ``seconds`` of each ``history`` entry count from there); ``cache_seconds_saved`` is what the cache entries
    this run reused from earlier runs (``--cache-dir``) took to build.
    """

    run_dir: Path
    best_epoch: int
    val_accuracy: float
    seconds: float
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    model: TrainedModel
    data_description: str = ""
    setup_seconds: float = 0.0
    cache_seconds_saved: float = 0.0


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
        cache_use = CacheUse()
        features = head_features(model, image_data, config, run_plan, run_dir, resume is not None, progress, cache_use)
        on_images = features is None or leading_head_phases(run_plan) < len(run_plan.phases)
        if is_text(model):
            train_loader, val_loader = text_loaders(image_data, model, config)
        else:
            train_loader, val_loader = image_loaders(image_data, model, config, run_dir, on_images, progress,
                                                     cache_use)
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
                    "setup_seconds": round(setup_seconds, 2), "fit_seconds": round(result.seconds, 2),
                    "cache_seconds_built": round(cache_use.built_seconds, 2),
                    "cache_seconds_saved": round(cache_use.saved_seconds, 2), "test": test},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    finish_run(run_dir, info)
    logger.info("Done: best epoch %d of %d, val accuracy %.4f%s, %.1f s — %s", result.best_epoch, len(result.history),
                result.best_val_accuracy, f", test accuracy {test['accuracy']:.4f}" if test else "",
                setup_seconds + result.seconds,
                run_dir)
    trained = TrainedModel(model, image_data.classes, info, run_dir)
    return TrainResult(run_dir, result.best_epoch, result.best_val_accuracy, setup_seconds + result.seconds,
                       result.history, test, trained, image_data.description, setup_seconds,
                       cache_use.saved_seconds)


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
                          lr=lr, head_lr=config.head_lr, lrs=parse_lrs(config.lrs),
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


def _console_logging() -> None:
    """Show transferkit's progress messages when the caller has not configured logging."""
    package = logging.getLogger("transferkit")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)

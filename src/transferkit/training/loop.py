"""The training loop: phases of epochs on Hugging Face Accelerate, with early stopping and checkpoints.

Accelerate owns devices, mixed precision and distribution (``accelerate launch`` / ``torchrun``);
this file owns only the order of things, and reads top to bottom. One optimizer holds every layer
group for the whole run, so optimizer state survives phase changes; each step sets the LRs from the
phase and its warm-up + cosine schedule, so a resumed run needs only (phase, step) to continue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..features import HeadFeatures
from ..models.groups import LayerGroup
from ..models.model import TransferModel
from ..strategies import Phase, apply_phase, param_groups, set_phase_lrs, set_train_mode, warmup_cosine
from .callbacks import Callback, EarlyStopping
from .checkpoint import cpu_state_dict, load_checkpoint, save_checkpoint
from .headfit import fit_linear_head
from .regularizers import l2_sp_penalty, snapshot_backbone

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Optimisation settings shared by every phase."""

    seed: int = 0
    weight_decay: float = 0.01
    warmup: float = 0.1
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None
    patience: int | None = 3
    bn: str = "train"
    l2_sp: float = 0.0
    groups: int | None = None
    head_fit: str = "sgd"
    mixed_precision: str = "no"
    channels_last: bool = False
    compile: bool = False
    cpu: bool = False
    progress: bool = True


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so ``--resume`` continues exactly there."""

    epoch: int = 0
    phase_index: int = 0
    phase_epoch: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_requested: bool = False


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    seconds: float


def fit(model: TransferModel, train_loader: DataLoader, val_loader: DataLoader, phases: Sequence[Phase],
        config: FitConfig, *, run_dir: Path | None = None, resume: bool = False,
        callbacks: Sequence[Callback] = (), features: HeadFeatures | None = None) -> FitResult:
    """Train ``model`` through ``phases``; at the end it holds the best validation epoch's weights.

    With ``features`` (cached backbone features), head-only phases that come before any backbone
    training train the head on them instead of running the frozen backbone every epoch; with
    ``config.head_fit == "lbfgs"`` and a linear head such a phase is one exact fit.
    """
    accelerator = make_accelerator(config)
    groups = model.layer_groups(config.groups)
    reference = snapshot_backbone(model) if config.l2_sp else {}  # the pre-trained start, before any resume
    optimizer = torch.optim.AdamW(param_groups(model, groups, config.weight_decay,
                                               _backbone_names(groups) if config.l2_sp else frozenset()),
                                  fused=accelerator.device.type == "cuda" or None)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    state, stopper, best = TrainState(), EarlyStopping(config.patience), None
    if resume:
        checkpoint = load_checkpoint(run_dir)
        state = TrainState(**checkpoint.state["train"])
        stopper.load_state_dict(checkpoint.state["early_stopping"])
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        best = checkpoint.best
    weight = torch.tensor(config.class_weights) if config.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing).to(accelerator.device)
    train_loader, val_loader, optimizer = accelerator.prepare(train_loader, val_loader, optimizer)
    feature_loaders = accelerator.prepare(*features.loaders()) if features is not None else None
    head_name = groups[-1].name
    backbone_trained = any(set(p.trainable) != {head_name} for p in phases[:state.phase_index])
    clock = time.perf_counter() - state.seconds

    while state.phase_index < len(phases) and not state.stop_requested:
        phase = phases[state.phase_index]
        apply_phase(model, groups, phase)
        on_features = feature_loaders is not None and set(phase.trainable) == {head_name} and not backbone_trained
        exact = on_features and config.head_fit == "lbfgs" and linear_head(model) is not None
        backbone_trained = backbone_trained or set(phase.trainable) != {head_name}
        loaders = feature_loaders if on_features else (train_loader, val_loader)
        # Wrap again for each phase: DDP registers only the parameters that train at wrap time.
        net = accelerator.prepare_model(model.head if on_features
                                        else accelerator.unwrap_model(model, keep_fp32_wrapper=False))
        if config.compile:
            net = torch.compile(net)
        schedule = warmup_cosine(phase.epochs * len(loaders[0]), config.warmup)
        while state.phase_epoch < phase.epochs and not state.stop_requested:
            for callback in callbacks:
                callback.on_epoch_start(state)
            set_seed(config.seed + state.epoch)
            first_step = state.phase_epoch * len(loaders[0])
            label = f"epoch {state.epoch + 1} [{phase.name} {state.phase_epoch + 1}/{phase.epochs}]"
            if exact:
                train_metrics, val_metrics = exact_head_fit(model, features, config)
                state.phase_epoch = phase.epochs - 1  # one exact fit replaces the phase's epochs
            else:
                if on_features:
                    features.train.view = state.epoch
                train_metrics = train_one_epoch(
                    model, net, loaders[0], optimizer, loss_fn, accelerator, label, config,
                    set_lr=lambda i, phase=phase, schedule=schedule, first=first_step: set_phase_lrs(
                        optimizer, phase, schedule(first + i)),
                    penalty=(lambda: l2_sp_penalty(model, reference, config.l2_sp)) if config.l2_sp else None)
                val_metrics = evaluate_loss(net, loaders[1], loss_fn, accelerator)
            state.epoch, state.phase_epoch = state.epoch + 1, state.phase_epoch + 1
            if stopper.update(val_metrics["accuracy"], val_metrics["loss"], state.epoch):
                best = cpu_state_dict(model)
            record = {"epoch": state.epoch, "phase": phase.name,
                      "inputs": ("exact fit on " if exact else "") + ("cached features" if on_features else "images"),
                      **{f"train_{k}": v for k, v in train_metrics.items()},
                      **{f"val_{k}": v for k, v in val_metrics.items()}, "lrs": dict(phase.lrs),
                      "best_epoch": stopper.best_epoch, "seconds": round(time.perf_counter() - clock, 3)}
            state.history.append(record)
            state.seconds = record["seconds"]
            for callback in callbacks:
                callback.on_epoch_end(record, state)
            phase_over = stopper.should_stop or state.phase_epoch >= phase.epochs
            if phase_over:
                if state.phase_epoch < phase.epochs:
                    logger.info("Early stopping: no better validation accuracy for %d epochs", stopper.patience)
                state.phase_index, state.phase_epoch = state.phase_index + 1, 0
                stopper.new_phase()
            if run_dir is not None and accelerator.is_main_process:
                position = {"phase": phase.name, "unfrozen": list(phase.trainable), "lrs": dict(phase.lrs)}
                save_checkpoint(run_dir, state={"train": asdict(state), "early_stopping": stopper.state_dict(),
                                                "last_phase": position},
                                model=cpu_state_dict(model), best=best if stopper.best_epoch == state.epoch else None,
                                optimizer=optimizer.state_dict())
            if phase_over:
                break

    if best is not None:
        model.load_state_dict(best)
    return FitResult(state.history, stopper.best_epoch, stopper.best or 0.0, time.perf_counter() - clock)


def make_accelerator(config: FitConfig) -> Accelerator:
    """The run's ``Accelerator``. Accelerate keeps one process-wide state; a single process that trains
    again with other settings (say ``mixed_precision`` or ``cpu``) gets that state reset. Under
    ``accelerate launch`` / ``torchrun`` the launcher's settings stand."""
    try:
        return Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)


def train_one_epoch(model: TransferModel, net: nn.Module, loader: DataLoader, optimizer: Any, loss_fn: nn.Module,
                    accelerator: Accelerator, label: str, config: FitConfig, set_lr: Callable[[int], None],
                    penalty: Callable[[], torch.Tensor] | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy and throughput."""
    set_train_mode(model, config.bn)
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=label, leave=False, disable=not (config.progress and accelerator.is_local_main_process))
    for step, (images, labels) in enumerate(bar):
        set_lr(step)
        if config.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = net(images)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss + penalty() if penalty is not None else loss)
        optimizer.step()
        total_loss += loss.item() * labels.size(0)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += labels.size(0)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}",
                        per_s=f"{seen / max(time.perf_counter() - start, 1e-9):.0f}")
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "samples_per_s": round(seen / max(seconds, 1e-9), 1)}


@torch.no_grad()
def evaluate_loss(net: nn.Module, loader: DataLoader, loss_fn: nn.Module, accelerator: Accelerator) -> dict[str, float]:
    """Mean loss and accuracy over ``loader`` (gathered across processes)."""
    net.eval()
    losses, hits = [], []
    for images, labels in loader:
        logits = net(images)
        per_sample = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        per_sample, labels, logits = accelerator.gather_for_metrics((per_sample, labels, logits))
        losses.append(per_sample.cpu())
        hits.append((logits.argmax(dim=1) == labels).cpu())
    loss = torch.cat(losses).mean().item()
    return {"loss": loss, "accuracy": torch.cat(hits).float().mean().item()}


def linear_head(model: TransferModel) -> nn.Linear | None:
    """The head's only ``nn.Linear`` when the head is linear (dropout aside), else ``None``."""
    layers = [m for m in model.head if not isinstance(m, nn.Dropout)]
    return layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None


def exact_head_fit(model: TransferModel, features: HeadFeatures, config: FitConfig) -> tuple[dict, dict]:
    """Fit the linear head on the cached features with L-BFGS (see :mod:`.headfit`); returns metrics
    shaped like an epoch's."""
    start = time.perf_counter()
    x_train, y_train = features.train.arrays()
    x_val, y_val = features.val.arrays()
    weight = torch.tensor(config.class_weights) if config.class_weights else None
    result = fit_linear_head(linear_head(model), x_train, y_train, x_val, y_val, class_weights=weight)
    seconds = time.perf_counter() - start
    return ({"loss": result.train_loss, "accuracy": result.train_accuracy,
             "samples_per_s": round(len(y_train) / max(seconds, 1e-9), 1), "exact_fit_l2": result.l2},
            {"loss": result.val_loss, "accuracy": result.val_accuracy})


def _backbone_names(groups: list[LayerGroup]) -> frozenset[str]:
    return frozenset(g.name for g in groups[:-1])

"""The training loop: phases of epochs on Hugging Face Accelerate, with early stopping and checkpoints.

Accelerate owns devices, mixed precision and distribution (``accelerate launch`` / ``torchrun``); this file owns
only the order of things, and reads top to bottom: :func:`fit`, then the phase and epoch helpers it calls. Where
each phase runs — on images, on cached backbone features, or as one exact fit of the head — was decided by the
plan (``Phase.runs_on``); the loop only follows it. One optimizer holds every layer group for the whole run, so
optimizer state survives phase changes; each step sets the LRs from the phase and its warm-up + cosine schedule,
so a resumed run needs only (phase, step) to continue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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
from .checkpoint import Checkpoint, cpu_state_dict
from .headfit import fit_linear_head
from .regularizers import l2_sp_penalty, snapshot_backbone

logger = logging.getLogger(__name__)

INPUTS = {"images": "images", "features": "cached features", "exact-fit": "exact fit on cached features"}


@dataclass
class FitConfig:
    """Optimisation settings shared by every phase."""

    seed: int = 0
    weight_decay: float = 0.01
    warmup: float = 0.1
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None
    patience: int | None = 3
    patience_fraction: float = 0.0
    bn: str = "train"
    l2_sp: float = 0.0
    groups: int | None = None
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


class CheckpointStore(Protocol):
    """Where checkpoints go (a :class:`transferkit.runfolder.RunFolder`)."""

    def save_checkpoint(self, *, state: dict[str, Any], model: dict[str, torch.Tensor],
                        best: dict[str, torch.Tensor] | None, optimizer: dict[str, Any] | None) -> None: ...

    def load_checkpoint(self) -> Checkpoint: ...


def fit(model: TransferModel, train_loader: DataLoader, val_loader: DataLoader, phases: Sequence[Phase],
        config: FitConfig, *, run: CheckpointStore | None = None, resume: bool = False,
        callbacks: Sequence[Callback] = (), features: HeadFeatures | None = None) -> FitResult:
    """Train ``model`` through ``phases``; at the end it holds the best validation epoch's weights.

    Args:
        phases: the plan's phases; each says where it runs (``Phase.runs_on``). Phases on ``features`` or
            ``exact-fit`` need ``features`` (the cached backbone features).
        run: where checkpoints are written after every epoch (and read from with ``resume``).
    """
    accelerator = make_accelerator(config)
    groups = model.layer_groups(config.groups)
    reference = snapshot_backbone(model) if config.l2_sp else {}  # the pre-trained start, before any resume
    optimizer = torch.optim.AdamW(param_groups(model, groups, config.weight_decay,
                                               _backbone_names(groups) if config.l2_sp else frozenset()),
                                  fused=accelerator.device.type == "cuda" or None)
    penalty = (lambda: l2_sp_penalty(model, reference, config.l2_sp)) if config.l2_sp else None
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    state, stopper, best = TrainState(), EarlyStopping(config.patience, relative=config.patience_fraction), None
    if resume:
        best = _restore(run, model, optimizer, state, stopper)
    _check_inputs(phases[state.phase_index:], features)
    weight = torch.tensor(config.class_weights) if config.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing).to(accelerator.device)
    train_loader, val_loader, optimizer = accelerator.prepare(train_loader, val_loader, optimizer)
    clock = time.perf_counter() - state.seconds

    while state.phase_index < len(phases) and not state.stop_requested:
        phase = phases[state.phase_index]
        apply_phase(model, groups, phase)
        stopper.start_phase(phase.epochs, config.warmup)
        net = _phase_network(model, phase, accelerator, config)
        val_data = val_loader if phase.runs_on == "images" else accelerator.prepare(features.val_loader())
        while state.phase_epoch < phase.epochs and not state.stop_requested:
            for callback in callbacks:
                callback.on_epoch_start(state)
            set_seed(config.seed + state.epoch)
            if phase.runs_on == "exact-fit":
                train_metrics, val_metrics = exact_head_fit(model, features, config)
            else:
                train_data = train_loader if phase.runs_on == "images" else accelerator.prepare(
                    features.train_loader(state.epoch))
                train_metrics = train_one_epoch(model, net, train_data, optimizer, loss_fn, accelerator,
                                                _label(state, phase), config,
                                                _lr_setter(optimizer, phase, state, len(train_data), config.warmup),
                                                penalty)
                val_metrics = evaluate_loss(net, val_data, loss_fn, accelerator)
            record, is_best = _close_epoch(state, stopper, phase, train_metrics, val_metrics, clock)
            if is_best:
                best = cpu_state_dict(model)
            for callback in callbacks:
                callback.on_epoch_end(record, state)
            phase_over = _close_phase_if_over(state, stopper, phase)
            if run is not None:
                run.save_checkpoint(state={"train": asdict(state), "early_stopping": stopper.state_dict(),
                                           "last_phase": {"phase": phase.name, "unfrozen": list(phase.trainable),
                                                          "lrs": dict(phase.lrs)}},
                                    model=cpu_state_dict(model), best=best if is_best else None,
                                    optimizer=optimizer.state_dict())
            if phase_over:
                break

    if best is not None:
        model.load_state_dict(best)
    return FitResult(state.history, stopper.best_epoch, stopper.best or 0.0, time.perf_counter() - clock)


# --- phase helpers ---------------------------------------------------------------------------------


def _check_inputs(phases: Sequence[Phase], features: HeadFeatures | None) -> None:
    cached = [p.name for p in phases if p.runs_on != "images"]
    if cached and features is None:
        raise ValueError(f"Phases {', '.join(cached)} run on cached features, but no features were given.")


def _restore(run: CheckpointStore, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
             stopper: EarlyStopping) -> dict[str, torch.Tensor] | None:
    """Load the last checkpoint into the model, optimizer, state and early stopping; returns the best weights."""
    checkpoint = run.load_checkpoint()
    for key, value in checkpoint.state["train"].items():
        setattr(state, key, value)
    stopper.load_state_dict(checkpoint.state["early_stopping"])
    model.load_state_dict(checkpoint.model)
    optimizer.load_state_dict(checkpoint.optimizer)
    return checkpoint.best


def _phase_network(model: TransferModel, phase: Phase, accelerator: Accelerator, config: FitConfig) -> nn.Module:
    """What the phase's batches go through: the head alone on cached features, else the whole model. Wrapped
    again for each phase: DDP registers only the parameters that train at wrap time."""
    if phase.runs_on == "exact-fit":
        return model.head
    net = accelerator.prepare_model(model.head if phase.runs_on == "features"
                                    else accelerator.unwrap_model(model, keep_fp32_wrapper=False))
    return torch.compile(net) if config.compile else net


def _close_phase_if_over(state: TrainState, stopper: EarlyStopping, phase: Phase) -> bool:
    """Move on to the next phase when this one is done — its epochs run, or its one exact fit made — or early
    stopping ended it."""
    done = phase.runs_on == "exact-fit" or state.phase_epoch >= phase.epochs
    if not (done or stopper.should_stop):
        return False
    if not done:
        logger.info("Early stopping: no better validation accuracy for %d epochs", stopper.current_patience)
    state.phase_index, state.phase_epoch = state.phase_index + 1, 0
    stopper.new_phase()
    return True


# --- epoch helpers ---------------------------------------------------------------------------------


def _label(state: TrainState, phase: Phase) -> str:
    return f"epoch {state.epoch + 1} [{phase.name} {state.phase_epoch + 1}/{phase.epochs}]"


def _lr_setter(optimizer: Any, phase: Phase, state: TrainState, steps_per_epoch: int,
               warmup: float) -> Callable[[int], None]:
    """Sets every group's LR for step ``i`` of this epoch from the phase's warm-up + cosine schedule."""
    schedule = warmup_cosine(phase.epochs * steps_per_epoch, warmup)
    first = state.phase_epoch * steps_per_epoch
    return lambda i: set_phase_lrs(optimizer, phase, schedule(first + i))


def _close_epoch(state: TrainState, stopper: EarlyStopping, phase: Phase, train_metrics: dict[str, float],
                 val_metrics: dict[str, float], clock: float) -> tuple[dict[str, Any], bool]:
    """Count the epoch, judge it for early stopping and record it; returns (record, is the run's best)."""
    state.epoch, state.phase_epoch = state.epoch + 1, state.phase_epoch + 1
    is_best = stopper.update(val_metrics["accuracy"], val_metrics["loss"], state.epoch)
    record = {"epoch": state.epoch, "phase": phase.name, "inputs": INPUTS[phase.runs_on],
              **{f"train_{k}": v for k, v in train_metrics.items()},
              **{f"val_{k}": v for k, v in val_metrics.items()}, "lrs": dict(phase.lrs),
              "best_epoch": stopper.best_epoch, "seconds": round(time.perf_counter() - clock, 3)}
    state.history.append(record)
    state.seconds = record["seconds"]
    return record, is_best


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
    for step, (inputs, labels) in enumerate(bar):
        set_lr(step)
        if config.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        logits = net(inputs)
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
    for inputs, labels in loader:
        logits = net(inputs)
        per_sample = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        per_sample, labels, logits = accelerator.gather_for_metrics((per_sample, labels, logits))
        losses.append(per_sample.cpu())
        hits.append((logits.argmax(dim=1) == labels).cpu())
    loss = torch.cat(losses).mean().item()
    return {"loss": loss, "accuracy": torch.cat(hits).float().mean().item()}


def exact_head_fit(model: TransferModel, features: HeadFeatures, config: FitConfig) -> tuple[dict, dict]:
    """The exact-fit step: the linear head fitted on the cached features with L-BFGS (see :mod:`.headfit`);
    returns metrics shaped like an epoch's."""
    start = time.perf_counter()
    (x_train, y_train), (x_val, y_val) = features.arrays()
    weight = torch.tensor(config.class_weights) if config.class_weights else None
    result = fit_linear_head(model.linear_head(), x_train, y_train, x_val, y_val, class_weights=weight)
    seconds = time.perf_counter() - start
    return ({"loss": result.train_loss, "accuracy": result.train_accuracy,
             "samples_per_s": round(len(y_train) / max(seconds, 1e-9), 1), "exact_fit_l2": result.l2},
            {"loss": result.val_loss, "accuracy": result.val_accuracy})


def _backbone_names(groups: list[LayerGroup]) -> frozenset[str]:
    return frozenset(g.name for g in groups[:-1])

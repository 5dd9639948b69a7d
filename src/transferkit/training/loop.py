"""The training loop: phases of epochs on Hugging Face Accelerate, with early stopping and checkpoints.

Accelerate owns devices, mixed precision and the DDP wrapping; the :class:`~transferkit.distributed.World` owns
what several processes (``torchrun`` / ``accelerate launch``) must agree on: the loaders arrive already sharded
(each process's part of every global batch, its share of the validation set), and the loop reduces the metrics,
so every process logs, judges early stopping and checkpoints on the same numbers. This file owns only the order of
things, and reads top to bottom: :func:`fit`, then the phase and epoch helpers it calls. Where each phase runs — on
images, on cached backbone features, or as one exact fit of the head — was decided by the plan
(``Phase.runs_on``); the loop only follows it. One optimizer holds every layer group for the whole run, so
optimizer state survives phase changes; each step sets the LRs from the phase and its warm-up + cosine schedule,
so a resumed run needs only (phase, step) to continue. The loss and the figures of each epoch come from the task's
:class:`~transferkit.tasks.base.Objective` (classification's by default); early stopping follows its ``monitor``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..adaptation.dann import DomainAdaptation
from ..distributed import World
from ..errors import TransferKitError
from ..features import HeadFeatures, PrefixActivations
from ..models.groups import LayerGroup
from ..models.model import TransferModel
from ..seeding import derive_seed
from ..strategies import Phase, apply_phase, param_groups, schedule_span, set_phase_lrs, set_train_mode, warmup_cosine
from ..tasks.base import Objective
from ..tasks.classification import ClassificationObjective
from .budget import EpochEstimate, fit_to_budget
from .callbacks import Callback, EarlyStopping
from .checkpoint import Checkpoint, cpu_state_dict
from .ema import WeightAverage
from .headfit import fit_linear_head
from .regularizers import l2_sp_penalty, snapshot_backbone

logger = logging.getLogger(__name__)

INPUTS = {"images": "images", "features": "cached features", "exact-fit": "exact fit on cached features",
          "activations": "cached activations of the frozen prefix"}


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
    patience_after_lr: float | None = None
    keep: str = "best"  # "last": the final epoch's weights, not the best validation epoch's
    bn: str = "train"
    l2_sp: float = 0.0
    groups: int | None = None
    mixed_precision: str = "no"
    channels_last: bool = False
    compile: bool = False
    cpu: bool = False
    progress: bool = True
    deadline: float | None = None  # ``time.perf_counter()`` by which training must be over (``--budget``)
    schedule: str = "per-phase"  # "single": one warm-up + cosine across the phases (``--schedule``)
    ema: float = 0.0  # decay of the weights' moving average (0: none); validation and the kept weights use it
    tta: bool = False  # validation on images averages the softmax of each image and its horizontal flip


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so ``--resume`` continues exactly there."""

    epoch: int = 0
    phase_index: int = 0
    phase_epoch: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_requested: bool = False
    processes: int = 1


@dataclass
class FitResult:
    """How a run went: ``best_epoch`` is the epoch whose weights the model holds (the best validation epoch; with
    ``--keep last`` the final one) and ``best_val_score`` its validation ``monitor`` figure (accuracy; segmentation:
    mIoU)."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_score: float
    seconds: float
    monitor: str = "accuracy"
    budget: dict[str, Any] | None = None  # with a deadline: the epochs planned and run, and whether it stopped the run

    @property
    def best_val_accuracy(self) -> float:
        """The best validation score under its classification name."""
        return self.best_val_score


class CheckpointStore(Protocol):
    """Where checkpoints go (a :class:`transferkit.runfolder.RunFolder`)."""

    def save_checkpoint(self, *, state: dict[str, Any], model: dict[str, torch.Tensor],
                        best: dict[str, torch.Tensor] | None, optimizer: dict[str, Any] | None,
                        ema: dict[str, torch.Tensor] | None = None) -> None: ...

    def load_checkpoint(self) -> Checkpoint: ...


def fit(model: TransferModel, train_loader: DataLoader, val_loader: DataLoader, phases: Sequence[Phase],
        config: FitConfig, *, run: CheckpointStore | None = None, resume: bool = False,
        callbacks: Sequence[Callback] = (), features: HeadFeatures | None = None,
        world: World | None = None, objective: Objective | None = None,
        adaptation: DomainAdaptation | None = None,
        activations: dict[int, PrefixActivations] | None = None,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FitResult:
    """Train ``model`` through ``phases``; at the end it holds the best validation epoch's weights (``keep="last"``:
    the final epoch's, and the result names that epoch).

    Args:
        train_loader: this process's part of every training batch (``World.batches``).
        val_loader: this process's share of the validation set (``World.share``).
        phases: the plan's phases; each says where it runs (``Phase.runs_on``). Phases on ``features`` or
            ``exact-fit`` need ``features`` (the cached backbone features).
        run: where checkpoints are written after every epoch (and read from with ``resume``).
        world: the processes of the run (default: this one alone).
        objective: the task's loss and figures (default: classification's).
        adaptation: unsupervised domain adaptation (:mod:`transferkit.adaptation.dann`) for the phases on images;
            its discriminator must already be a submodule of ``model`` (``model.domain_adversary``), so checkpoints
            carry it, and it trains at the head's LR.
        activations: the frozen-prefix caches of the phases on ``activations``, by their ``Phase.prefix``.
        batch_transform: turns each training batch from ``train_loader``, on the device, into the model's inputs
            (on-device augmentation, :class:`~transferkit.data.device.DeviceAugment`), in the phases on images.
    """
    world = world or World()
    objective = objective or ClassificationObjective()
    accelerator = make_accelerator(config)
    if config.bn == "train" and world.size > 1 and accelerator.device.type == "cuda":
        model = _sync_batchnorm(model)
    groups = model.layer_groups(config.groups)
    reference = snapshot_backbone(model) if config.l2_sp else {}  # the pre-trained start, before any resume
    optimizer = torch.optim.AdamW(param_groups(model, groups, config.weight_decay,
                                               _backbone_names(groups) if config.l2_sp else frozenset()),
                                  fused=accelerator.device.type == "cuda" or None)
    if adaptation is not None:
        optimizer.add_param_group({"params": list(adaptation.adversary.parameters()), "lr": 0.0,
                                   "weight_decay": config.weight_decay, "name": "domain_adversary",
                                   "layer_group": groups[-1].name})
    penalty = (lambda: l2_sp_penalty(model, reference, config.l2_sp)) if config.l2_sp else None
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    state, stopper, best = TrainState(), EarlyStopping(config.patience, relative=config.patience_fraction,
                                                         after_lr=config.patience_after_lr), None
    average = WeightAverage(model, config.ema, accelerator.device) if config.ema else None  # starts at step 1
    if resume:
        best = _restore(run, model, optimizer, state, stopper, accelerator, average)
    state.processes = world.size
    _check_inputs(phases[state.phase_index:], features, activations)
    loss_fn = objective.criterion(config).to(accelerator.device)
    optimizer = accelerator.prepare(optimizer)
    train_loader = _on_device(train_loader, accelerator)
    clock = time.perf_counter() - state.seconds
    phases, planned, budget_stopped = list(phases), sum(p.epochs for p in phases), False

    while state.phase_index < len(phases) and not state.stop_requested:
        phase = phases[state.phase_index]
        apply_phase(model, groups, phase)
        stopper.start_phase(phase.epochs, config.warmup, *schedule_span(phases, state.phase_index, config.schedule))
        net = _phase_network(model, phase, accelerator, config)
        val_net = net if average is None else _eval_network(average.module, phase)  # validate the average
        cached = features if phase.runs_on != "activations" else activations[phase.prefix].cached
        val_data = val_loader if phase.runs_on == "images" else cached.val_loader()
        while state.phase_epoch < phase.epochs and not state.stop_requested:
            epoch_started = time.perf_counter()
            for callback in callbacks:
                callback.on_epoch_start(state)
            set_seed(derive_seed(config.seed, "epoch", state.epoch))
            if phase.runs_on == "exact-fit":
                train_metrics, val_metrics = exact_head_fit(model, features, config, world)
                if average is not None:  # a jump no optimizer step made: the average starts again there
                    average.restart(model)
            else:
                train_data = train_loader if phase.runs_on == "images" else _on_device(
                    cached.train_loader(state.epoch), accelerator)
                adapting = adaptation if phase.runs_on == "images" else None
                if adapting is not None:
                    adapting.start_epoch(sum(r["inputs"] == INPUTS["images"] for r in state.history),
                                         len(train_data), accelerator.device)
                train_metrics = train_one_epoch(model, net, train_data, optimizer, loss_fn, accelerator,
                                                _label(state, phase), state.epoch, config,
                                                _lr_setter(optimizer, phases, state, len(train_data), config),
                                                penalty, world, objective, adapting,
                                                batch_transform if phase.runs_on == "images" else None, average)
                world.sync_buffers(model)
                if average is not None:
                    world.sync_buffers(average.module)
                val_metrics = evaluate_loss(val_net, val_data, loss_fn, accelerator, world, objective,
                                            tta=config.tta and phase.runs_on == "images")
            record, is_best = _close_epoch(state, stopper, phase, train_metrics, val_metrics, clock,
                                           objective.monitor)
            if is_best:
                best = cpu_state_dict(model) if average is None else average.weights()
            for callback in callbacks:
                callback.on_epoch_end(record, state)
            state.stop_requested = world.any(state.stop_requested)  # a callback's stop holds for every process
            phase_over = _close_phase_if_over(state, stopper, phase, objective.monitor)
            if run is not None:
                run.save_checkpoint(state={"train": asdict(state), "early_stopping": stopper.state_dict(),
                                           "last_phase": {"phase": phase.name, "unfrozen": list(phase.trainable),
                                                          "lrs": dict(phase.lrs)},
                                           "grad_scaler": _scaler_state(accelerator)},
                                    model=cpu_state_dict(model), best=best if is_best else None,
                                    optimizer=optimizer.state_dict(),
                                    ema=average.state_dict() if average is not None else None)
            if config.deadline is not None:
                phases, budget_stop = world.broadcast(  # rank 0's clock decides for every process
                    fit_to_budget(phases, state, phase_over, time.perf_counter() - epoch_started,
                                  config.deadline - time.perf_counter(), next_epoch=_next_epoch_estimate(
                                      model, groups, phases, state, train_loader, val_loader, accelerator))
                    if world.is_main else None)
                if budget_stop:
                    logger.info("Budget spent after epoch %d: stopping with the best epoch's weights (epoch %d)",
                                state.epoch, stopper.best_epoch)
                    state.stop_requested = budget_stopped = True
                elif not phase_over and phases[state.phase_index].epochs != phase.epochs:
                    phase = phases[state.phase_index]  # fewer epochs: its cosine ends sooner
                    stopper.start_phase(phase.epochs, config.warmup,
                                        *schedule_span(phases, state.phase_index, config.schedule))
            if phase_over:
                break

    if best is not None and config.keep == "best":
        model.load_state_dict(best)
    elif average is not None and config.keep == "last":  # the run's weights are the average's
        model.load_state_dict(average.weights())
    budget = None
    if config.deadline is not None:
        budget = {"epochs_planned": planned, "epochs_run": state.epoch,
                  "phases": {p.name: p.epochs for p in phases},
                  "stopped_by_budget": budget_stopped}
    kept_epoch, kept_score = stopper.best_epoch, stopper.best or 0.0
    if config.keep == "last" and state.history:  # the weights are the final epoch's: so are the figures reported
        kept_epoch, kept_score = state.history[-1]["epoch"], state.history[-1][f"val_{objective.monitor}"]
    return FitResult(state.history, kept_epoch, kept_score, time.perf_counter() - clock, objective.monitor, budget)


def _next_epoch_estimate(model: TransferModel, groups: list[LayerGroup], phases: list[Phase], state: TrainState,
                         train_loader: DataLoader, val_loader: DataLoader,
                         accelerator: Accelerator) -> Callable[[tuple[str, ...]], float | None]:
    """``--budget`` at a phase boundary: the estimated seconds of the next phase's first epoch when the given layer
    groups train, for a phase that trains the network on images (the costly kind; ``None`` for phases on cached
    features or activations, which are cheap or shorter than this estimate). One :class:`EpochEstimate` serves every
    estimate of the boundary: its batch and inference forward are timed once. Nothing runs until it is called."""
    if state.phase_index >= len(phases) or phases[state.phase_index].runs_on != "images":
        return lambda trained_groups: None
    estimate = EpochEstimate(accelerator.unwrap_model(model, keep_fp32_wrapper=False), train_loader, val_loader,
                             accelerator.device)

    def seconds(trained_groups: tuple[str, ...]) -> float:
        trained = {name for g in groups if g.name in trained_groups for name in g.param_names}
        return estimate(trained.__contains__)

    return seconds


# --- phase helpers ---------------------------------------------------------------------------------


def _check_inputs(phases: Sequence[Phase], features: HeadFeatures | None,
                  activations: dict[int, PrefixActivations] | None = None) -> None:
    cached = [p.name for p in phases if p.runs_on in ("features", "exact-fit")]
    if cached and features is None:
        raise ValueError(f"Phases {', '.join(cached)} run on cached features, but no features were given.")
    missing = [p.name for p in phases if p.runs_on == "activations" and p.prefix not in (activations or {})]
    if missing:
        raise ValueError(f"Phases {', '.join(missing)} run on cached prefix activations, but none were given.")


def _restore(run: CheckpointStore, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
             stopper: EarlyStopping, accelerator: Accelerator,
             average: WeightAverage | None = None) -> dict[str, torch.Tensor] | None:
    """Load the last checkpoint into the model, optimizer, fp16 gradient scaler, state, early stopping and the
    weights' moving average; returns the best weights."""
    checkpoint = run.load_checkpoint()
    if average is not None:
        if checkpoint.ema is None:
            raise TransferKitError("This checkpoint holds no moving average of the weights, but the run's "
                                   "configuration has --ema. Fix: resume with the run's own config.yaml unchanged.")
        average.load_state_dict(checkpoint.ema)
    for key, value in checkpoint.state["train"].items():
        setattr(state, key, value)
    stopper.load_state_dict(checkpoint.state["early_stopping"])
    model.load_state_dict(checkpoint.model)
    optimizer.load_state_dict(checkpoint.optimizer)
    scaler = checkpoint.state.get("grad_scaler")
    if scaler and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler)
    return checkpoint.best


def _scaler_state(accelerator: Accelerator) -> dict[str, Any] | None:
    """fp16 training's loss scale (and its growth counter): part of the state a resumed run must continue from."""
    return accelerator.scaler.state_dict() if accelerator.scaler is not None else None


def _on_device(loader: DataLoader, accelerator: Accelerator) -> DataLoader:
    """``loader``'s batches on the training device. The loader is already this process's part (the World shards
    it), so Accelerate only places the batches: it must not shard them again."""
    return prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True)


def _sync_batchnorm(model: TransferModel) -> TransferModel:
    """BatchNorm layers that normalise over the global batch (``--bn train`` on several GPUs); timm's converter
    also handles its fused BatchNorm + activation layers. Parameters and buffers stay the same tensors, so layer
    groups, the optimizer and state dicts are unchanged. (On CPUs PyTorch has no SyncBatchNorm: each process then
    normalises over its own part of the batch; the plan says so.)"""
    from timm.layers import convert_sync_batchnorm

    logger.info("BatchNorm: SyncBatchNorm (statistics over the global batch of all processes)")
    return convert_sync_batchnorm(model)


def _phase_network(model: TransferModel, phase: Phase, accelerator: Accelerator, config: FitConfig) -> nn.Module:
    """What the phase's batches go through: the head alone on cached features, else the whole model. Wrapped
    again for each phase: DDP registers only the parameters that train at wrap time."""
    if phase.runs_on == "exact-fit":
        return model.head
    if phase.runs_on == "activations":  # the model's own modules after the cached prefix, then its head
        from ..models.prefix import Suffix, chain_links

        base = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        net = accelerator.prepare_model(Suffix(chain_links(base.backbone), phase.prefix, base.head))
        return torch.compile(net) if config.compile else net
    net = accelerator.prepare_model(model.head if phase.runs_on == "features"
                                    else accelerator.unwrap_model(model, keep_fp32_wrapper=False))
    return torch.compile(net) if config.compile else net


def _eval_network(module: TransferModel, phase: Phase) -> nn.Module:
    """What a phase validates with when it is not the training network: the same inputs through ``module`` (the
    weights' moving average), not wrapped for several processes (validation needs no gradient)."""
    if phase.runs_on in ("features", "exact-fit"):
        return module.head
    if phase.runs_on == "activations":
        from ..models.prefix import Suffix, chain_links

        return Suffix(chain_links(module.backbone), phase.prefix, module.head)
    return module


def _close_phase_if_over(state: TrainState, stopper: EarlyStopping, phase: Phase, monitor: str = "accuracy") -> bool:
    """Move on to the next phase when this one is done — its epochs run, or its one exact fit made — or early
    stopping ended it."""
    done = phase.runs_on == "exact-fit" or state.phase_epoch >= phase.epochs
    if not (done or stopper.should_stop):
        return False
    if not done:
        logger.info("Early stopping: no better validation %s for %d epochs", monitor, stopper.current_patience)
    state.phase_index, state.phase_epoch = state.phase_index + 1, 0
    stopper.new_phase()
    return True


# --- epoch helpers ---------------------------------------------------------------------------------


def _label(state: TrainState, phase: Phase) -> str:
    return f"epoch {state.epoch + 1} [{phase.name} {state.phase_epoch + 1}/{phase.epochs}]"


def _lr_setter(optimizer: Any, phases: Sequence[Phase], state: TrainState, steps_per_epoch: int,
               config: FitConfig) -> Callable[[int], None]:
    """Sets every group's LR for step ``i`` of this epoch: the current phase's peak LRs times the warm-up + cosine
    multiplier — of the phase's own schedule (``per-phase``), or of one schedule across the phases (``single``)."""
    phase = phases[state.phase_index]
    offset, total = schedule_span(list(phases), state.phase_index, config.schedule)
    schedule = warmup_cosine((total or phase.epochs) * steps_per_epoch, config.warmup)
    first = (offset + state.phase_epoch) * steps_per_epoch
    return lambda i: set_phase_lrs(optimizer, phase, schedule(first + i))


def _close_epoch(state: TrainState, stopper: EarlyStopping, phase: Phase, train_metrics: dict[str, float],
                 val_metrics: dict[str, float], clock: float, monitor: str = "accuracy") -> tuple[dict[str, Any], bool]:
    """Count the epoch, judge it for early stopping (on validation ``monitor``) and record it; returns (record, is
    the run's best)."""
    state.epoch, state.phase_epoch = state.epoch + 1, state.phase_epoch + 1
    is_best = stopper.update(val_metrics[monitor], val_metrics["loss"], state.epoch)
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
    cpu = config.cpu or not torch.cuda.is_available()  # Accelerate needs cpu=True to run several CPU processes
    try:
        return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision)


class NonFiniteLossError(TransferKitError):
    """The training loss became NaN or infinite; the last checkpoint on disk is the last good state."""


def train_one_epoch(model: TransferModel, net: nn.Module, loader: DataLoader, optimizer: Any, loss_fn: nn.Module,
                    accelerator: Accelerator, label: str, epoch: int, config: FitConfig, set_lr: Callable[[int], None],
                    penalty: Callable[[], torch.Tensor] | None = None, world: World | None = None,
                    objective: Objective | None = None,
                    adaptation: DomainAdaptation | None = None,
                    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    average: WeightAverage | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns the objective's training figures (classification: mean loss and accuracy)
    over every process, from its meter's sums reduced over the processes, and the throughput (samples of all
    processes per second of the slowest) — and, when adapting, the domain discriminator's figures. Stops with a
    :class:`NonFiniteLossError` before a NaN or infinite loss can reach the weights. ``average`` (``--ema``) moves
    towards the weights after every optimizer step."""
    objective = objective or ClassificationObjective()
    set_train_mode(model, config.bn)
    meter, start = objective.meter(), time.perf_counter()
    bar = tqdm(loader, desc=label, leave=False, disable=not (config.progress and accelerator.is_local_main_process))
    for step, (inputs, targets) in enumerate(bar):
        set_lr(step)
        if batch_transform is not None:  # on-device augmentation: crop parameters -> images
            inputs = batch_transform(inputs)
        if config.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if adaptation is not None:  # one forward over source + target batches; the loss adds the domain loss
            with accelerator.autocast():
                outputs, loss = adaptation.step(model, inputs, targets, loss_fn, step)
        else:
            outputs, loss = objective.step(net, inputs, targets, loss_fn)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"The training loss became {value} at epoch {epoch + 1}, step {step + 1} ({label}). Likely cause: a "
                "learning rate too high for this model and data, or NaN/Inf values in the inputs. Fix: start again "
                "with a lower --lr / --head-lr (the run folder keeps its last good checkpoint; --resume retries from "
                "it with the same settings).")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss + penalty() if penalty is not None else loss)
        optimizer.step()
        if average is not None:
            average.update(model)
        meter.add(value, outputs, targets)
        bar.set_postfix(**meter.postfix(), per_s=f"{meter.samples / max(time.perf_counter() - start, 1e-9):.0f}")
    world = world or World()
    (*totals, seen), (seconds,) = (world.sum([*meter.totals(), meter.samples]),
                                   world.max([time.perf_counter() - start]))
    return {**meter.result(totals), "samples_per_s": round(seen / max(seconds, 1e-9), 1),
            **(adaptation.epoch_figures() if adaptation is not None else {})}


@torch.no_grad()
def evaluate_loss(net: nn.Module, loader: DataLoader, loss_fn: nn.Module, accelerator: Accelerator,
                  world: World | None = None, objective: Objective | None = None,
                  tta: bool = False) -> dict[str, float]:
    """The objective's validation figures (classification: mean loss and accuracy) over the validation set:
    ``loader`` holds this process's share of it, and the objective's sums (a segmentation confusion matrix
    included) are reduced over the processes, so each sample counts exactly once. ``tta``: each image's figures
    come from the mean softmax of it and its horizontal flip (:func:`flip_tta_log_probs`)."""
    objective = objective or ClassificationObjective()
    net.eval()
    totals = objective.zeros()
    for inputs, targets in loader:
        inputs, targets = send_to_device((inputs, targets), accelerator.device)
        outputs = flip_tta_log_probs(net, inputs) if tta else net(inputs)
        totals += objective.figures(outputs, targets).cpu().double()
    return objective.summarise((world or World()).sum(totals.tolist()))


def flip_tta_log_probs(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: the log of the mean softmax of ``images`` (N, C, H, W) and their horizontal flips.
    Log-probabilities are logits whose softmax is that mean (they sum to one), so losses and accuracies read them
    as they read logits."""
    probabilities = (torch.softmax(net(images).float(), dim=1) + torch.softmax(net(images.flip(-1)).float(), dim=1)) / 2
    return torch.log(probabilities.clamp_min(1e-12))


def exact_head_fit(model: TransferModel, features: HeadFeatures, config: FitConfig,
                   world: World | None = None) -> tuple[dict, dict]:
    """The exact-fit step: the linear head fitted on the cached features with L-BFGS (see :mod:`.headfit`);
    returns metrics shaped like an epoch's. With several processes rank 0 fits it once and sends the head and the
    metrics to the others (the fit is deterministic, but re-running it everywhere would only cost time)."""
    world = world or World()
    fitted = _fit_head(model, features, config) if world.is_main else None
    head, train_metrics, val_metrics = world.broadcast(fitted)
    if not world.is_main:
        model.linear_head().load_state_dict(head)
    return train_metrics, val_metrics


def _fit_head(model: TransferModel, features: HeadFeatures, config: FitConfig) -> tuple[dict, dict, dict]:
    start = time.perf_counter()
    (x_train, y_train), (x_val, y_val) = features.arrays()
    weight = torch.tensor(config.class_weights) if config.class_weights else None
    result = fit_linear_head(model.linear_head(), x_train, y_train, x_val, y_val, class_weights=weight)
    seconds = time.perf_counter() - start
    return (cpu_state_dict(model.linear_head()),
            {"loss": result.train_loss, "accuracy": result.train_accuracy,
             "samples_per_s": round(len(y_train) / max(seconds, 1e-9), 1), "exact_fit_l2": result.l2,
             "exact_fit_converged": result.converged, "exact_fit_iterations": result.iterations},
            {"loss": result.val_loss, "accuracy": result.val_accuracy})


def _backbone_names(groups: list[LayerGroup]) -> frozenset[str]:
    return frozenset(g.name for g in groups[:-1])

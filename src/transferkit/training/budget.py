"""``--budget SECONDS``: fit the phases to the time that is left, and estimate, before a phase that trains the
network on images starts, whether one epoch of it still fits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Protocol

import torch
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import DataLoader

from ..strategies import Phase


class PhasePosition(Protocol):
    """Where the run is (the loop's ``TrainState`` has these)."""

    phase_index: int
    phase_epoch: int

logger = logging.getLogger("transferkit")

# Samples of the first validation batch the estimate times: a small slice keeps the estimate cheap (a MiniLM batch of 32
# texts at 512 tokens takes ~4 s forward on 2 CPU cores) while still filling the cores.
ESTIMATE_SAMPLES = 8


def fit_to_budget(phases: list[Phase], state: PhasePosition, phase_over: bool, epoch_seconds: float,
                  seconds_left: float, next_epoch: Callable[[tuple[str, ...]], float | None] | None = None
                  ) -> tuple[list[Phase], bool]:
    """After an epoch that took ``epoch_seconds``, with ``seconds_left``, shorten the current phase so the epochs
    that still fit end its schedule (its cosine completes, leaving one epoch for each later phase), or say the run
    must stop now (no epoch fits: the best epoch's weights are kept). At a phase boundary the next phase is fitted
    from an estimate of its first epoch instead (:func:`fit_next_phase`). Returns (phases, stop)."""
    if seconds_left <= 0:
        return phases, True
    if phase_over:
        return fit_next_phase(phases, state.phase_index, seconds_left, next_epoch)
    fits = int(seconds_left // max(epoch_seconds, 1e-9))
    if fits == 0:
        return phases, True
    current = phases[state.phase_index]
    later = sum(p.runs_on != "exact-fit" for p in phases[state.phase_index + 1:])
    remaining = current.epochs - state.phase_epoch
    keep = min(remaining, max(1, fits - later))
    if keep < remaining:
        logger.info("Budget: %.0f s left, an epoch of %s takes %.1f s: %d more epoch(s) of it instead of %d (its LR "
                    "schedule ends with them)", seconds_left, current.name, epoch_seconds, keep, remaining)
        phases = [*phases[:state.phase_index], replace(current, epochs=state.phase_epoch + keep),
                  *phases[state.phase_index + 1:]]
    return phases, False


def fit_next_phase(phases: list[Phase], index: int, seconds_left: float,
                   next_epoch: Callable[[tuple[str, ...]], float | None] | None) -> tuple[list[Phase], bool]:
    """At a phase boundary, with ``seconds_left``: ``next_epoch(groups)`` estimates the first epoch of phase
    ``index`` when those of its groups train (an :class:`EpochEstimate`; ``None``: no estimate, the phase
    measures itself with its first epoch). The phase gets the epochs the estimate fits (leaving one for each later
    phase), so its LR schedule ends within the budget. When not one epoch of it fits, only its top groups train —
    as many as fit, the head and at least one group below it: the backward then stops early, and the frozen layers
    keep their pre-trained weights — and when none fits, the run stops there rather than overrun by an epoch.
    Returns (phases, stop)."""
    if next_epoch is None or index >= len(phases):
        return phases, False
    phase = phases[index]
    names = tuple(phase.lrs)  # input to output, the head last (build_phases' order)
    estimate = next_epoch(names)
    if estimate is None:
        return phases, False
    logger.info("Budget: %.0f s left; the next phase's first epoch should take about %.0f s", seconds_left, estimate)
    if estimate > seconds_left:
        found = _top_groups_that_fit(names, seconds_left, next_epoch)
        if found is None:
            return phases, True
        top, estimate = found
        logger.info("Budget: %s trains only its top %d of %d groups (%s..%s), about %.0f s an epoch", phase.name,
                    len(top), len(names), top[0], top[-1], estimate)
        phase = replace(phase, name=f"{top[0]}..{top[-1]}", lrs={name: phase.lrs[name] for name in top})
    later = sum(p.runs_on != "exact-fit" for p in phases[index + 1:])
    epochs = min(phase.epochs, max(1, int(seconds_left // max(estimate, 1e-9)) - later))
    if epochs < phase.epochs:
        logger.info("Budget: %d epoch(s) of %s instead of %d (its LR schedule ends with them)", epochs, phase.name,
                    phase.epochs)
    return [*phases[:index], replace(phase, epochs=epochs), *phases[index + 1:]], False


def _top_groups_that_fit(names: tuple[str, ...], seconds_left: float,
                         next_epoch: Callable[[tuple[str, ...]], float | None]) -> tuple[tuple[str, ...], float] | None:
    """The most top groups (at least the head and one below it, fewer than all) whose epoch fits, and its estimate;
    a binary search, since an epoch costs more the more groups train (3 estimates for 9 groups)."""
    low, high, found = 2, len(names) - 1, None
    while low <= high:
        count = (low + high) // 2
        estimate = next_epoch(names[-count:])
        if estimate is not None and estimate <= seconds_left:
            found, low = (names[-count:], estimate), count + 1
        else:
            high = count - 1
    return found


class EpochEstimate:
    """Estimates of one epoch of the network on its inputs, timed on the first :data:`ESTIMATE_SAMPLES` samples of
    the first validation batch: an inference forward (what a validation sample costs) and a training step, forward
    and backward through the parameters a phase trains (what a training sample costs), in train mode (dropout
    included). The slice is drawn and its forward timed once, at the first call; each call times a training step
    for its own ``trains(name)`` (all parameters when ``None``), so the estimates of one phase boundary (the top
    groups' search) share them.

    Nothing changes: buffers (BatchNorm statistics), every module's mode and ``requires_grad`` are restored,
    gradients are returned by ``torch.autograd.grad`` instead of written to ``.grad``, and the random generators are
    untouched. The inference forward runs twice and the faster counts (the first pays one-time costs, kernel
    selection and caches, that no epoch repeats), and a text batch (a dict of token tensors) counts its texts, not
    its keys.

    History (issue 16): an inference forward times 3, then 4, stood in for the training step; measured ratios vary
    by network and input (3.2-4.0 for image networks, 4.1-5.9 for MiniLM at 512 tokens), and on BBC News a
    fine-tuning epoch estimated at 41 s took 66 s. Before that, a text batch counted its keys, and MiniLM's estimate
    was 5x its epoch."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, device: torch.device):
        self.model, self.train_loader, self.val_loader, self.device = model, train_loader, val_loader, device
        self._inputs: object = None
        self._count, self._forward = 0, 0.0

    def __call__(self, trains: Callable[[str], bool] | None = None) -> float:
        if self._inputs is None:
            self._time_forward()
        step = self._time_step(trains)
        return (step * _samples(self.train_loader) + self._forward * _samples(self.val_loader)) / self._count

    def _time_forward(self) -> None:
        with torch.random.fork_rng(devices=[]):  # starting the loader draws its base seed: the global RNG stays
            inputs, targets = next(iter(self.val_loader))  # the targets count the batch, whatever form the inputs take
        self._count = min(ESTIMATE_SAMPLES, max(1, len(targets)))
        self._inputs = send_to_device(_first(inputs, self._count), self.device)
        with _untouched(self.model):
            self.model.eval()
            with torch.no_grad():
                self._forward = min(_timed(lambda: self.model(self._inputs), self.device) for _ in range(2))

    def _time_step(self, trains: Callable[[str], bool] | None) -> float:
        params = [p for name, p in self.model.named_parameters() if trains is None or trains(name)]
        if not params:
            return self._forward
        with _untouched(self.model), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            self.model.train()  # dropout costs: MiniLM's attention dropout makes a train-mode step 2x an eval-mode one
            return _timed(lambda: torch.autograd.grad(_scalar(self.model(self._inputs)), params, allow_unused=True),
                          self.device)


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restores what timing a model may change: ``requires_grad``, every module's mode, the buffers."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]  # BatchNorm statistics a train-mode step updates
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _timed(run: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _first(inputs: object, count: int) -> object:
    """The first ``count`` samples of a batch: a tensor, or a dict / list / tuple of them (a text batch)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:count]
    if isinstance(inputs, dict):
        return {k: _first(v, count) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_first(v, count) for v in inputs)
    return inputs


def _scalar(outputs: object) -> torch.Tensor:
    """One number that depends on every output, to differentiate (the loss's place; its value does not matter)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float().mean()
    values = outputs.values() if isinstance(outputs, dict) else outputs
    return sum((_scalar(v) for v in values if isinstance(v, (torch.Tensor, dict, list, tuple))),
               torch.zeros(()))


def _samples(loader: DataLoader) -> int:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset)
    except TypeError:
        return len(loader) * (getattr(loader, "batch_size", None) or 1)

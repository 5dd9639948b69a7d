"""``--budget SECONDS``: fit the phases to the time that is left, and estimate, before a phase that trains the
network on images starts, whether one epoch of it still fits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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

# A training step (forward, backward, optimizer) costs about this many inference forwards of the same batch. With
# --cpu-allocator auto (which speeds inference up more than training): 3.2-4.0x for EfficientNet-Lite0, ResNet-18
# and ResNet-50 at 224 px (benchmarks/cpu_allocator.py) and 4.1x for MiniLM-L6 on 512 tokens (5.9x without it). At 3
# (the value before), the peers run's --budget 60 on BBC News started a fine-tuning epoch with 47 s left that took
# 67 s; at 4 that estimate no longer fits, and an image epoch is over- rather than under-estimated.
TRAIN_STEP_FORWARDS = 4.0


def fit_to_budget(phases: list[Phase], state: PhasePosition, phase_over: bool, epoch_seconds: float,
                  seconds_left: float, next_epoch: Callable[[], float | None] | None = None
                  ) -> tuple[list[Phase], bool]:
    """After an epoch that took ``epoch_seconds``, with ``seconds_left``, shorten the current phase so the epochs
    that still fit end its schedule (its cosine completes, leaving one epoch for each later phase), or say the run
    must stop now (no epoch fits: the best epoch's weights are kept). At a phase boundary ``next_epoch`` estimates
    the next phase's first epoch (:func:`estimate_epoch_seconds`; ``None``: no estimate, the phase measures itself
    with its first epoch): when even that does not fit, the run stops there instead of overrunning by a whole epoch.
    Returns (phases, stop)."""
    if seconds_left <= 0:
        return phases, True
    if phase_over:
        estimate = next_epoch() if next_epoch is not None else None
        if estimate is None:
            return phases, False
        logger.info("Budget: %.0f s left; the next phase's first epoch should take about %.0f s", seconds_left,
                    estimate)
        return phases, estimate > seconds_left
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


@torch.no_grad()
def estimate_epoch_seconds(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                           device: torch.device) -> float:
    """Seconds of one epoch of the whole network on its inputs, from timed inference forwards of the first
    validation batch (eval mode, no gradients: no weight, statistic or random state changes): training samples
    cost :data:`TRAIN_STEP_FORWARDS` forwards each, validation samples one. The batch runs twice and the faster
    forward counts (a first forward pays one-time costs, kernel selection and caches, that no epoch repeats), and
    a text batch (a dict of token tensors) counts its texts, not its keys: before, MiniLM's estimate was about 5x
    an epoch's real time (issue 16: 495 s predicted, ~100 s run)."""
    inputs, targets = next(iter(val_loader))  # the targets count the batch, whatever form the inputs take
    inputs = send_to_device(inputs, device)
    was_training = model.training
    model.eval()
    try:
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            model(inputs)
            seconds.append(time.perf_counter() - start)
        per_sample = min(seconds) / max(1, len(targets))
    finally:
        model.train(was_training)
    return per_sample * (TRAIN_STEP_FORWARDS * _samples(train_loader) + _samples(val_loader))


def _samples(loader: DataLoader) -> int:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset)
    except TypeError:
        return len(loader) * (getattr(loader, "batch_size", None) or 1)

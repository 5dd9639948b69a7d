"""Callbacks observe the loop and raise flags; they never rewrite it.

``EarlyStopping`` is the one the loop always uses: it tracks the best validation accuracy (ties broken
by the lower validation loss) and says when ``patience`` epochs passed without improvement — or, opted into with
``relative``, when a share of the phase's own schedule passed without improvement, never during its warm-up — and,
with ``after_lr``, never while the phase's learning rate is still near its peak (``train``'s default: the schedule is
not fought, see :func:`held_epochs`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


class Callback:
    """Hooks called by :func:`transferkit.training.loop.fit`. Set ``state.stop_requested`` to end training."""

    def on_epoch_start(self, state: Any) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class EarlyStopping:
    """Stop a phase after ``patience`` epochs without a better validation accuracy *within that phase*,
    and remember the best epoch of the whole run (whose weights are restored at the end).

    A phase is judged against its own best, not the run's: right after unfreezing, validation accuracy
    usually dips before it climbs past the head-only result, and that dip must not end the phase.

    With ``relative`` > 0 (the convergence rule of a long from-scratch schedule; off by default) the patience
    scales with the schedule: a phase of E epochs stops after ``max(patience, ceil(relative * E))`` epochs
    without improvement, and epochs inside the phase's warm-up (the first ``ceil(warmup * E)``, set by
    :meth:`start_phase`) never count against it: a run is not judged while its learning rate is still rising.
    Under this rule only a higher validation accuracy resets the count (a validation loss still creeping down at a
    saturated accuracy is not progress); the best epoch of the run is still chosen with the loss as tie-break.

    With ``after_lr`` set (``train``'s default 0.5, ``--patience-after-lr``) the epochs that do not count are those
    that end while the phase's warm-up + cosine LR is still above ``after_lr`` times its peak (the warm-up included,
    :func:`held_epochs`): right after unfreezing, the high-LR epochs of a fine-tuning phase often score below the
    phase's first epoch (and the head-only probe) before the decaying LR lets them climb past it; judging those
    epochs ended 20-epoch phases after 4 (issue 16).

    Attributes:
        patience: epochs without improvement before stopping; ``None`` or 0 never stops.
        min_delta: how much higher the accuracy must be to count as better.
        relative: patience as a share of the phase's epochs (0: the fixed ``patience`` alone).
        after_lr: epochs count against the patience only once the LR has decayed to this share of its peak
            (``None``: only the warm-up is exempt, and only with ``relative``; 1: the warm-up alone).
    """

    patience: int | None = 3
    min_delta: float = 0.0
    relative: float = 0.0
    after_lr: float | None = None
    best: float | None = None
    best_loss: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    phase_best: float | None = None
    phase_best_loss: float | None = None
    phase_epochs: int = 0  # epochs judged in the current phase
    phase_patience: int | None = None  # set by start_phase when ``relative`` is on
    warmup_epochs: int = 0  # the phase's first epochs that never count (the warm-up; with after_lr, the high LR)

    def start_phase(self, epochs: int, warmup: float = 0.0, offset: int = 0, total: int | None = None) -> None:
        """The current phase's length (``epochs``) and warm-up (a fraction of its steps): they set the relative
        patience and the epochs that do not count. With one schedule over several phases (``--schedule single``)
        the phase starts ``offset`` epochs into a schedule of ``total`` epochs, and the held epochs are read from
        that curve (``None``: the phase has its own schedule). Safe to call again on resume (counters are kept)."""
        if self.relative:
            self.phase_patience = max(self.patience or 0, math.ceil(self.relative * epochs)) if self.patience else 0
        if self.after_lr is not None:
            self.warmup_epochs = held_epochs(epochs, warmup, self.after_lr, offset, total)
        elif self.relative:
            span = epochs if total is None else total
            in_warmup = math.ceil(round(warmup * span, 9)) - offset if warmup else 0
            self.warmup_epochs = min(epochs, max(0, in_warmup))

    @property
    def _holds(self) -> bool:
        """Whether the phase's first ``warmup_epochs`` are exempt."""
        return bool(self.relative) or self.after_lr is not None

    def update(self, accuracy: float, loss: float, epoch: int) -> bool:
        """Record an epoch's validation result; returns True when it is the best of the run so far."""
        self.phase_epochs += 1
        if self.relative:  # convergence: only a higher accuracy counts (a loss creeping towards 0 is no progress)
            improved = self.phase_best is None or accuracy > self.phase_best + self.min_delta
        else:
            improved = self._better(accuracy, loss, self.phase_best, self.phase_best_loss)
        if improved:
            self.phase_best, self.phase_best_loss, self.bad_epochs = accuracy, loss, 0
        elif not (self._holds and self.phase_epochs <= self.warmup_epochs):
            self.bad_epochs += 1
        better = self._better(accuracy, loss, self.best, self.best_loss)
        if better:
            self.best, self.best_loss, self.best_epoch = accuracy, loss, epoch
        return better

    def _better(self, accuracy: float, loss: float, best: float | None, best_loss: float | None) -> bool:
        return (best is None or accuracy > best + self.min_delta
                or (accuracy >= best and best_loss is not None and loss < best_loss))

    @property
    def current_patience(self) -> int | None:
        """The patience the current phase is judged by."""
        return self.phase_patience if self.relative and self.phase_patience is not None else self.patience

    @property
    def should_stop(self) -> bool:
        return bool(self.current_patience) and self.bad_epochs >= self.current_patience

    def new_phase(self) -> None:
        """A new phase (e.g. unfreezing) starts its own count; the run's best epoch is kept."""
        self.bad_epochs, self.phase_best, self.phase_best_loss, self.phase_epochs = 0, None, None, 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def held_epochs(epochs: int, warmup: float, after_lr: float, offset: int = 0, total: int | None = None) -> int:
    """How many of a phase's first epochs end while its LR is still above ``after_lr`` times the peak, on the loop's
    schedule (linear warm-up over ``warmup`` of the steps, then a cosine to zero): epoch ``e`` ends at the fraction
    ``e / epochs`` of the steps, where the cosine's multiplier is ``(1 + cos(pi * p)) / 2`` at progress ``p`` past the
    warm-up. The warm-up's epochs are always held (the old rule: ``ceil(warmup * epochs)``). With 10% warm-up and
    ``after_lr`` 0.5 a 20-epoch phase is judged from epoch 11 on, a 10-epoch phase from epoch 6.

    With one schedule across phases (``--schedule single``) the phase starts ``offset`` epochs into a schedule of
    ``total`` epochs: its epoch ``e`` ends at ``(offset + e) / total``, and a phase that starts after the LR has
    decayed below ``after_lr`` holds none."""
    if not 0 < after_lr <= 1:
        raise ValueError(f"after_lr must be in (0, 1], got {after_lr}")
    total = epochs if total is None else total
    in_warmup = math.ceil(round(warmup * total, 9)) if warmup else 0
    # the multiplier falls to after_lr at this fraction of the schedule's steps
    fraction = warmup + (1 - warmup) * math.acos(2 * after_lr - 1) / math.pi
    above = math.ceil(round(fraction * total, 9)) - 1  # epochs ending strictly before that point
    return min(epochs, max(0, in_warmup - offset, above - offset))

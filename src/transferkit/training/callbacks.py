"""Callbacks observe the loop and raise flags; they never rewrite it.

``EarlyStopping`` is the one the loop always uses: it tracks the best validation accuracy (ties broken
by the lower validation loss) and says when ``patience`` epochs passed without improvement — or, opted into with
``relative``, when a share of the phase's own schedule passed without improvement, never during its warm-up.
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

    Attributes:
        patience: epochs without improvement before stopping; ``None`` or 0 never stops.
        min_delta: how much higher the accuracy must be to count as better.
        relative: patience as a share of the phase's epochs (0: the fixed ``patience`` alone).
    """

    patience: int | None = 3
    min_delta: float = 0.0
    relative: float = 0.0
    best: float | None = None
    best_loss: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    phase_best: float | None = None
    phase_best_loss: float | None = None
    phase_epochs: int = 0  # epochs judged in the current phase
    phase_patience: int | None = None  # set by start_phase when ``relative`` is on
    warmup_epochs: int = 0

    def start_phase(self, epochs: int, warmup: float = 0.0) -> None:
        """The current phase's length (``epochs``) and warm-up (a fraction of its steps): they set the relative
        patience and the epochs that do not count. Safe to call again on resume (counters are kept)."""
        if self.relative:
            self.phase_patience = max(self.patience or 0, math.ceil(self.relative * epochs)) if self.patience else 0
            self.warmup_epochs = math.ceil(warmup * epochs) if warmup else 0

    def update(self, accuracy: float, loss: float, epoch: int) -> bool:
        """Record an epoch's validation result; returns True when it is the best of the run so far."""
        self.phase_epochs += 1
        if self.relative:  # convergence: only a higher accuracy counts (a loss creeping towards 0 is no progress)
            improved = self.phase_best is None or accuracy > self.phase_best + self.min_delta
        else:
            improved = self._better(accuracy, loss, self.phase_best, self.phase_best_loss)
        if improved:
            self.phase_best, self.phase_best_loss, self.bad_epochs = accuracy, loss, 0
        elif not (self.relative and self.phase_epochs <= self.warmup_epochs):
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

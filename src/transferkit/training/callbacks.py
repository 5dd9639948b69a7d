"""Callbacks observe the loop and raise flags; they never rewrite it.

``EarlyStopping`` is the one the loop always uses: it tracks the best validation accuracy (ties broken
by the lower validation loss) and says when ``patience`` epochs passed without improvement.
"""

from __future__ import annotations

import logging
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

    Attributes:
        patience: epochs without improvement before stopping; ``None`` or 0 never stops.
        min_delta: how much higher the accuracy must be to count as better.
    """

    patience: int | None = 3
    min_delta: float = 0.0
    best: float | None = None
    best_loss: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    phase_best: float | None = None
    phase_best_loss: float | None = None

    def update(self, accuracy: float, loss: float, epoch: int) -> bool:
        """Record an epoch's validation result; returns True when it is the best of the run so far."""
        if self._better(accuracy, loss, self.phase_best, self.phase_best_loss):
            self.phase_best, self.phase_best_loss, self.bad_epochs = accuracy, loss, 0
        else:
            self.bad_epochs += 1
        better = self._better(accuracy, loss, self.best, self.best_loss)
        if better:
            self.best, self.best_loss, self.best_epoch = accuracy, loss, epoch
        return better

    def _better(self, accuracy: float, loss: float, best: float | None, best_loss: float | None) -> bool:
        return (best is None or accuracy > best + self.min_delta
                or (accuracy >= best and best_loss is not None and loss < best_loss))

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad_epochs >= self.patience

    def new_phase(self) -> None:
        """A new phase (e.g. unfreezing) starts its own count; the run's best epoch is kept."""
        self.bad_epochs, self.phase_best, self.phase_best_loss = 0, None, None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

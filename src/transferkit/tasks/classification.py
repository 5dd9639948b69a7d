"""Classification: a linear (or one-hidden-layer) head on pooled features, cross-entropy, accuracy and macro-F1.

Its data readers, caches, loaders and predictions are transferkit's original code paths (:mod:`transferkit.data`,
:mod:`transferkit.prepare`, :mod:`transferkit.predict`); this module holds what the shared code asks of every task:
the loop's objective and the names of its figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import Meter, Objective, Task


class ClassificationMeter(Meter):
    """Mean loss and accuracy over the epoch's examples."""

    def __init__(self) -> None:
        self.total_loss, self.correct, self.samples = 0.0, 0, 0

    def add(self, loss: float, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.total_loss += loss * targets.size(0)
        self.correct += (outputs.argmax(dim=1) == targets).sum().item()
        self.samples += targets.size(0)

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.total_loss / self.samples:.3f}", "acc": f"{self.correct / self.samples:.3f}"}

    def totals(self) -> list[float]:
        return [self.total_loss, self.correct, self.samples]

    def result(self, totals: Sequence[float]) -> dict[str, float]:
        total_loss, correct, samples = totals
        return {"loss": total_loss / max(samples, 1), "accuracy": correct / max(samples, 1)}


class ClassificationObjective(Objective):
    """Cross-entropy (class weights, label smoothing); validation loss and accuracy from sums over examples."""

    monitor = "accuracy"

    def criterion(self, config: Any) -> nn.Module:
        weight = torch.tensor(config.class_weights) if config.class_weights else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)

    def meter(self) -> Meter:
        return ClassificationMeter()

    def zeros(self) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64)

    def figures(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy, correct predictions, examples."""
        loss = nn.functional.cross_entropy(outputs.float(), targets, reduction="none").double().sum()
        hits = (outputs.argmax(dim=1) == targets).sum().double()
        return torch.stack([loss, hits, torch.tensor(float(len(targets)), dtype=torch.float64, device=loss.device)])

    def summarise(self, totals: Sequence[float]) -> dict[str, float]:
        loss, hits, count = totals
        return {"loss": loss / max(count, 1), "accuracy": hits / max(count, 1)}


class ClassificationTask(Task):
    name = "classification"
    description = "one label per image or text"

    def objective(self, config: Any = None, data: Any = None) -> Objective:
        return ClassificationObjective()


CLASSIFICATION = ClassificationTask()

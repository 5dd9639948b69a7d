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

    def result(self) -> dict[str, float]:
        return {"loss": self.total_loss / max(self.samples, 1), "accuracy": self.correct / max(self.samples, 1)}


class ClassificationObjective(Objective):
    """Cross-entropy (class weights, label smoothing); validation loss and accuracy per example."""

    monitor = "accuracy"

    def criterion(self, config: Any) -> nn.Module:
        weight = torch.tensor(config.class_weights) if config.class_weights else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)

    def meter(self) -> Meter:
        return ClassificationMeter()

    def figures(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        per_example = nn.functional.cross_entropy(outputs.float(), targets, reduction="none")
        return per_example, (outputs.argmax(dim=1) == targets).float()

    def summarise(self, figures: Sequence[tuple[torch.Tensor, ...]]) -> dict[str, float]:
        losses, hits = zip(*figures, strict=True)
        return {"loss": torch.cat(losses).mean().item(), "accuracy": torch.cat(hits).mean().item()}


class ClassificationTask(Task):
    name = "classification"
    description = "one label per image or text"

    def objective(self, config: Any = None, data: Any = None) -> Objective:
        return ClassificationObjective()


CLASSIFICATION = ClassificationTask()

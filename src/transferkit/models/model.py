"""``TransferModel``: a pre-trained body, a new head, its layer groups and its preprocessing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import bad_value, check_int, check_range
from .groups import LayerGroup, coarsen
from .preprocessing import Preprocessing


def check_dropout(name: str, value: object) -> float | None:
    return None if value is None else check_range(name, value, 0, 1, example=0.2)


def check_hidden(name: str, value: object) -> int:
    return check_int(name, value, 0, "0 (no hidden layer) or a positive integer", 512)


@dataclass(frozen=True)
class HeadConfig:
    """The new task head: ``dropout -> [Linear(hidden) -> ReLU -> dropout] -> Linear(num_classes)``."""

    num_features: int
    num_classes: int
    dropout: float = 0.0
    hidden: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise bad_value("num_classes", self.num_classes, "at least 2",
                            "A classifier needs two or more classes in the training data.")
        check_dropout("dropout", self.dropout)
        check_hidden("hidden", self.hidden)

    def build(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        width = self.num_features
        if self.dropout:
            layers.append(nn.Dropout(self.dropout))
        if self.hidden:
            layers += [nn.Linear(width, self.hidden), nn.ReLU(inplace=True)]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            width = self.hidden
        layers.append(nn.Linear(width, self.num_classes))
        return nn.Sequential(*layers)

    def describe(self) -> str:
        parts = [f"Dropout({self.dropout})"] if self.dropout else []
        if self.hidden:
            parts.append(f"Linear({self.num_features}→{self.hidden}) → ReLU")
            parts.append(f"Linear({self.hidden}→{self.num_classes})")
        else:
            parts.append(f"Linear({self.num_features}→{self.num_classes})")
        return " → ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelSpec:
    """How to rebuild the architecture without downloading anything (saved with every run).

    Attributes:
        kind: ``timm``, ``torchvision`` or ``builtin``.
        name: architecture name for that source (e.g. ``tf_efficientnet_lite0``).
        spec: what the user typed (e.g. ``efficientnet_lite0``).
        weights: where the starting weights came from (``pretrained``, a file path, ``random``).
        replaced: the pre-trained classifier that the new head replaced, for the report.
    """

    kind: str
    name: str
    spec: str
    weights: str
    replaced: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class TransferModel(nn.Module):
    """A backbone that maps images to pooled features, and a head that maps features to classes.

    Args:
        backbone: the pre-trained body; ``backbone(x)`` returns pooled features ``(N, num_features)``.
        head_config: the new head's shape.
        preprocessing: what inputs must look like (from the weights).
        spec: how to rebuild this architecture offline.
        backbone_groups: the backbone's parameter names grouped from input to output.
    """

    modality = "image"
    task = "classification"  # what the head predicts (a name in transferkit.tasks.TASKS)

    def __init__(self, backbone: nn.Module, head_config: HeadConfig, preprocessing: Preprocessing,
                 spec: ModelSpec, backbone_groups: list[LayerGroup]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head_config.build()
        self.head_config = head_config
        self.preprocessing = preprocessing
        self.spec = spec
        self._backbone_groups = backbone_groups

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: Any) -> torch.Tensor:
        """Logits for a batch (an image tensor; for language models, a dict of token tensors)."""
        return self.head(self.forward_features(x))

    @property
    def num_classes(self) -> int:
        return self.head_config.num_classes

    @property
    def is_text(self) -> bool:
        """The one answer to "is this a language model?" (inputs are token dicts, not image tensors)."""
        return self.modality == "text"

    def linear_head(self) -> nn.Linear | None:
        """The head's only ``nn.Linear`` when the head is linear (dropout aside), else ``None``."""
        layers = [m for m in self.head if not isinstance(m, nn.Dropout)]
        return layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None

    def layer_groups(self, n: int | None = None) -> list[LayerGroup]:
        """Parameter groups from input to output; the new head is always the last one.

        Args:
            n: merge neighbouring backbone groups so that ``n`` groups remain (head included).
        """
        groups = [LayerGroup(g.name, tuple(f"backbone.{p}" for p in g.param_names))
                  for g in self._backbone_groups]
        groups.append(LayerGroup("head", tuple(f"head.{p}" for p, _ in self.head.named_parameters())))
        return coarsen(groups, n)

    def describe_head(self) -> str:
        replaced = f"replaced {self.spec.replaced}" if self.spec.replaced else "no pre-trained classifier"
        return f"Head: {replaced} with new {self.head_config.describe()}"

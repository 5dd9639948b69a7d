"""Preprocessing that comes from the pre-trained weights, never from constants.

timm keeps it in each model's ``pretrained_cfg`` (read through ``resolve_model_data_config``),
torchvision in its weights enum's ``transforms()``, and the packaged built-ins declare theirs next to
their weights file. This module only carries those values around and turns them into transforms.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import bad_value

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def check_image_size(name: str, value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 2048):
        raise bad_value(name, value, "an integer between 16 and 2048", "Pass e.g. --image-size 128.")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """How images must look to the model: what the pre-training used.

    Attributes:
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by.
        input_size: side of the square crop the network sees.
        crop_pct: fraction of the resized image kept by the centre crop at evaluation
            (resize short side to ``input_size / crop_pct``, then centre-crop ``input_size``).
        interpolation: resampling filter used for resizing.
        source: where the values came from (shown to the user and saved with the run).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    crop_pct: float
    interpolation: str
    source: str

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def with_image_size(self, size: int | None) -> Preprocessing:
        """The same preprocessing at another input size (``--image-size``); the crop ratio is kept."""
        if size is None:
            return self
        check_image_size("image_size", size)
        return replace(self, input_size=size, source=f"{self.source}; input size overridden to {size}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(mean=tuple(data["mean"]), std=tuple(data["std"]), input_size=int(data["input_size"]),
                   crop_pct=float(data["crop_pct"]), interpolation=str(data["interpolation"]),
                   source=str(data.get("source", "saved run")))

    def describe(self) -> str:
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        return (f"input {self.input_size} px (resize {self.resize_size}, {self.interpolation}, centre crop), "
                f"mean ({mean}), std ({std}) — from {self.source}")


def from_timm_model(model: Any, label: str) -> Preprocessing:
    """Read preprocessing from a timm model's ``pretrained_cfg``."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return Preprocessing(
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        input_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        interpolation=_interpolation_name(cfg.get("interpolation", "bilinear")),
        source=f"timm pretrained_cfg of {label}",
    )


def from_torchvision_weights(weights: Any, label: str) -> Preprocessing:
    """Read preprocessing from a torchvision weights enum entry (its ``transforms()`` preset)."""
    preset = weights.transforms()
    crop = int(preset.crop_size[0])
    resize = int(preset.resize_size[0])
    return Preprocessing(
        mean=tuple(float(v) for v in preset.mean),
        std=tuple(float(v) for v in preset.std),
        input_size=crop,
        crop_pct=crop / resize,
        interpolation=_interpolation_name(preset.interpolation),
        source=f"torchvision weights {label}",
    )


def _interpolation_name(value: Any) -> str:
    name = str(getattr(value, "value", value)).lower()
    return name if name in INTERPOLATIONS else "bilinear"

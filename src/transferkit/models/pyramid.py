"""A backbone's multi-scale feature pyramid: what dense tasks (segmentation, detection) put their new heads on.

Any supported vision backbone — a timm model, a torchvision model, a built-in with packaged weights — keeps its
pre-trained weights and parameter names; :class:`FeaturePyramid` only decides which of its feature maps to return:

- timm models: ``forward_intermediates`` at the stage ends of ``feature_info`` (stride 2, 4, 8, 16, 32 for CNNs),
  with the layers after the last stage (final conv, pooling, classifier) pruned away
  (``prune_intermediate_layers``). Models whose stages all share one stride (ViT-style: every block at /16) give
  their last four blocks, resampled to strides 4, 8, 16 and 32 (a "simple feature pyramid", as in ViTDet).
- other modules (torchvision): the modules of the top-level chain (``nn.Sequential`` children unrolled) are run
  once on an example, and at each stride the last module's output is taken (forward hooks).

The output follows segmentation-models-pytorch's encoder convention, so its decoders take it as is: a list of six
maps, the input itself (stride 1), then strides 2, 4, 8, 16, 32 — a model without a stride-2 stage gives an empty
(0-channel) map there. Inputs must divide by 32: callers pad (see :mod:`transferkit.tasks.segmentation`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TransferKitError

logger = logging.getLogger(__name__)

STRIDES = (2, 4, 8, 16, 32)
"""The strides of the pyramid's levels after the input; the largest is what inputs must divide by."""
OUTPUT_STRIDE = STRIDES[-1]


@dataclass(frozen=True)
class PyramidLayout:
    """Which of the backbone's maps make the pyramid (saved with a run, so a reloaded model needs no example pass).

    Attributes:
        method: ``timm`` (``forward_intermediates``) or ``hooks`` (outputs of named modules).
        taps: timm: the ``forward_intermediates`` indices; hooks: the module names, in forward order.
        reductions: the stride of each tapped map.
        channels: the channels of each tapped map.
        flat: every tap has the same stride (ViT-style): resample the last four to strides 4..32.
    """

    method: str
    taps: tuple
    reductions: tuple[int, ...]
    channels: tuple[int, ...]
    flat: bool

    def levels(self) -> list[int | None]:
        """For each stride in :data:`STRIDES`, the index of the tap that gives it (``None``: an empty level)."""
        if self.flat:
            return [None, *range(len(self.taps) - 4, len(self.taps))]
        return [max((i for i, r in enumerate(self.reductions) if r == s), default=None) for s in STRIDES]

    def out_channels(self, in_channels: int = 3) -> list[int]:
        """Channels of the pyramid's maps: the input, then one per stride (0 for an empty level)."""
        return [in_channels] + [0 if i is None else self.channels[i] for i in self.levels()]

    def describe(self) -> str:
        parts = []
        for stride, index in zip(STRIDES, self.levels(), strict=True):
            if index is not None:
                tap = self.taps[index]
                source = f"block {tap}" if self.method == "timm" and self.flat else (
                    f"stage {tap}" if self.method == "timm" else str(tap))
                resampled = " resampled" if self.flat and self.reductions[index] != stride else ""
                parts.append(f"/{stride} {source} ({self.channels[index]} ch{resampled})")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"method": self.method, "taps": list(self.taps), "reductions": list(self.reductions),
                "channels": list(self.channels), "flat": self.flat}

    @classmethod
    def from_dict(cls, data: dict) -> PyramidLayout:
        return cls(data["method"], tuple(data["taps"]), tuple(data["reductions"]), tuple(data["channels"]),
                   bool(data["flat"]))


class FeaturePyramid(nn.Module):
    """A backbone returning its feature pyramid (see the module docstring). ``body`` keeps the backbone's own
    parameter names, so its pre-trained weights, layer groups and BatchNorm policy apply unchanged."""

    def __init__(self, body: nn.Module, layout: PyramidLayout) -> None:
        super().__init__()
        self.body = body
        self.layout = layout
        self._captured: dict[str, torch.Tensor] = {}
        if layout.method == "hooks":
            for name in layout.taps:
                body.get_submodule(name).register_forward_hook(self._capture(name))

    def _capture(self, name: str):
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            self._captured[name] = output
        return hook

    @property
    def out_channels(self) -> list[int]:
        return self.layout.out_channels()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's tapped maps (NCHW), in ``layout.taps`` order."""
        if self.layout.method == "timm":
            return list(self.body.forward_intermediates(x, indices=list(self.layout.taps), intermediates_only=True))
        self._captured.clear()
        try:
            self.body(x)
            return [self._captured[name] for name in self.layout.taps]
        finally:
            self._captured.clear()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.taps(x)
        height, width = x.shape[-2:]
        pyramid = [x]
        for stride, index in zip(STRIDES, self.layout.levels(), strict=True):
            if index is None:
                pyramid.append(x.new_empty(x.shape[0], 0, height // stride, width // stride))
                continue
            level = maps[index]
            size = (math.ceil(height / stride), math.ceil(width / stride))
            if tuple(level.shape[-2:]) != size:  # flat (ViT-style) models: resample to this level's stride
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False) if \
                    level.shape[-1] < size[1] else F.adaptive_avg_pool2d(level, size)
            pyramid.append(level)
        return pyramid


def feature_pyramid(backbone: nn.Module, name: str, example_size: int = 64) -> FeaturePyramid:
    """The pyramid of a classification backbone (its classifier already removed); timm models are pruned of the
    layers after their last stage.

    Args:
        backbone: the headless backbone (pre-trained weights loaded).
        name: the model source, for error messages.
        example_size: side of the example input used to find the strides of a non-timm model's modules.
    """
    if hasattr(backbone, "forward_intermediates") and hasattr(backbone, "feature_info"):
        layout = _timm_layout(backbone)
        try:
            backbone.prune_intermediate_layers(list(layout.taps), prune_norm=True, prune_head=True)
        except (AttributeError, NotImplementedError, TypeError) as exc:
            logger.info("%s: could not prune the layers after the last stage (%s); they stay unused", name, exc)
    else:
        layout = _hooks_layout(backbone, name, example_size)
    return FeaturePyramid(backbone, layout)


def rebuild_pyramid(backbone: nn.Module, layout: dict) -> FeaturePyramid:
    """The pyramid of a saved run: the same layout, the same pruning (the run's weights are loaded afterwards)."""
    saved = PyramidLayout.from_dict(layout)
    if saved.method == "timm":
        try:
            backbone.prune_intermediate_layers(list(saved.taps), prune_norm=True, prune_head=True)
        except (AttributeError, NotImplementedError, TypeError):
            pass
    return FeaturePyramid(backbone, saved)


def _timm_layout(backbone: nn.Module) -> PyramidLayout:
    info = backbone.feature_info
    entries = info if isinstance(info, list) else [info.info[i] for i in range(len(info.info))]
    reductions = [int(e["reduction"]) for e in entries]
    channels = [int(e["num_chs"]) for e in entries]
    if len(set(reductions)) == 1:  # ViT-style: the last four blocks
        if len(entries) < 4:
            raise TransferKitError(f"The backbone has only {len(entries)} blocks; a flat (ViT-style) feature pyramid "
                                   "takes its last four. Fix: pick a deeper --model.")
        taps = tuple(range(len(entries) - 4, len(entries)))
        return PyramidLayout("timm", taps, tuple(reductions[i] for i in taps), tuple(channels[i] for i in taps),
                             True)
    layout = PyramidLayout("timm", tuple(range(len(entries))), tuple(reductions), tuple(channels), False)
    _check_strides(layout, "timm model")
    return layout


def _chain(module: nn.Module, prefix: str = ""):
    """The modules a plain forward runs one after another: top-level children, ``nn.Sequential`` ones unrolled."""
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, nn.Sequential) and len(child) > 0:
            yield from _chain(child, name + ".")
        else:
            yield name, child


def _hooks_layout(backbone: nn.Module, name: str, example_size: int) -> PyramidLayout:
    """At each stride, the last module of the forward chain whose output has that stride."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for module_name, module in _chain(backbone):
        def hook(m: nn.Module, a: object, output: object, module_name: str = module_name) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                seen.append((module_name, tuple(output.shape)))
        handles.append(module.register_forward_hook(hook))
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 3, example_size, example_size))
    finally:
        backbone.train(was_training)
        for handle in handles:
            handle.remove()
    last: dict[int, tuple[str, int]] = {}
    for module_name, shape in seen:
        stride = example_size // shape[-1] if shape[-1] else 0
        if shape[-1] * stride == example_size and stride in STRIDES:
            last[stride] = (module_name, shape[1])
    taps = sorted(last)
    layout = PyramidLayout("hooks", tuple(last[s][0] for s in taps), tuple(taps), tuple(last[s][1] for s in taps),
                           False)
    _check_strides(layout, name)
    return layout


def _check_strides(layout: PyramidLayout, name: str) -> None:
    missing = [s for s in STRIDES[1:] if s not in layout.reductions]
    if missing:
        raise TransferKitError(f"{name} gives feature maps at strides {sorted(set(layout.reductions))}; a feature "
                               f"pyramid needs 4, 8, 16 and 32 (missing {missing}). Fix: pick a CNN or ViT-style "
                               "--model (e.g. efficientnet_lite0, timm:resnet50.a1_in1k).")


def padding_for(height: int, width: int, multiple: int = OUTPUT_STRIDE) -> tuple[int, int]:
    """Pixels to add at the bottom and right so that both sides divide by ``multiple``."""
    return (-height) % multiple, (-width) % multiple

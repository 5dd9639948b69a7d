"""Which memory layout a network runs in: ``--channels-last``'s rule, shared by training and
``predict``/``evaluate``/``serve``."""

from __future__ import annotations

import torch


def prefers_channels_last(model: torch.nn.Module, on_gpu: bool) -> bool:
    """``auto``. On a GPU: every convolutional network. On the CPU: the ones with BatchNorm (ResNet, EfficientNet,
    MobileNet: 1.1-2.3x faster in ``benchmarks/channels_last.py``), not LayerNorm ones such as ConvNeXt (0.9-1.0x
    there: they permute to channels-last around each norm anyway)."""
    layers = {type(m) for m in model.modules()}
    if not any(issubclass(t, torch.nn.Conv2d) for t in layers):
        return False
    return on_gpu or any(issubclass(t, torch.nn.BatchNorm2d) for t in layers)


def uses_channels_last(model: torch.nn.Module, choice: str, on_gpu: bool) -> bool:
    """``choice``: ``on``, ``off`` or ``auto`` (:func:`prefers_channels_last`)."""
    return choice == "on" if choice != "auto" else prefers_channels_last(model, on_gpu)


def to_layout(model: torch.nn.Module, choice: str, on_gpu: bool) -> torch.nn.Module:
    """``model`` in channels_last where :func:`uses_channels_last` says so (in place; returned for chaining). A
    channels_last model makes PyTorch's convolutions take NCHW inputs in NHWC too."""
    if uses_channels_last(model, choice, on_gpu):
        model.to(memory_format=torch.channels_last)
    return model

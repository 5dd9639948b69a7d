"""Exponential moving average of the weights (``--ema DECAY``), on PyTorch's ``AveragedModel``.

After every optimizer step the average moves towards the live weights: ``average = decay * average + (1 - decay) *
weights`` (``get_ema_multi_avg_fn``); the first update after :meth:`WeightAverage.restart` copies them. Frozen
parameters do not change, so their average stays equal to them.

BatchNorm, explicitly: the running mean and variance (floating-point buffers) are averaged with the same decay as the
weights (``use_buffers=True``, as timm's ``ModelEmaV3`` does by default), so the averaged model's statistics follow the
averaged weights; integer buffers (``num_batches_tracked``) are copied from the live model, not averaged. With
``--bn auto``/``freeze`` on pre-trained layers the statistics never move, and the average keeps them exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _ema_update(decay: float):
    """``AveragedModel``'s multi-tensor update: the EMA for floating-point tensors (grouped by device and dtype),
    a copy for integer ones (BatchNorm's step counters)."""
    ema = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            ema(averaged, current, n)
        else:
            torch._foreach_copy_(averaged, current)

    return update


class WeightAverage:
    """The moving average of a model's weights and BatchNorm statistics.

    Args:
        model: the live model (deep-copied once; the copy holds the average).
        decay: the weight of the old average at each update, in [0, 1); 0 tracks the live weights exactly.
        device: where the average lives (the training device).
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        # AveragedModel deep-copies the model: the average never shares a tensor with the live weights
        self.averaged = AveragedModel(model, device=device, multi_avg_fn=_ema_update(decay), use_buffers=True)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (the live model's architecture)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (the first after a restart copies them)."""
        with torch.no_grad():
            self.averaged.update_parameters(model)

    def restart(self, model: nn.Module) -> None:
        """Start the average again at ``model``'s weights (after a jump such as the exact head fit, which no optimizer
        step made)."""
        self.averaged.n_averaged.zero_()
        self.update(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's tensors (the model's state dict prefixed ``module.``, and ``n_averaged``): a checkpoint
        carries them so a resumed run continues the same average."""
        return {k: v.detach().to("cpu").clone() for k, v in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict on the CPU (keys as the live model's)."""
        return {k: v.detach().to("cpu").clone() for k, v in self.module.state_dict().items()}

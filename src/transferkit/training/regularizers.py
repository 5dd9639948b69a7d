"""Regularisers that guard pre-trained knowledge while fine-tuning."""

from __future__ import annotations

import torch
from torch import nn


def snapshot_backbone(model: nn.Module) -> dict[str, torch.Tensor]:
    """The starting values of the pre-trained (backbone) parameters, for L2-SP."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("backbone.")}


def l2_sp_penalty(model: nn.Module, reference: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """L2-SP (Li et al., 2018): ``alpha / 2 * sum ||w - w0||^2`` over the trainable pre-trained weights,
    pulling them towards their starting point instead of towards zero."""
    total = None
    for name, param in model.named_parameters():
        if param.requires_grad and name in reference:
            start = reference[name]
            if start.device != param.device:
                start = reference[name] = start.to(param.device)
            term = (param - start).pow(2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(model.parameters()).device)
    return 0.5 * alpha * total

"""Strategies as data: each is a list of :class:`Phase` (which layer groups train, at what LR, how long).

``apply_phase`` turns a phase into ``requires_grad`` flags and BatchNorm modes; ``param_groups``
turns it into optimizer parameter groups. The training loop knows nothing about strategy names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

from .errors import bad_value
from .models.model import LayerGroup

STRATEGIES = {
    "linear-probe": "frozen backbone (BatchNorm in eval mode), only the new head trains",
    "fine-tune": "all layers train: pre-trained layers at a small LR, the new head at a larger one",
    "two-stage": "the head alone for --head-epochs, then all layers at the small LR (LP-FT)",
    "scratch": "same architecture with random weights, all layers at a from-scratch LR (the baseline)",
}

BN_POLICIES = {
    "auto": "freeze when starting from pre-trained weights or with batches under 16, else train",
    "freeze": "every BatchNorm layer keeps its running statistics (eval mode); affine weights may train",
    "train": "BatchNorm layers of trainable groups update their statistics (frozen groups never do)",
}

# Rules of thumb: new layers 1e-3, pre-trained layers 1e-4 (10x smaller), from scratch 1e-3..1e-2.
DEFAULT_HEAD_LR = 1e-3
DEFAULT_LR = 1e-4
DEFAULT_SCRATCH_LR = 3e-3


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable groups.

    Attributes:
        name: shown to the user (``head``, ``all``).
        epochs: epochs in this phase.
        lrs: learning rate per trainable layer group name; groups not listed are frozen.
    """

    name: str
    epochs: int
    lrs: dict[str, float] = field(default_factory=dict)

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(self.lrs)

    def to_dict(self) -> dict:
        return asdict(self)


def uses_pretrained_weights(strategy: str) -> bool:
    return strategy != "scratch"


def build_phases(strategy: str, groups: list[LayerGroup], *, epochs: int, head_epochs: int = 3,
                 lr: float | None = None, head_lr: float | None = None) -> list[Phase]:
    """The phases of a named strategy for a model's layer groups (the last group is the head).

    Args:
        strategy: one of :data:`STRATEGIES`.
        groups: the model's layer groups, input to output.
        epochs: epochs of the main phase (for ``two-stage``: of the all-layers stage).
        head_epochs: epochs of the head-only stage of ``two-stage``.
        lr: LR of pre-trained layers (``scratch``: of all layers).
        head_lr: LR of the new head.
    """
    if strategy not in STRATEGIES:
        raise bad_value("strategy", strategy, f"one of {', '.join(STRATEGIES)}", "See `transferkit train --help`.")
    _check_positive("epochs", epochs)
    names = [g.name for g in groups]
    head = names[-1]
    head_lr = DEFAULT_HEAD_LR if head_lr is None else _check_lr("head_lr", head_lr)
    if strategy == "scratch":
        lr = DEFAULT_SCRATCH_LR if lr is None else _check_lr("lr", lr)
        return [Phase("all", epochs, {n: lr for n in names})]
    lr = DEFAULT_LR if lr is None else _check_lr("lr", lr)
    if strategy == "linear-probe":
        return [Phase("head", epochs, {head: head_lr})]
    if strategy == "fine-tune":
        return [Phase("all", epochs, {**{n: lr for n in names[:-1]}, head: head_lr})]
    _check_positive("head_epochs", head_epochs)
    return [Phase("head", head_epochs, {head: head_lr}), Phase("all", epochs, {n: lr for n in names})]


def apply_phase(model: nn.Module, groups: list[LayerGroup], phase: Phase) -> None:
    """Set ``requires_grad`` for the phase: parameters of its groups train, all others are frozen."""
    trainable = {name for g in groups if g.name in phase.lrs for name in g.param_names}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


def resolve_bn_policy(policy: str, strategy: str, batch_size: int) -> str:
    """``auto`` becomes ``freeze`` when layers start from pre-trained weights or batches are under 16
    (small batches give noisy statistics; re-estimating pre-trained statistics on a small, shifted
    dataset undoes what the head learned), and ``train`` for a from-scratch run with batches of 16+."""
    if policy not in BN_POLICIES:
        raise bad_value("bn", policy, f"one of {', '.join(BN_POLICIES)}", "Pass e.g. --bn auto.")
    if policy != "auto":
        return policy
    return "freeze" if uses_pretrained_weights(strategy) or batch_size < 16 else "train"


def set_train_mode(model: nn.Module, bn: str = "train") -> None:
    """``model.train()``, except what must not change: a fully frozen backbone runs in eval mode;
    BatchNorm layers whose parameters are all frozen keep their running statistics; with ``bn="freeze"``
    every BatchNorm layer keeps its running statistics (its affine parameters still train if their
    group does)."""
    model.train()
    backbone = getattr(model, "backbone", None)
    if backbone is not None and not any(p.requires_grad for p in backbone.parameters()):
        backbone.eval()
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if bn == "freeze" or (params and not any(p.requires_grad for p in params)):
                module.eval()


def param_groups(model: nn.Module, groups: list[LayerGroup], phase: Phase,
                 weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: one per trainable layer group and decay kind, each with its LR.
    Biases and normalisation weights (1-d tensors) get no weight decay."""
    params = dict(model.named_parameters())
    result = []
    for group in groups:
        if group.name not in phase.lrs:
            continue
        decay = [params[n] for n in group.param_names if params[n].ndim > 1]
        no_decay = [params[n] for n in group.param_names if params[n].ndim <= 1]
        for tensors, wd, kind in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if tensors:
                result.append({"params": tensors, "lr": phase.lrs[group.name], "weight_decay": wd,
                               "name": f"{group.name}/{kind}"})
    return result


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise bad_value("warmup", warmup_fraction, "a fraction of the phase's steps in [0, 1)",
                        "Pass e.g. --warmup 0.1.")
    warmup = int(round(total_steps * warmup_fraction))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def _check_lr(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise bad_value(name, value, "a learning rate in (0, 1)", f"Pass e.g. --{name.replace('_', '-')} 1e-4.")
    return float(value)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise bad_value(name, value, "a positive integer", f"Pass e.g. --{name.replace('_', '-')} 5.")

"""The frozen prefix of a backbone: the layers before the first one that trains, run once instead of every epoch.

A backbone is cut only where it is a *chain*: its modules (top-level children, nested ``nn.Sequential`` stages
opened up) run one after the other, each on the previous one's output, and nothing else happens in its forward pass.
timm's CNNs (EfficientNet, ResNet, ConvNeXt, MobileNet...) are chains; ViTs (class token, position embeddings) and
language models are not. :func:`backbone_chain` checks it numerically — in eval mode, and in train mode under the
same seed, so a functional dropout in ``forward`` (which a chain of modules would skip) is caught — and returns
``None`` when the backbone is not one.

The prefix of a phase is the chain's modules before the first one holding a trainable parameter. Its outputs can
stand in for it only if they do not change between epochs: :func:`prefix_blockers` names what would make them change
(dropout or drop-path active in training mode, BatchNorm without affine parameters, which keeps learning statistics
while its group is frozen).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

Chain = list[tuple[str, nn.Module]]


def _links(module: nn.Module, prefix: str = "") -> Chain:
    links: Chain = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential) and len(child):
            links += _links(child, path + ".")
        else:
            links.append((path, child))
    return links


def _run(links: Iterable[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor:
    for _, module in links:
        x = module(x)
    return x


@torch.no_grad()
def backbone_chain(backbone: nn.Module, example: torch.Tensor) -> Chain | None:
    """The backbone as a chain of modules (see the module docstring), or ``None`` when running its modules in
    order does not give its output on ``example`` (checked on a copy: running it in train mode must not touch the
    real BatchNorm statistics)."""
    links = _links(backbone)
    if not links:
        return None
    probe = copy.deepcopy(backbone)
    probe_links = _links(probe)
    was_training = backbone.training
    try:
        for training in (False, True):
            probe.train(training)
            torch.manual_seed(0)
            expected = probe(example)
            torch.manual_seed(0)
            got = _run(probe_links, example)
            if not isinstance(expected, torch.Tensor) or expected.shape != got.shape or not torch.allclose(
                    expected, got, rtol=1e-4, atol=1e-5):
                return None
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
        return None
    finally:
        backbone.train(was_training)
    return links


def prefix_cut(chain: Chain, trainable: set[str]) -> int:
    """How many of the chain's first modules hold no parameter in ``trainable`` (backbone-relative names)."""
    for index, (path, module) in enumerate(chain):
        if any(f"{path}.{name}" in trainable for name, _ in module.named_parameters()):
            return index
    return len(chain)


@torch.no_grad()
def prefix_blockers(chain: Chain, cut: int, example: torch.Tensor) -> list[str]:
    """What would make the prefix's output change from epoch to epoch (empty: it may be cached)."""
    prefix = nn.Sequential(*(copy.deepcopy(m) for _, m in chain[:cut]))
    blockers = [f"{path} (BatchNorm without affine parameters learns statistics while frozen)"
                for path, module in chain[:cut] for name, m in module.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not list(m.parameters())]
    prefix.train()
    for m in prefix.modules():  # frozen groups' BatchNorm layers keep their statistics (strategies.set_train_mode)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(prefix(example))
    if not torch.equal(*outputs):
        blockers.append("a random layer (dropout, drop-path) in the frozen layers")
    return blockers


class Prefix(nn.Module):
    """The chain's first ``cut`` modules (the frozen prefix)."""

    def __init__(self, chain: Chain, cut: int) -> None:
        super().__init__()
        self.links = nn.ModuleList(m for _, m in chain[:cut])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.links:
            x = module(x)
        return x


class Suffix(nn.Module):
    """The rest of the backbone after the cached prefix, then the head: what a phase on cached activations trains.
    Its modules are the model's own (the same parameters and buffers)."""

    def __init__(self, chain: Chain, cut: int, head: nn.Module) -> None:
        super().__init__()
        self.links = nn.ModuleList(m for _, m in chain[cut:])
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.links:
            x = module(x)
        return self.head(x)


def chain_links(backbone: nn.Module) -> Chain:
    """The backbone's modules in chain order, unchecked (the plan checked it with :func:`backbone_chain`)."""
    return _links(backbone)

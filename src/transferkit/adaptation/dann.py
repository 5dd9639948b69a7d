"""Unsupervised domain adaptation on the shared training loop: DANN and CDAN+E.

* **DANN** (Ganin et al., JMLR 2016): a domain discriminator learns to tell source from target features; a
  gradient reversal layer between the features and the discriminator makes the feature extractor learn features
  the discriminator cannot tell apart. The reversal coefficient warms up over training progress ``p`` (0 → 1 over
  the run's planned steps) as ``λ(p) = 2 / (1 + exp(−10 p)) − 1``, so the noisy early discriminator does not
  disturb the features.
* **CDAN+E** (Long et al., NeurIPS 2018): the discriminator sees the features conditioned on the classifier's
  (detached) predictions — their outer product, or a random multilinear map of it when that would be wider than
  4,096 — and each example is weighted by ``1 + exp(−entropy)`` of its prediction, so confident examples count
  more. With ImageNet-pre-trained ResNet-50 on Office-31, TLlib reports 79.5% source-only, 86.1% DANN, 87.7% CDAN.

The features aligned are the input of the head's last linear layer: the backbone's pooled features, or the
head's hidden layer (``--hidden``, a bottleneck) when there is one — which is what adapts when the backbone is
frozen (``linear-probe``). Each step runs one forward pass over the source and target batches concatenated.
Target labels are never read: the target images come without them (:func:`unlabelled`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..seeding import derive_seed

METHODS = ("none", "dann", "cdan")
DISCRIMINATOR_WIDTH = 1024
RANDOM_MAP_LIMIT = 4096  # CDAN: above this width the outer product is replaced by a random multilinear map


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-coefficient`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


def reverse_gradient(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    return GradientReversal.apply(x, coefficient)


def warmup_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule of the reversal coefficient: ``2 / (1 + exp(−γ p)) − 1`` for progress ``p`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainDiscriminator(nn.Module):
    """Two hidden layers of ``width`` units (ReLU, dropout 0.5) and one logit: "this is a source example". No
    BatchNorm: the run's BatchNorm policy (frozen statistics for pre-trained models) would otherwise apply to it."""

    def __init__(self, in_features: int, width: int = DISCRIMINATOR_WIDTH) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                    nn.Linear(width, width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                    nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(1)


class ConditionalMap(nn.Module):
    """CDAN's conditioning: ``f ⊗ g`` (flattened outer product of features and class probabilities), or, when
    wider than :data:`RANDOM_MAP_LIMIT`, the random multilinear map ``(f R_f) ⊙ (g R_g) / sqrt(d)`` with fixed
    Gaussian ``R_f``, ``R_g`` (buffers, saved with the checkpoint)."""

    def __init__(self, features: int, classes: int, seed: int = 0, limit: int = RANDOM_MAP_LIMIT) -> None:
        super().__init__()
        self.random = features * classes > limit
        self.out_features = limit if self.random else features * classes
        if self.random:
            generator = torch.Generator().manual_seed(seed)
            self.register_buffer("rf", torch.randn(features, limit, generator=generator))
            self.register_buffer("rg", torch.randn(classes, limit, generator=generator))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.random:
            return (f @ self.rf) * (g @ self.rg) / math.sqrt(self.out_features)
        return (g.unsqueeze(2) * f.unsqueeze(1)).flatten(1)


class DomainAdversary(nn.Module):
    """The adversarial part of an adapted run: the discriminator (and CDAN's map). It is a submodule of the model
    while training, so checkpoints and ``--resume`` carry it; the run's final weights leave it out."""

    def __init__(self, method: str, features: int, classes: int, seed: int = 0) -> None:
        super().__init__()
        if method not in METHODS[1:]:
            raise ValueError(f"Unknown adaptation method {method!r}; known: {', '.join(METHODS[1:])}.")
        self.method = method
        self.conditional = ConditionalMap(features, classes, seed) if method == "cdan" else None
        width = self.conditional.out_features if self.conditional is not None else features
        self.discriminator = DomainDiscriminator(width)

    def domain_loss(self, features: torch.Tensor, logits: torch.Tensor, is_source: torch.Tensor,
                    coefficient: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's loss on reversed features; returns (loss, its per-example correctness)."""
        reversed_features = reverse_gradient(features, coefficient)
        weight = None
        if self.conditional is not None:
            probabilities = logits.detach().float().softmax(1)
            domain_input = self.conditional(reversed_features, probabilities.to(features.dtype))
            entropy = -(probabilities * probabilities.clamp_min(1e-8).log()).sum(1)
            weight = 1.0 + torch.exp(-entropy)
            weight = weight / weight.mean()
        else:
            domain_input = reversed_features
        domain_logits = self.discriminator(domain_input).float()
        loss = nn.functional.binary_cross_entropy_with_logits(domain_logits, is_source.float(), weight=weight)
        return loss, ((domain_logits > 0) == is_source).detach()


def split_head(head: nn.Sequential) -> tuple[nn.Module, nn.Module]:
    """(everything before the head's last linear layer, that layer): the aligned features come out of the first."""
    return head[:-1], head[-1]


class DomainAdaptation:
    """What the loop needs to adapt: the target batches of each epoch, the step (one concatenated forward over
    source and target, task loss on the source part plus the domain loss), and the epoch's figures.

    Args:
        method: ``dann`` or ``cdan``.
        adversary: the discriminator, registered on the model as ``model.domain_adversary``.
        target: the unlabelled target dataset (items only; each gives an image tensor).
        batch_size: target examples per step (the source batch size).
        total_steps: the run's planned optimisation steps on images (the warm-up's ``p = step / total_steps``).
        seed: the run's seed (the target order of each epoch derives from it).
        workers: DataLoader workers for the target images.
    """

    def __init__(self, method: str, adversary: DomainAdversary, target: Any, batch_size: int, total_steps: int,
                 seed: int = 0, workers: int = 0, trade_off: float = 1.0) -> None:
        self.method, self.adversary, self.target = method, adversary, target
        self.batch_size, self.total_steps, self.seed, self.workers = batch_size, max(1, total_steps), seed, workers
        self.trade_off = trade_off
        self._batches: Iterator[torch.Tensor] | None = None
        self._figures = [0.0, 0, 0, 0.0]  # domain loss sum, correct, seen, last coefficient
        self._step0 = 0

    def start_epoch(self, image_epoch: int, steps: int, device: torch.device) -> None:
        """Draw this epoch's target batches (order from the seed and the epoch alone, so ``--resume`` sees the
        same ones) and let the discriminator train."""
        self._batches = iter(self.target_batches(image_epoch, steps))
        self._device = device
        self._step0 = image_epoch * steps
        self._figures = [0.0, 0, 0, 0.0]
        for parameter in self.adversary.parameters():
            parameter.requires_grad_(True)
        self.adversary.train()

    def target_batches(self, image_epoch: int, steps: int) -> DataLoader:
        """``steps`` batches of target images: seeded permutations of the target set, repeated as needed; each
        example augmented under its own seed."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "target", image_epoch))
        n, needed = len(self.target), steps * self.batch_size
        order: list[int] = []
        while len(order) < needed:
            order += torch.randperm(n, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (needed,), generator=generator).tolist()
        keys = list(zip(order[:needed], seeds, strict=True))
        batches = [keys[i:i + self.batch_size] for i in range(0, needed, self.batch_size)]
        return DataLoader(self.target, batch_sampler=batches, num_workers=self.workers)

    def coefficient(self, step: int) -> float:
        return warmup_coefficient((self._step0 + step) / self.total_steps)

    def step(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module,
             step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over source + target; returns (source logits, task loss + domain loss)."""
        target = next(self._batches).to(self._device, non_blocking=True)
        bottleneck, classifier = split_head(model.head)
        features = bottleneck(model.forward_features(torch.cat([inputs, target])))
        logits = classifier(features)
        n = inputs.shape[0]
        task_loss = loss_fn(logits[:n], labels)
        is_source = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(len(target), dtype=torch.bool)])
        coefficient = self.coefficient(step)
        domain_loss, correct = self.adversary.domain_loss(features, logits, is_source.to(features.device),
                                                          coefficient)
        figures = self._figures
        figures[0] += domain_loss.item() * len(correct)
        figures[1] += int(correct.sum())
        figures[2] += len(correct)
        figures[3] = coefficient
        return logits[:n], task_loss + self.trade_off * domain_loss

    def epoch_figures(self) -> dict[str, float]:
        """The epoch's domain-discriminator accuracy (0.5: the domains look alike to it), its mean loss and the
        last reversal coefficient."""
        loss, correct, seen, coefficient = self._figures
        return {"domain_accuracy": correct / max(seen, 1), "domain_loss": loss / max(seen, 1),
                "grl_coefficient": round(coefficient, 6)}


class UnlabelledImages(torch.utils.data.Dataset):
    """Target images without labels: ``dataset[(index, seed)]`` is the image tensor, augmented under ``seed``."""

    def __init__(self, items: Sequence[Any], transform: Any) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        from ..data.images import open_image
        from ..data.sampling import with_item_seed

        return with_item_seed(key, lambda i: self.transform(open_image(self.items[i])))

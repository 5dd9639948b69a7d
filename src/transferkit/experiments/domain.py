"""How far a dataset is from the data the model was pre-trained on.

* **Images, models with BatchNorm** (EfficientNet, ResNet, ...): every BatchNorm layer stores the running mean
  and variance of its input over the pre-training data, so the weights carry the pre-training's feature
  statistics. The shift is measured layer by layer on the user's images (eval mode, hooks on the BatchNorm
  inputs): per channel ``|mean - running_mean| / running_std + |log(std / running_std)|``, averaged over
  channels and layers — 0 when the data's features look exactly like the pre-training's.
* **Text**: how many sub-word tokens the model's tokenizer needs per whitespace-separated word. A tokenizer
  built for the pre-training corpus needs few; text from another domain or language falls apart into pieces.

Models that store no statistics (LayerNorm-only ViTs, ConvNeXt) get no measure: the linear probe still says
how well the frozen features fit.

Calibration on this project's machine (``efficientnet_lite0``; ``efficientnet_lite2`` within 0.1; 120-140 images
each): crops of scikit-image's natural photos 0.26; Fashion-MNIST 0.74, scikit-image LFW faces 0.87,
scikit-learn digits 1.03; uniform noise 1.14. MiniLM's tokenizer: BBC News 1.29 tokens per word, Python source
2.6, biomedical prose 2.6, German 3.3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FEATURE_FAR = 0.6  # feature-statistics shift above which the domain counts as far
TOKENS_PER_WORD_FAR = 1.8  # sub-word tokens per word above which text counts as far from the pre-training
FAR = {"feature statistics": FEATURE_FAR, "tokens per word": TOKENS_PER_WORD_FAR}


@dataclass
class DomainShift:
    measure: str  # a key of FAR
    value: float

    @property
    def far(self) -> bool:
        return self.value > FAR[self.measure]


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def feature_statistics_shift(module: nn.Module, batches: Iterable[torch.Tensor]) -> DomainShift | None:
    """The mean shift of the data's BatchNorm-input statistics from the stored (pre-training) ones; None when
    ``module`` has no BatchNorm layer with running statistics."""
    layers = batchnorm_layers(module)
    if not layers:
        return None
    sums: dict[int, list[Any]] = {id(m): [0, 0.0, 0.0] for m in layers}

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
        x = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
        entry = sums[id(layer)]
        entry[0] += x.shape[1]
        entry[1] = entry[1] + x.sum(dim=1)
        entry[2] = entry[2] + (x * x).sum(dim=1)

    was_training = module.training
    handles = [m.register_forward_hook(record) for m in layers]
    try:
        module.eval()
        for batch in batches:
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    shifts = []
    for layer in layers:
        count, total, squares = sums[id(layer)]
        if count == 0:
            continue
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        ref_var = layer.running_var.double() + layer.eps
        shift = (mean - layer.running_mean.double()).abs() / ref_var.sqrt()
        spread = 0.5 * torch.log((var + layer.eps) / ref_var).abs()
        shifts.append(float((shift + spread).mean()))
    if not shifts:
        return None
    return DomainShift("feature statistics", sum(shifts) / len(shifts))


def tokens_per_word(tokenizer: Any, texts: Sequence[str]) -> DomainShift | None:
    """Sub-word tokens per whitespace-separated word over ``texts`` (special tokens not counted)."""
    words = tokens = 0
    for text in texts:
        words += len(text.split())
        tokens += len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
    if words == 0:
        return None
    return DomainShift("tokens per word", tokens / words)

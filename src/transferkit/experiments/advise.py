"""``transferkit advise``: measure the data against the model, then recommend a strategy and say why.

Measurements (about a minute on a CPU): sample and class counts (imbalance), image sizes or text lengths,
a linear probe (exact logistic fit) and 1-nearest-neighbour accuracy on cached frozen features (how well
the pre-trained features already separate the classes), and — for images — how far the inputs' colour
statistics are from the pre-training's (in units of its standard deviation). The rules are
:func:`recommend`'s, a pure function of those numbers, so they are testable and easy to revise against
``compare`` results.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass
class Measurements:
    modality: str
    samples: int
    classes: int
    min_per_class: int
    max_per_class: int
    median_size: float  # image side in pixels, or text length in tokens
    model_input: int  # the model's input size (pixels) or max length (tokens)
    probe_accuracy: float
    knn_accuracy: float
    domain_distance: float | None  # images: mean |channel mean/std shift| in pre-training std units


@dataclass
class Advice:
    strategy: str
    options: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    def command(self, data: str, model: str) -> str:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.options.items())
        return f"transferkit train --data {data} --model {model} --strategy {self.strategy} {flags}".strip()


def recommend(m: Measurements) -> Advice:
    """The rules of thumb, applied to measured numbers (each decision adds its reason)."""
    options: dict[str, Any] = {}
    reasons, warnings = [], []
    imbalance = m.max_per_class / max(1, m.min_per_class)
    far = m.domain_distance is not None and m.domain_distance > 1.0
    separable = m.probe_accuracy >= 0.9
    if m.samples < 1000 and not far or separable:
        strategy = "linear-probe"
        reasons.append(f"{m.samples} samples{' and a similar domain' if not far else ''}: feature extraction "
                       "needs little data and cannot overfit the backbone" if not separable else
                       f"the frozen features already separate the classes (linear probe {m.probe_accuracy:.2f})")
    else:
        strategy = "two-stage"
        why = [f"{m.samples} samples"] if m.samples >= 10_000 else []
        if far:
            why.append(f"a domain far from the pre-training (input statistics {m.domain_distance:.1f} std away)")
        if not separable:
            why.append(f"frozen features separate the classes only partly (linear probe {m.probe_accuracy:.2f})")
        reasons.append(", ".join(why or [f"{m.samples} samples"]) + ": fine-tune all layers after fitting the "
                       "head first (two-stage keeps the head from disturbing the features)")
    if m.min_per_class * m.classes < 100 or m.min_per_class < 10:
        strategy = "linear-probe"
        options["augment"] = "heavy" if m.modality == "image" else None
        reasons.append(f"very little data ({m.min_per_class} per class at least): freeze more and augment heavily")
    if imbalance >= 3:
        options["class_weights"] = "auto"
        reasons.append(f"classes are imbalanced ({m.min_per_class} to {m.max_per_class} per class): weight the loss")
    if m.modality == "image" and m.median_size < m.model_input / 2:
        size = int(min(m.model_input, max(64, 4 * m.median_size)))
        options["image_size"] = size
        reasons.append(f"images are small ({m.median_size:.0f} px) against the model's {m.model_input} px input: "
                       f"{size} px keeps the detail at a fraction of the cost")
    if m.probe_accuracy < 0.6 and far:
        warnings.append("pre-trained features separate these classes poorly and the domain is far: a model "
                        "pre-trained on similar data (medical, satellite, documents...) may serve better")
    if strategy == "two-stage" and m.samples < 1000:
        options["epochs"] = 20
        reasons.append("few samples give few optimizer steps per epoch: train the second stage longer (20 epochs)")
    options = {k: v for k, v in options.items() if v is not None}
    return Advice(strategy, options, reasons, warnings, asdict(m))


def measure(data: str, model: str, *, weights: str | None = None, max_per_class: int = 100, seed: int = 0,
            progress: bool = False) -> Measurements:
    """Counts, sizes, a linear probe and 1-NN on frozen features (up to ``max_per_class`` per class), and the
    inputs' statistics against the pre-training's."""
    import tempfile

    from ..api import TrainConfig
    from ..data.images import build_transforms, open_image
    from ..data.splits import take_per_class
    from ..features import cached_features
    from ..prepare import is_text, load_data, load_run_model
    from ..training.headfit import fit_linear_head

    config = TrainConfig(data=data, model=model, weights=weights)
    config.validate()
    full = load_data(config)
    counts = list(full.train.class_counts().values())
    samples = len(full.train) + len(full.val)
    train, _ = take_per_class(full.train, max_per_class, seed)
    val, _ = take_per_class(full.val, max(10, max_per_class // 4), seed)
    net = load_run_model(config, len(full.classes))
    text = is_text(net)
    transform = None if text else build_transforms(net.preprocessing, "none")[1]
    with tempfile.TemporaryDirectory() as cache:
        x_train = torch.from_numpy(np.asarray(cached_features(net, train, transform, cache, progress=progress,
                                                              label="train").features[0], dtype=np.float32))
        x_val = torch.from_numpy(np.asarray(cached_features(net, val, transform, cache, progress=progress,
                                                            label="val").features[0], dtype=np.float32))
    y_train, y_val = torch.tensor(train.labels), torch.tensor(val.labels)
    probe = fit_linear_head(torch.nn.Linear(x_train.shape[1], len(full.classes)), x_train, y_train, x_val, y_val)
    normed_train = torch.nn.functional.normalize(x_train, dim=1)
    normed_val = torch.nn.functional.normalize(x_val, dim=1)
    knn = float((y_train[(normed_val @ normed_train.T).argmax(dim=1)] == y_val).float().mean())
    sample = train.items[: min(len(train), 200)]
    if text:
        lengths = [len(net.tokenizer(t, truncation=False)["input_ids"]) for t in sample]
        median_size, model_input, distance = statistics.median(lengths), net.preprocessing.max_length, None
    else:
        images = [open_image(item) for item in sample]
        median_size = statistics.median(min(im.size) for im in images)
        model_input = net.preprocessing.input_size
        pixels = np.concatenate([np.asarray(im, dtype=np.float32).reshape(-1, 3) / 255.0 for im in images])
        pre_mean, pre_std = np.asarray(net.preprocessing.mean), np.asarray(net.preprocessing.std)
        distance = float(np.mean(np.abs(pixels.mean(0) - pre_mean) / pre_std
                                 + np.abs(np.log(pixels.std(0).clip(1e-3) / pre_std))))
    return Measurements("text" if text else "image", samples, len(full.classes), min(counts), max(counts),
                        float(median_size), int(model_input), probe.val_accuracy, knn, distance)


def advise(data: str, model: str = "efficientnet_lite0", **kwargs: Any) -> Advice:
    """Measure ``data`` against ``model`` and recommend a strategy, with reasons."""
    return recommend(measure(data, model, **kwargs))

"""``transferkit advise``: measure the data against the model, then recommend a strategy and say why.

Measurements (about a minute on a CPU): sample and class counts (imbalance), image sizes or text lengths,
a linear probe (exact logistic fit) and 1-nearest-neighbour accuracy on cached frozen features (how well
the pre-trained features already separate the classes), and how far the data is from the pre-training's
(BatchNorm feature statistics for images, sub-word tokens per word for text: :mod:`.domain`). The rules are
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

from ..allocator import keep_freed_memory
from ..errors import TransferKitError
from .domain import DomainShift, feature_statistics_shift, tokens_per_word

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
    domain_distance: float | None  # see experiments/domain.py; None when the model stores no statistics
    domain_measure: str | None = None  # "feature statistics" (images) or "tokens per word" (text)
    groups: int = 0  # the model's layer groups, head included
    flip_accuracy: float | None = None  # images: the probe's accuracy on horizontally mirrored validation images

    @property
    def far(self) -> bool:
        return self.domain_distance is not None and DomainShift(self.domain_measure or "feature statistics",
                                                                self.domain_distance).far


@dataclass
class Advice:
    strategy: str
    options: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    def command(self, data: str, model: str, **fixed: Any) -> str:
        """The ``transferkit train`` command; ``fixed`` options (e.g. per_class) come before the advised ones."""
        options = {**{k: v for k, v in fixed.items() if v is not None}, **self.options}
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        return f"transferkit train --data {data} --model {model} --strategy {self.strategy} {flags}".strip()


SMALL = 1000  # samples below which the frozen features are as good as fine-tuning (compare, README table)
LARGE = 10_000  # samples from which fine-tuning pays even when the frozen features separate the classes
SEPARABLE = 0.9  # linear-probe validation accuracy from which the frozen features "already separate" the classes


def recommend(m: Measurements) -> Advice:
    """The rules, applied to measured numbers (each decision adds its reason).

    Checked against ``compare`` on the built-in datasets (README): under ~1,000 samples the linear probe
    matched or beat two-stage fine-tuning even on domains far from ImageNet (Fashion-MNIST, digits, LFW at 10-50
    per class), at about a tenth of the cost; from ~1,000 samples on far domains two-stage won by 2-5 points."""
    options: dict[str, Any] = {}
    reasons, warnings = [], []
    imbalance = m.max_per_class / max(1, m.min_per_class)
    far = m.far
    separable = m.probe_accuracy >= SEPARABLE
    domain = (f"a domain far from the pre-training ({_distance_text(m)})" if far else
              f"a domain close to the pre-training ({_distance_text(m)})" if m.domain_distance is not None else
              "domain distance not measurable for this model")
    tiny = m.samples < 100 or m.samples < 10 * m.classes
    if tiny:
        # The seed's rule of thumb adds heavy augmentation here; measured on digits at 5 per class (3 seeds), 8
        # heavily augmented cached views with an SGD head gave 0.21 test accuracy against 0.68 for the exact fit on
        # un-augmented features, so advise keeps the exact fit.
        strategy = "linear-probe"
        reasons.append(f"very little data ({m.samples} samples, {m.classes} classes): keep the backbone frozen and fit "
                       "the head exactly on un-augmented features (augmented views with an SGD head did worse on "
                       "tiny data)")
    elif m.samples < SMALL and m.modality == "text" and not separable:
        # Issue 16, on a 3-class short-text sentiment set held out from development (100 texts per class): the
        # linear probe scored 0.647 against 0.664 fine-tuned. A sentence encoder's frozen embedding separates
        # topics (BBC News: probe 0.94-1.00, within 0.005 of two-stage) better than sentiment or style, which
        # fine-tuning reshapes even on a few hundred texts (SetFit's few-shot results point the same way).
        strategy = "two-stage"
        reasons.append(f"{m.samples} texts, {domain}, but the frozen sentence features separate the classes only "
                       f"partly (linear probe {m.probe_accuracy:.2f}): what the classes differ by (sentiment, style) "
                       "is not what the embedding was trained to capture, and fine-tuning pays even on a few hundred "
                       "texts; the head is fitted first so it does not disturb the pre-trained layers")
    elif m.samples < SMALL:
        strategy = "linear-probe"
        reasons.append(f"{m.samples} samples, {domain}: with this little data the frozen features fit as well as "
                       "fine-tuning and the exact head fit takes seconds")
        if far and not separable:
            reasons.append(f"the probe reaches {m.probe_accuracy:.2f} on a far domain: with more data, two-stage "
                           "fine-tuning is the next step")
    elif m.samples < LARGE and separable and not far:
        strategy = "linear-probe"
        reasons.append(f"{m.samples} samples, {domain}, and the frozen features already separate the classes "
                       f"(linear probe {m.probe_accuracy:.2f})")
    else:
        strategy = "two-stage"
        why = [f"{m.samples} samples"]
        if far:
            why.append(domain)
        if not separable:
            why.append(f"frozen features separate the classes only partly (linear probe {m.probe_accuracy:.2f})")
        reasons.append(", ".join(why) + ": enough data to adapt every layer; fitting the head first keeps it from "
                       "disturbing the pre-trained features")
    _training_advice(m, strategy, options, reasons)
    if imbalance >= 3:
        options["class_weights"] = "auto"
        reasons.append(f"classes are imbalanced ({m.min_per_class} to {m.max_per_class} per class): weight the loss")
    if m.modality == "image" and m.median_size < m.model_input / 2:
        # Issue 16 part 7 (test accuracy). Probe, 10 per class, 2 seeds: Fashion-MNIST 0.744 at 112 px vs 0.773 at
        # 224 px (the defaults' two-stage 0.778); digits 0.759 at 64 px vs 0.716 (defaults 0.716), font-digits 0.716 /
        # 0.626. Two-stage, Fashion-MNIST 100 per class: 0.855 at 112 px vs 0.878 at 224 px (seed 0, 1,000 test images),
    # 0.852 at 128 px (README's strategies table).
        # A smaller input wins on some data and loses on other, and the validation split cannot tell which (20 images:
        # digits validated 0.85 at 224 px vs 0.75 at 64 px); at the model's own input the advice never fell below
        # the defaults, so it keeps that size and leaves shrinking to the user (--image-size) or to --budget.
        reasons.append(f"images are small ({m.median_size:.0f} px) against the model's {m.model_input} px input, but "
                       "they are upscaled to it, the scale its features were trained at: a smaller input saved time "
                       "and lost 2-3 points on some data (Fashion-MNIST two-stage at 112 px 0.855 vs 0.878) while "
                       "winning on other, and the validation split could not tell which; pass --image-size to trade "
                       "accuracy for time")
    if m.modality == "text" and m.median_size > m.model_input:
        reasons.append(f"texts are longer ({m.median_size:.0f} tokens at the median) than the model reads "
                       f"({m.model_input}): only their beginnings are used")
    if m.probe_accuracy < 0.6 and far:
        warnings.append("pre-trained features separate these classes poorly and the domain is far: a model "
                        "pre-trained on similar data (medical, satellite, documents...) may serve better")
    # advise printed --epochs 20 for two-stage under 3,000 samples until issue 16 measured it: Fashion-MNIST 100 per
    # class at 64 px (benchmarks/cheaper_accuracy.py, the 'epochs 20' row) scored the same as the defaults' 10 epochs
    # at 1.3x the time, so the second stage keeps the defaults' length.
    return Advice(strategy, options, reasons, warnings, {**asdict(m), "far": far})


# Probe accuracy lost on mirrored validation images from which flips count as changing the class. Digits lose
# 0.028 (0.936 -> 0.908) and two-stage at 100/class scored 0.975 without augmentation vs 0.964 with flips and
# crops (2 seeds); Fashion-MNIST loses 0.004 and scored the same either way (0.824 vs 0.826).
FLIP_DROP = 0.02


def _training_advice(m: Measurements, strategy: str, options: dict[str, Any], reasons: list[str]) -> None:
    """Which groups train, at what learning rates, with what augmentation."""
    backbone = f"{m.groups - 1} backbone group(s)" if m.groups > 1 else "the backbone"
    if strategy == "linear-probe":
        reasons.append(f"freeze all {backbone}; only the new head trains (no learning rate to tune: the exact fit "
                       "chooses its L2 strength on the validation split), and augmentation does not apply (the "
                       "fit uses un-augmented features)")
        return
    text = m.modality == "text"
    options["lr"] = "3e-5" if text else "1e-4"
    reasons.append(f"head alone first on frozen features, then all {m.groups or ''} groups unfrozen with "
                   f"LR {options['lr']} for the pre-trained layers and 1e-3 for the head: "
                   + ("the BERT fine-tuning recipe (2e-5 to 5e-5)" if text else
                      "a tenth of the head's, so the pre-trained features move slowly"))
    if text:
        return
    flip_drop = None if m.flip_accuracy is None else m.probe_accuracy - m.flip_accuracy
    if flip_drop is not None and flip_drop > FLIP_DROP:
        options["augment"] = "none"
        reasons.append(f"mirrored images are classified worse by the probe ({m.probe_accuracy:.2f} -> "
                       f"{m.flip_accuracy:.2f}): flipping changes what an image shows, so no flip augmentation")
    else:
        options["augment"] = "light"
        reasons.append("light augmentation (random resized crops, horizontal flips) for the fine-tuning stage"
                       + (f": mirrored images keep their class (probe {m.probe_accuracy:.2f} -> "
                          f"{m.flip_accuracy:.2f})" if flip_drop is not None else ""))


def auto_options(advice: Advice, given: set[str], config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The advice's options as ``train`` values (``--strategy auto``), split into those applied and those the user
    set (``given``), which are kept as set."""
    applied, kept = {}, {}
    for name, value in advice.options.items():
        value = float(value) if name in ("lr", "head_lr") else value
        if name in given:
            kept[name] = getattr(config, name)
        else:
            applied[name] = value
    return applied, kept


def _distance_text(m: Measurements) -> str:
    if m.domain_measure == "tokens per word":
        return f"{m.domain_distance:.2f} sub-word tokens per word"
    return f"feature statistics {m.domain_distance:.2f} from the pre-training's"


def measure(data: str, model: str, *, weights: str | None = None, per_class: int | None = None,
            max_per_class: int = 100, seed: int = 0, progress: bool = False, **data_options: Any) -> Measurements:
    """Counts, sizes, a linear probe and 1-NN on frozen features (up to ``max_per_class`` per class), and how far
    the data is from the pre-training (:mod:`transferkit.experiments.domain`). ``per_class`` first reduces the
    data as ``train --per-class`` would (what-if advice for a smaller dataset); ``data_options`` are other
    :class:`~transferkit.options.TrainConfig` fields that shape the data (``text_column``, ``label_column``)."""
    import tempfile

    from ..data.splits import take_per_class
    from ..options import TrainConfig
    from ..prepare import load_data, load_run_model

    config = TrainConfig(data=data, model=model, weights=weights, per_class=per_class, seed=seed, **data_options)
    config.validate()
    keep_freed_memory(config.cpu_allocator)  # the backbone runs over the data, as in train
    full = load_data(config)
    train, _ = take_per_class(full.train, max_per_class, seed)
    val, _ = take_per_class(full.val, max(10, max_per_class // 4), seed)
    net = load_run_model(config, len(full.classes))
    with tempfile.TemporaryDirectory() as cache:
        return measure_loaded(net, full, train, val, cache, seed=seed, progress=progress)


def measure_loaded(net: Any, full: Any, train: Any, val: Any, cache: Any, *, seed: int = 0, progress: bool = False,
                   device: Any = None, use: Any = None) -> Measurements:
    """:func:`measure` on data and a model already loaded: ``full`` (a ``SplitData``) gives the counts, ``train`` and
    ``val`` (its splits or samples of them) the probe. Features go through the feature cache in ``cache`` with the keys
    a run's head stage uses (``train --strategy auto`` measures on the full splits, so its head stage reuses them)."""
    from torchvision.transforms import v2

    from ..data.images import build_transforms, open_image
    from ..features import cached_features
    from ..training.headfit import fit_linear_head

    counts = list(full.train.class_counts().values())
    samples = len(full.train) + len(full.val)
    text = net.is_text
    transform = None if text else build_transforms(net.preprocessing, "none")[1]
    mirrored = None if text else v2.Compose([v2.RandomHorizontalFlip(p=1.0), transform])

    def features(samples: Any, view: Any, label: str) -> torch.Tensor:
        found = cached_features(net, samples, view, cache, seed=seed, progress=progress, label=label, device=device,
                                use=use)
        return torch.from_numpy(np.asarray(found.features[0], dtype=np.float32))

    if device is not None:
        net.to(device)
    x_train, x_val = features(train, transform, "train"), features(val, transform, "val")
    x_flip = None if text else features(val, mirrored, "mirrored val")
    net.to("cpu")
    y_train, y_val = torch.tensor(train.labels), torch.tensor(val.labels)
    head = torch.nn.Linear(x_train.shape[1], len(full.classes))
    probe = fit_linear_head(head, x_train, y_train, x_val, y_val)
    with torch.no_grad():  # the probe on mirrored images: does flipping change the class?
        flip_accuracy = None if x_flip is None else float((head(x_flip).argmax(dim=1) == y_val).float().mean())
    normed_train = torch.nn.functional.normalize(x_train, dim=1)
    normed_val = torch.nn.functional.normalize(x_val, dim=1)
    knn = float((y_train[(normed_val @ normed_train.T).argmax(dim=1)] == y_val).float().mean())
    sample = [train.items[i] for i in np.random.default_rng(seed).permutation(len(train))[:200]]
    if text:
        lengths = [len(net.tokenizer(t, truncation=False, verbose=False)["input_ids"]) for t in sample]
        median_size, model_input = statistics.median(lengths), net.preprocessing.max_length
        shift = tokens_per_word(net.tokenizer, sample)
    else:
        images = [open_image(item) for item in sample]
        median_size = statistics.median(min(im.size) for im in images)
        model_input = net.preprocessing.input_size
        tensors = [transform(im.convert("RGB")) for im in images]
        shift = feature_statistics_shift(net.backbone, (torch.stack(tensors[i:i + 32])
                                                        for i in range(0, len(tensors), 32)))
    return Measurements("text" if text else "image", samples, len(full.classes), min(counts), max(counts),
                        float(median_size), int(model_input), probe.val_accuracy, knn,
                        shift.value if shift else None, shift.measure if shift else None,
                        len(net.layer_groups()), flip_accuracy)


def advise(data: str, model: str = "efficientnet_lite0", task: str | None = None, **kwargs: Any) -> Advice:
    """Measure ``data`` against ``model`` and recommend a strategy, with reasons (``task``: inferred from the data
    when not given; segmentation has its own measurements and rules, :func:`recommend_segmentation`)."""
    from ..tasks import infer_task

    chosen = task or infer_task(data)[0]
    if chosen == "detection":
        raise TransferKitError("advise has no measurements or rules for detection yet. Fix: measure the strategies "
                               f"on your data with `transferkit compare --task detection --data {data} --strategies "
                               "scratch,linear-probe,two-stage`.")
    if chosen == "segmentation":
        return recommend_segmentation(measure_segmentation(data, model, **kwargs))
    return recommend(measure(data, model, **kwargs))


# --- segmentation ------------------------------------------------------------------------------------------------


@dataclass
class SegmentationMeasurements:
    images: int  # training + validation images
    classes: int  # label map, background included
    median_size: float  # median image side (pixels)
    model_input: int
    background_share: float  # of the labelled training pixels
    rarest_class: str  # the foreground class with the fewest training pixels
    rarest_share: float  # its share of the labelled training pixels
    domain_distance: float | None
    domain_measure: str | None = None
    groups: int = 0
    task: str = "segmentation"

    @property
    def far(self) -> bool:
        return self.domain_distance is not None and DomainShift(self.domain_measure or "feature statistics",
                                                                self.domain_distance).far


FEW_IMAGES = 50  # the smallest training size compare measured on builtin:fashion-scenes (README)
RARE = 0.01  # a foreground class under 1% of the labelled pixels counts as rare


def recommend_segmentation(m: SegmentationMeasurements) -> Advice:
    """Rules for segmentation, from measured numbers. The strategy rule comes from ``compare`` on
    ``builtin:fashion-scenes`` (README: two-stage ahead of the frozen encoder and of scratch at every size measured);
    the others are rules of thumb, said to be so."""
    options: dict[str, Any] = {"task": "segmentation"}
    reasons, warnings = [], []
    domain = (f"a domain far from the pre-training ({_distance_text(m)})" if m.far else
              f"a domain close to the pre-training ({_distance_text(m)})" if m.domain_distance is not None else
              "domain distance not measurable for this model")
    strategy = "two-stage"
    reasons.append(f"{m.images} images, {m.classes} classes, {domain}: the decoder is new and large, so train it "
                   "first on the frozen encoder, then fine-tune everything (on fashion-scenes two-stage beat the "
                   "frozen encoder and scratch at every size compare measured)")
    if m.images < FEW_IMAGES:
        warnings.append(f"only {m.images} images: fewer than compare measured ({FEW_IMAGES}); consider "
                        "--strategy linear-probe if two-stage overfits (not measured)")
    options["lr"] = "1e-4"
    reasons.append(f"LR 1e-4 for the {max(m.groups - 1, 1)} pre-trained encoder group(s), 1e-3 for the decoder; "
                   "flips and crops move image and mask together (--augment light)")
    options["augment"] = "light"
    if m.median_size < m.model_input:
        size = int(max(64, 32 * round(m.median_size / 32)))
        options["image_size"] = size
        reasons.append(f"images are {m.median_size:.0f} px (median side) against the model's {m.model_input} px "
                       f"input: {size} px keeps every pixel without upsampling")
    if m.rarest_share < RARE:
        options["dice_weight"] = 0.5
        reasons.append(f"class '{m.rarest_class}' covers {m.rarest_share:.2%} of the labelled pixels (background "
                       f"{m.background_share:.0%}): a Dice term weighs each class equally (a rule of thumb, not "
                       "measured here)")
    warnings.append("no rule yet for the decoder (unet vs fpn) or for a frozen-feature probe of pixels: advise "
                    "measures no linear probe or 1-NN for segmentation")
    return Advice(strategy, options, reasons, warnings, {**asdict(m), "far": m.far})


def measure_segmentation(data: str, model: str, *, weights: str | None = None, per_class: int | None = None,
                         seed: int = 0, image_size: int | None = None, ignore_index: int = 255,
                         progress: bool = False, **_: Any) -> SegmentationMeasurements:
    """Image and class counts, pixel shares per class, image sizes, and the domain distance of the encoder's
    BatchNorm statistics on up to 64 training images."""
    from PIL import Image

    from ..data.images import open_image
    from ..options import TrainConfig
    from ..prepare import load_data, load_run_model
    from ..tasks.segmentation import image_transform

    config = TrainConfig(data=data, task="segmentation", model=model, weights=weights, per_class=per_class,
                         seed=seed, image_size=image_size, ignore_index=ignore_index).validate()
    split = load_data(config)
    counts = np.asarray(list(split.train.class_counts().values()), dtype=np.float64)
    shares = counts / max(counts.sum(), 1)
    rarest = 1 + int(np.argmin(np.where(counts[1:] > 0, shares[1:], np.inf))) if len(counts) > 1 else 0
    net = load_run_model(config, len(split.classes))
    sample = [split.train.items[i] for i in np.random.default_rng(seed).permutation(len(split.train))[:64]]
    images: list[Image.Image] = [open_image(item) for item in sample]
    transform = image_transform(net.preprocessing)
    tensors = [transform(torch.from_numpy(np.array(im)).permute(2, 0, 1)) for im in images]
    shift = feature_statistics_shift(net.backbone, (torch.stack(tensors[i:i + 16]) for i in range(0, len(tensors), 16)))
    return SegmentationMeasurements(len(split.train) + len(split.val), len(split.classes),
                                    float(statistics.median(min(im.size) for im in images)),
                                    net.preprocessing.input_size, float(shares[0]), split.classes[rarest],
                                    float(shares[rarest]), shift.value if shift else None,
                                    shift.measure if shift else None, len(net.layer_groups()))

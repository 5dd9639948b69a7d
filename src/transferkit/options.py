"""The one schema: every option of transferkit, declared once — default, help text, allowed values, check.

Options are grouped in small dataclasses (sections). :class:`TrainConfig` is every section a run needs, as one
flat dataclass (``config.epochs``, ``train(epochs=...)``, ``--epochs``). The command line is generated from these
declarations (:mod:`transferkit.cli`), so a default or a help text cannot drift between ``train``, ``plan``,
``compare`` and ``advise``; a recipe file (YAML or TOML) sets the same names.

Adding an option = adding one field to one section below (with :func:`option`), and reading it where it is used.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .allocator import CPU_ALLOCATORS
from .data.device import DEVICE_AUGMENTS
from .data.images import check_augment
from .errors import TransferKitError, bad_value, check_choice, check_int, check_range, did_you_mean
from .models.groups import check_groups
from .models.model import check_dropout, check_hidden
from .models.preprocessing import check_image_size
from .models.text import check_max_length, check_pooling, is_text_model
from .strategies import check_bn, check_lr, check_lr_decay, check_max_unfrozen, check_strategy, check_warmup
from .tasks import check_task, infer_task
from .tasks.detection import check_score_threshold
from .tasks.segmentation import DECODERS, check_decoder_channels, check_dice_weight, check_ignore_index

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
ADAPT_METHODS = ("none", "dann", "cdan")
HEAD_FITS = ("auto", "lbfgs", "sgd")
PREFIX_CACHES = ("auto", "views", "off")
SCHEDULES = ("per-phase", "single")
TTA_CHOICES = ("none", "flip")
DENSE_LR_DECAY = 0.5
DENSE_DECAY_STRATEGIES = ("two-stage",)  # where the decay default was measured (fashion-scenes)


@dataclass(frozen=True)
class Spec:
    """What the schema knows about one option besides its name, type and default.

    Attributes:
        help: the ``--help`` text (rich markup: write a literal ``[`` as ``\\[``).
        check: validates a set value (called with the option's name and value); ``None``: no check.
        default_text: shown as ``[default: ...]`` when the default depends on something (a ``None`` default).
        flags: the command-line spelling when it is not ``--name-with-dashes`` (e.g. ``("--quiet", "-q")``).
        argument: a positional command-line argument instead of an option.
        cli: ``False`` keeps the option out of the command line (Python and recipes only).
        cli_type: the type the command line reads when it is not the field's (the field's check and
            ``TrainConfig.validate`` turn it into the field's type), e.g. ``str`` for ``--budget 90s``.
        metavar: how ``--help`` names the value when the type's name would mislead (``<duration>``).
    """

    help: str
    check: Callable[[str, Any], Any] | None = None
    default_text: str | None = None
    flags: tuple[str, ...] = ()
    argument: bool = False
    cli: bool = True
    cli_type: type | None = None
    metavar: str | None = None


def option(default: Any = dataclasses.MISSING, help: str = "", *, check: Callable[[str, Any], Any] | None = None,
           choices: Iterable[str] = (), default_text: str | None = None, flags: tuple[str, ...] = (),
           argument: bool = False, cli: bool = True, cli_type: type | None = None, metavar: str | None = None) -> Any:
    """A dataclass field carrying its :class:`Spec`; ``choices`` adds a membership check."""
    choices = tuple(choices)
    if choices and check is None:
        def check(name: str, value: Any, choices: tuple[str, ...] = choices) -> Any:
            return check_choice(name, value, choices)
    spec = Spec(help, check, default_text, flags, argument, cli, cli_type, metavar)
    return field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata["spec"]


# --- checks used by several options ------------------------------------------------------------------


def positive(name: str, value: Any) -> None:
    check_int(name, value, 1)


def positive_or_none(name: str, value: Any) -> None:
    if value is not None:
        check_int(name, value, 1)


def non_negative(name: str, value: Any) -> None:
    check_int(name, value, 0)


def non_negative_float(name: str, value: Any, example: str | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if not ok:
        raise bad_value(name, value, "a non-negative float" + (" (0: off)" if example else ""),
                        f"Pass e.g. --{name.replace('_', '-')} {example}." if example else "")


def check_ema(name: str, value: Any) -> float:
    """An EMA decay in [0, 1): 0 turns the average off."""
    return check_range(name, value, 0, 1, high_open=True, allowed="a decay in [0, 1) (0: off)", example=0.99)


def parse_lrs(value: str | Iterable[float] | None) -> tuple[float, ...] | None:
    """``--lrs 1e-5,1e-4,1e-3`` as a tuple of floats (``None`` when not set)."""
    if value is None or value == "":
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        return tuple(float(v) for v in parts)
    except (TypeError, ValueError) as exc:
        raise bad_value("lrs", value, "comma-separated learning rates, early layers first",
                        "Pass e.g. --lrs 1e-5,1e-4,1e-3.") from exc


DURATION_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
                  "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*", re.IGNORECASE)


def parse_duration(name: str, value: Any) -> Any:
    """A duration in seconds: a number is seconds already; a string is seconds (``"90"``) or numbers with units,
    s / m / h and their longer spellings, added up (``"90s"``, ``"2m"``, ``"1.5h"``, ``"1h30m"``, ``"2 min"``). Any
    other value is returned as it is, for the option's own check to judge."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    seconds, pos = 0.0, 0
    while pos < len(value) or pos == 0:
        part = _DURATION_PART.match(value, pos)
        if part is None or part.group(2).lower() not in DURATION_UNITS:
            raise bad_value(name, value, "seconds or a duration with units",
                            f"Pass e.g. --{name.replace('_', '-')} 60 (seconds), 90s, 2m or 1h30m.")
        seconds += float(part.group(1)) * DURATION_UNITS[part.group(2).lower()]
        pos = part.end()
    return seconds


def _lrs(name: str, value: Any) -> None:
    for lr in parse_lrs(value) or ():
        check_lr(name, lr)


def decays_by_default(task: str | None, strategy: str, lr: float | None, lrs: str | None) -> bool:
    """Whether layer-wise LR decay (:data:`DENSE_LR_DECAY` from the head's LR) is the default: detection and
    segmentation ``two-stage`` without ``--lr`` or ``--lrs``. Their head (FPN + RetinaNet subnets; the decoder) is
    new and large; at the backbone's 1e-4 after a short head stage it barely learns. On fashion-scenes (100 images,
    128 px, two-stage, 20 epochs) the decay gave test mAP 0.085 / 0.107 vs 0.015 / 0.042 flat (seeds 0 / 1) and test
    mIoU 0.154 vs 0.068 flat (seed 0); README."""
    return task in ("detection", "segmentation") and strategy in DENSE_DECAY_STRATEGIES and lr is None and lrs is None


# --- the sections of a training run ------------------------------------------------------------------

HELP_DATA = ("Training data: a folder with train/ (val/, test/) class sub-folders; a folder of class sub-folders "
             "(split into train/val); a CSV manifest with path,label\\[,split] columns; a text file "
             "(CSV/TSV/JSONL with text and label columns) or folder of them; or builtin:fashion-mnist, "
             "builtin:lfw-faces, builtin:digits, builtin:fashion-mnist-m, builtin:font-digits, builtin:bbc-news. "
             "Segmentation: a folder with images/ and masks/ (split sub-folders optional), a CSV manifest with "
             "image,mask\\[,split] columns, or builtin:fashion-scenes.")
HELP_STRATEGY = ("auto (the default: measure the data as `advise` does, on the features the head stage caches "
                 "anyway, then run the advised strategy and options; the reasons go in the plan and transferkit.json; "
                 "options you set yourself are kept; segmentation, detection, --adapt and --wise-ft: two-stage), "
                 "linear-probe (frozen backbone, head only), fine-tune (all layers, small LR), two-stage (head "
                 "first, then all layers), progressive (head first, then one more group every --unfreeze-every "
                 "epochs, top down), scratch (random weights: the baseline), lora (language models: low-rank "
                 "adapters and the head).")


def check_strategy_option(name: str, value: Any) -> str:
    """A strategy, or ``auto`` (resolved by ``train`` before the plan: :func:`transferkit.api.train`)."""
    return value if value == "auto" else check_strategy(name, value)


# What ``--strategy auto`` runs without measuring: advise's rules are measured on classification, and --adapt and
# --wise-ft need a backbone that fine-tunes (the linear probe, a rule's frequent choice, would be refused).
AUTO_UNMEASURED = "two-stage"


def auto_measures(task: str | None, adapt: str, wise_ft: bool) -> bool:
    """Whether ``--strategy auto`` measures the data; otherwise it is :data:`AUTO_UNMEASURED` (see above)."""
    return task in (None, "classification") and adapt == "none" and not wise_ft


@dataclass
class DataOptions:
    """Where the examples come from and how they are split."""

    PANEL: ClassVar[str] = "Data"

    data: str = option(help=HELP_DATA)
    task: str | None = option(None, "What to predict: classification (a label per image or text), segmentation (a "
                                    "class per pixel, from masks) or detection (labelled boxes: COCO JSON, YOLO "
                                    "labels, CSV path,xmin,ymin,xmax,ymax,label).",
                              default_text="inferred from --data: segmentation when it has masks, detection when it "
                                           "has boxes, else classification", check=check_task)
    text_column: str = option("text", "Text: the column holding the text (CSV/TSV/JSONL).")
    label_column: str = option("label", "Text: the column holding the label (CSV/TSV/JSONL).")
    val_fraction: float = option(0.2, "Share of each class held out for validation when the data has no val "
                                      "split.",
                                 check=lambda n, v: check_range(n, v, 0, 1, low_open=True, example=0.2))
    per_class: int | None = option(None, "Use only N training examples per class (seeded); segmentation: N "
                                         "training images in all.", check=positive_or_none)
    test_per_class: int | None = option(None, "Evaluate the test split on N examples per class (segmentation: N "
                                              "test images).", check=positive_or_none)
    skip_bad_images: bool = option(False, "Skip (and count) unreadable images instead of stopping.")


@dataclass
class ModelOptions:
    """The pre-trained model and the new head."""

    PANEL: ClassVar[str] = "Model"

    model: str = option("efficientnet_lite0", "Model source: efficientnet_lite0, efficientnet_lite2, timm:<name>, "
                                              "torchvision:<name>; language models: minilm-l6, hf:<id>, a local "
                                              "Hugging Face folder. See `transferkit models`.")
    weights: str | None = option(None, "Start from a local .safetensors / weights-only .pth file instead of "
                                       "downloading pre-trained weights.")
    image_size: int | None = option(None, "Override the pre-training input size (pixels).",
                                    default_text="from the weights", check=check_image_size)
    dropout: float | None = option(None, "Dropout before the new head's linear layer.",
                                   default_text="0.2 for images, 0.1 for text", check=check_dropout)
    hidden: int = option(0, "Width of an optional hidden layer in the head (0: none).", check=check_hidden)
    max_length: int | None = option(None, "Text: truncate to this many tokens.",
                                    default_text="the model's, at most 512", check=check_max_length)
    pooling: str | None = option(None, "Text: cls or mean pooling.", default_text="mean for minilm-l6, else cls",
                                 check=check_pooling)
    trust_remote_code: bool = option(False, "Allow a hub model to run code from its repository (review it first).")
    lora_rank: int = option(8, "lora: adapter rank.", check=positive)
    lora_alpha: int = option(16, "lora: adapter scaling alpha.", check=positive)
    lora_targets: str | None = option(None, "lora: comma-separated module names to adapt.",
                                      default_text="the attention query/value projections of the architecture")


@dataclass
class SegmentationOptions:
    """The decoder, loss and labels of segmentation runs (ignored by classification)."""

    PANEL: ClassVar[str] = "Segmentation"

    decoder: str = option("unet", "Segmentation: the new decoder on the encoder's feature pyramid: unet or fpn.",
                          choices=DECODERS)
    decoder_channels: int = option(128, "Segmentation: width of the decoder's widest stage (U-Net halves it at each "
                                        "stage; FPN: its pyramid width); detection: the width of its FPN and "
                                        "RetinaNet head.", check=check_decoder_channels)
    ignore_index: int = option(255, "Segmentation: the mask value of pixels that count in neither the loss nor the "
                                    "metrics.", check=check_ignore_index)
    dice_weight: float = option(0.0, "Segmentation: weight of a Dice loss added to the pixel cross-entropy (0: "
                                     "cross-entropy only), e.g. 0.5.", check=check_dice_weight)


@dataclass
class StrategyOptions:
    """Which layers train, when, at what learning rate, on what inputs."""

    PANEL: ClassVar[str] = "Strategy and optimisation"

    strategy: str = option("auto", HELP_STRATEGY, check=check_strategy_option)
    epochs: int | None = option(None, "Epochs of the main phase (two-stage/progressive: once all their groups "
                                      "train).", default_text="10 for images, 4 for text", check=positive_or_none)
    head_epochs: int = option(3, "two-stage/progressive: epochs of the head-only stage (2-5 is typical).",
                              check=positive)
    lr: float | None = option(None, "LR of pre-trained layers.", default_text="1e-4; scratch: 3e-3; text: 3e-5, "
                                                                               "lora 5e-4", check=check_lr)
    head_lr: float | None = option(None, "LR of the new head.", default_text="1e-3", check=check_lr)
    lrs: str | None = option(None, "Discriminative LRs spread over the layer groups, early layers first; the last "
                                   "value is the head's, e.g. 1e-5,1e-4,1e-3.", check=_lrs)
    lr_decay: float | None = option(None, "Layer-wise LR decay: the head gets --head-lr, each group below the next "
                                          "later group's LR times this factor, e.g. 0.5.",
                                    check=check_lr_decay)
    unfreeze_every: int = option(1, "progressive: epochs between unfreezing one more group.", check=positive)
    max_unfrozen: int | None = option(None, "progressive: stop unfreezing when this many groups (head included) "
                                            "train.", default_text="all",
                                      check=check_max_unfrozen)
    groups: int | None = option(None, "Merge neighbouring layer groups so that N remain (head included).",
                                default_text="the architecture's own groups",
                                check=check_groups)
    bn: str = option("auto", "BatchNorm: auto (freeze statistics of pre-trained layers and for batches under 16; "
                             "train them from scratch), freeze, train.", check=check_bn)
    l2_sp: float = option(0.0, "L2-SP strength: pull pre-trained weights towards their starting values (0: off), "
                               "e.g. 0.01.", flags=("--l2-sp",),
                          check=lambda n, v: non_negative_float(n, v, "0.01"))
    batch_size: int = option(32, "Examples per optimisation step, in total: several processes (torchrun) split "
                                 "each batch evenly.", check=positive)
    augment: str = option("light", "Augmentation: none, light (flip, random resized crop), heavy (plus colour "
                                   "jitter, rotation, RandAugment).", check=check_augment)
    label_smoothing: float = option(0.0, "Label smoothing for the cross-entropy loss.",
                                    check=lambda n, v: check_range(n, v, 0, 1))
    class_weights: str | None = option(None, "none, or auto (inverse class frequency; segmentation: of pixels).",
                                       default_text="none; segmentation: auto", choices=("none", "auto"))
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases/norms).", check=non_negative_float)
    warmup: float = option(0.1, "Linear LR warm-up, as a fraction of each phase's steps.", check=check_warmup)
    patience: int = option(3, "Early stopping: epochs without better val accuracy before a phase ends (0: off). "
                              "The best epoch's weights are kept.",
                           check=lambda n, v: check_int(n, v, 0, "a non-negative integer (0 turns early stopping "
                                                                 "off)", 3))
    patience_fraction: float = option(0.2, "Early stopping relative to the schedule: a phase of E epochs stops after "
                                           "max(--patience, this share of E) epochs without a higher val accuracy "
                                           "(0: --patience alone, a lower loss at the same accuracy counting as "
                                           "progress).",
                                      check=lambda n, v: check_range(n, v, 0, 1, example=0.2))
    patience_after_lr: float = option(0.5, "Early stopping does not fight the schedule: an epoch counts against the "
                                           "patience only once the phase's LR has decayed to this share of its peak "
                                           "(the warm-up and the first part of the cosine never count; 1: only the "
                                           "warm-up).",
                                      check=lambda n, v: check_range(n, v, 0, 1, low_open=True, high_open=False,
                                                                     example=0.5))
    schedule: str = option("per-phase", "LR schedule: per-phase (each phase warms up over --warmup of its steps, then "
                                        "decays on a cosine to 0: progressive's LR restarts at every unfreezing) or "
                                        "single (one warm-up over --warmup of the run's steps, then one cosine across "
                                        "every phase; --patience-after-lr reads that one curve). No gain measured "
                                        "(benchmarks/cheaper_accuracy.py, README).", choices=SCHEDULES)
    ema: float = option(0.0, "Exponential moving average of the weights, updated every optimizer step with this decay "
                             "(0: off), e.g. 0.99: validation, the best epoch and the saved weights are the average's; "
                             "BatchNorm running statistics are averaged with the same decay. No gain measured "
                             "(benchmarks/cheaper_accuracy.py, README).", check=check_ema)
    tta: str = option("none", "Test-time augmentation, image classification: none, or flip (average the softmax of "
                              "each image and its horizontal flip) for validation, test, `evaluate` and `predict`. "
                              "+0.003 on Fashion-MNIST, inside the seed spread (benchmarks/cheaper_accuracy.py).",
                      choices=TTA_CHOICES)
    keep: str = option("best", "Which weights the run ends with: best (the epoch with the best validation score "
                               "across every phase; a two-stage run can end with its head-only stage) or last (the "
                               "final epoch's, as a fixed schedule gives them: for domain adaptation, where the "
                               "source validation split is a poor guide to the target).", choices=("best", "last"))
    seed: int = option(0, "Seed for splits, initialisation and data order (each epoch and each augmented view "
                          "draws its own stream from it).", check=lambda n, v: check_int(n, v, 0, example=1))


@dataclass
class CacheOptions:
    """What is computed once and reused."""

    PANEL: ClassVar[str] = "Caches"

    feature_cache: str = option("auto", "auto: while the backbone is frozen, run it once and train the head on "
                                        "cached float16 features; off: run it every epoch.", choices=("auto", "off"))
    cache_dir: str | None = option(None, "Where the feature and decoded-input caches live (share it between runs "
                                         "to reuse them).", default_text="RUN/feature-cache")
    cache_views: int = option(0, "Augmented views per image to cache for head-only phases (0: un-augmented "
                                 "features).",
                              check=lambda n, v: check_int(n, v, 0, "0 (un-augmented features) or a positive number "
                                                                    "of augmented views", 5))
    head_fit: str = option("auto", "Head-only phases on cached features: auto (exact L-BFGS logistic fit when the "
                                   "head is linear and features are un-augmented), lbfgs, sgd.", choices=HEAD_FITS)
    prefix_cache: str = option("auto", "Frozen-prefix cache for phases whose first layer groups stay frozen "
                                        "(progressive, --max-unfrozen): run the frozen layers once and train the rest "
                                        "on their cached outputs. auto: when the inputs are not augmented (--augment "
                                        "none), which trains exactly as the uncached path; views: also with "
                                        "augmentation, on --cache-views K cached augmented views (epoch e reads view "
                                        "e mod K); off: run them every step.", choices=PREFIX_CACHES)
    decoded_cache: str = option("auto", "auto: decode and resize each image once, augment the stored uint8 tensors "
                                        "every epoch; off: decode every epoch.", choices=("auto", "off"))


@dataclass
class RuntimeOptions:
    """Devices, precision and workers."""

    PANEL: ClassVar[str] = "Devices and speed"

    workers: int | None = option(None, "DataLoader workers.", default_text="sized to the machine",
                                 check=lambda n, v: v is None or check_int(n, v, 0))
    mixed_precision: str = option("auto", "auto (bf16/fp16 on GPU, fp32 on CPU), no, fp16, bf16.",
                                  choices=MIXED_PRECISION)
    channels_last: str = option("auto", "auto (on a GPU: on for convolutional networks; on the CPU: on for "
                                        "those with BatchNorm, such as ResNet and EfficientNet), on, off.",
                                choices=("auto", "on", "off"))
    compile: bool = option(False, "torch.compile the model (slow to start; pays off on long GPU runs).",
                           flags=("--compile",))
    cpu: bool = option(False, "Train on the CPU even if a GPU is present.")
    cpu_allocator: str = option("auto", "auto: on Linux (glibc), keep freed memory in the process instead of "
                                        "returning every large tensor's pages to the kernel and faulting them in "
                                        "again on the next step (process-wide; whole training runs 1.1-1.4x and "
                                        "EfficientNet inference 2x faster on a 2-core CPU, at 6-12% more peak "
                                        "memory: benchmarks/cpu_allocator.py); off: leave malloc as it is.",
                                choices=CPU_ALLOCATORS)
    device_augment: str = option("auto", "Hold the decoded-input cache on the training device and crop, flip and "
                                          "normalise the training batches there (the same crops and flips as the "
                                          "CPU path): auto (on with CUDA and the decoded cache, --augment none or "
                                          "light), on (also on the CPU), off.", choices=DEVICE_AUGMENTS)
    budget: float | None = option(None, "Wall-time budget, from the start of the run (data, caches and training; "
                                        "the test evaluation after it is not counted): seconds (60) or a duration "
                                        "(90s, 2m, 1h30m). Each phase gets the epochs that still fit (its LR "
                                        "schedule ends with them; a fine-tuning phase is first estimated from a "
                                        "timed training step, and trains only its top groups when an epoch of all "
                                        "of them does not fit), and the run stops with the best epoch's weights "
                                        "when no epoch fits. transferkit.json records it in seconds.",
                                  default_text="none", cli_type=str, metavar="<duration>",
                                  check=lambda n, v: v is None or check_range(
                                      n, parse_duration(n, v), 0, 1e9, low_open=True,
                                      allowed="a positive number of seconds", example=60))


@dataclass
class OutputOptions:
    """Where the run goes."""

    PANEL: ClassVar[str] = "Output"

    out: str | None = option(None, "Run folder to create.", default_text="runs/<model>-<strategy>-<time>")
    overwrite: bool = option(False, "Replace an existing run folder.")
    evaluate_test: bool = option(True, "Evaluate the test split at the end of the run.", cli=False)


@dataclass
class ShiftOptions:
    """Domain shift and forgetting: the way back towards the pre-trained model."""

    PANEL: ClassVar[str] = "Domain shift and forgetting"

    target_data: str | None = option(None, "Unlabelled images of the target domain to adapt to: a folder (searched "
                                           "recursively; sub-folder names are ignored) or builtin:fashion-mnist-m / "
                                           "builtin:digits (their unlabelled pool). A built-in target's labelled test "
                                           "split is scored at the end (target_test in transferkit.json).")
    adapt: str = option("none", "Unsupervised domain adaptation to --target-data: none, dann (gradient reversal), "
                                "cdan (CDAN+E: conditioned on the predictions, entropy-weighted).",
                        choices=ADAPT_METHODS)
    target_val: str | None = option(None, "A small labelled target validation set (a folder of class folders or a "
                                          "CSV manifest) that early stopping and the best epoch are chosen on instead "
                                          "of the source validation split.",
                                    default_text="select on the source validation split")
    wise_ft: bool = option(False, "WiSE-FT at the end of the run: interpolate the weights between the pre-trained "
                                  "backbone + linear-probe head and the fine-tuned model over alpha = 0, 0.1, ..., 1 "
                                  "and keep the alpha with the best validation accuracy (interpolation.json, "
                                  "interpolation.png). See also `transferkit interpolate`.", flags=("--wise-ft",))


TRAIN_SECTIONS: tuple[type, ...] = (DataOptions, ModelOptions, SegmentationOptions, StrategyOptions, CacheOptions,
                                    RuntimeOptions, ShiftOptions, OutputOptions)


@dataclass
class TrainConfig(OutputOptions, ShiftOptions, RuntimeOptions, CacheOptions, StrategyOptions, SegmentationOptions,
                  ModelOptions,
                  DataOptions):
    """Everything a run needs: every section above as one flat dataclass. Saved in the run folder as
    ``config.yaml`` (a recipe; what ``--resume`` reads). See ``transferkit train --help`` for each field."""

    SECTIONS: ClassVar[tuple[type, ...]] = TRAIN_SECTIONS

    def resolve_defaults(self) -> None:
        """Defaults that depend on the data and the modality: the task (segmentation when the data has masks);
        images 10 epochs, head dropout 0.2; text (the BERT recipe) 4 epochs, dropout 0.1; class weights: inverse
        pixel frequency for segmentation, none otherwise; detection and segmentation two-stage: layer-wise LR
        decay 0.5 from the head's LR unless an LR option is given; ``--strategy auto`` where it does not measure
        (:func:`auto_measures`): two-stage."""
        if self.task is None:
            self.task = infer_task(self.data)[0]
        text = is_text_model(self.model)
        if self.epochs is None:
            self.epochs = 4 if text else 10
        if self.dropout is None:
            self.dropout = 0.1 if text else 0.2
        if self.class_weights is None:
            # Segmentation's pixels are mostly background (fashion-scenes: 86%, each item class 1-2%): unweighted,
            # the decoder learns background / foreground and leaves the item classes at IoU 0 (see the README).
            self.class_weights = "auto" if self.task == "segmentation" else "none"
        if self.strategy == "auto" and not auto_measures(self.task, self.adapt, self.wise_ft):
            self.strategy = AUTO_UNMEASURED
        if self.lr_decay is None and decays_by_default(self.task, self.strategy, self.lr, self.lrs):
            self.lr_decay = DENSE_LR_DECAY

    def validate(self) -> TrainConfig:
        """Check every field (its schema check) and the rules between fields; returns ``self``."""
        self.resolve_defaults()
        self.budget = parse_duration("budget", self.budget)  # "90s", "2m" (the command line, recipes) as seconds
        if isinstance(self.lrs, (list, tuple)):
            self.lrs = ",".join(str(v) for v in self.lrs)
        for f in fields(self):
            check = spec_of(f).check
            if check is not None:
                check(f.name, getattr(self, f.name))
        if self.lrs and self.lr_decay is not None:
            raise TransferKitError("Pass either --lrs or --lr-decay, not both: both set per-group learning rates.")
        if self.task != "classification" and is_text_model(self.model):
            raise TransferKitError(f"--task {self.task} needs a vision model; {self.model} is a language model. Fix: "
                                   "pass e.g. --model efficientnet_lite0.")
        if self.strategy == "lora" and not is_text_model(self.model):
            raise TransferKitError("The lora strategy is for language models (hf:..., minilm-l6). Fix: pick another "
                                   "--strategy for vision models.")
        self._check_adaptation()
        if self.tta != "none" and (is_text_model(self.model) or self.task != "classification"):
            what = f"--task {self.task}" if self.task != "classification" else f"{self.model} (a language model)"
            raise TransferKitError(f"--tta {self.tta} is implemented for image classification; {what} is not "
                                   "supported. Fix: drop --tta (or pass --tta none).")
        if self.wise_ft and self.strategy in ("scratch", "linear-probe", "lora"):
            raise TransferKitError(f"--wise-ft interpolates between the pre-trained backbone and a fine-tuned one; "
                                   f"--strategy {self.strategy} does not fine-tune the backbone's weights. Fix: use "
                                   "--strategy two-stage (or fine-tune, progressive), or drop --wise-ft.")
        return self

    def _check_adaptation(self) -> None:
        """The rules between --adapt, --target-data and --target-val."""
        if self.adapt != "none" and not self.target_data:
            raise TransferKitError(f"--adapt {self.adapt} needs unlabelled target images. Fix: pass --target-data "
                                   "FOLDER (or builtin:fashion-mnist-m), or drop --adapt.")
        if self.target_val and not self.target_data:
            raise TransferKitError("--target-val selects the model for a target domain, but no --target-data was "
                                   "given. Fix: pass --target-data with the unlabelled target images.")
        if self.adapt != "none" and is_text_model(self.model):
            raise TransferKitError(f"--adapt {self.adapt} works with image models; {self.model} is a language model. "
                                   "Fix: drop --adapt (or adapt an image model).")
        if self.adapt != "none" and self.strategy in ("scratch", "lora"):
            raise TransferKitError(f"--adapt {self.adapt} adapts a pre-trained model; --strategy {self.strategy} is "
                                   "not supported. Fix: use two-stage, fine-tune, progressive or linear-probe (with "
                                   "--hidden N: a bottleneck that adapts).")
        if self.adapt != "none" and self.strategy == "linear-probe" and not self.hidden:
            raise TransferKitError(f"--adapt {self.adapt} with --strategy linear-probe: the backbone is frozen and the "
                                   "head is one linear layer, so no features can adapt. Fix: add a bottleneck, e.g. "
                                   "--hidden 256, or fine-tune (--strategy two-stage).")
        if (self.adapt != "none" or self.wise_ft) and self.task not in (None, "classification"):
            flag = f"--adapt {self.adapt}" if self.adapt != "none" else "--wise-ft"
            raise TransferKitError(f"{flag} is for classification for now; --task {self.task} is not supported. Fix: "
                                   f"drop {flag}, or train a classifier.")
        if self.target_val and str(self.target_val).startswith("builtin:"):
            raise TransferKitError(f"--target-val {self.target_val}: a built-in's labelled split is its test set, "
                                   "which must never choose the model. Fix: pass a folder or CSV of labelled target "
                                   "validation images.")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainConfig:
        """A validated config from keyword options (unknown names are an error that lists the known ones)."""
        check_names(options, cls, "option")
        if options.get("data") in (None, ""):
            raise TransferKitError("Missing --data. Fix: pass --data FOLDER, a CSV manifest or builtin:fashion-mnist "
                                   "(or --resume RUN to continue a run, or --config RECIPE with a data: line).")
        return cls(**options).validate()

    def to_recipe(self, header: str = "") -> str:
        """This configuration as a YAML recipe, one section per block (``train --config`` reads it back)."""
        import yaml

        values = dataclasses.asdict(self)
        lines = [f"# {line}" for line in header.splitlines()] + ([""] if header else [])
        for section in TRAIN_SECTIONS:
            lines.append(f"# {section.PANEL}")
            for f in fields(section):
                if f.name in RECIPE_EXCLUDES:
                    continue
                lines.append(yaml.safe_dump({f.name: values[f.name]}, sort_keys=False,
                                            default_flow_style=False, allow_unicode=True).rstrip())
            lines.append("")
        return "\n".join(lines)


RECIPE_EXCLUDES = ("out", "overwrite")  # where a run goes is not part of how it trains


def train_option_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def check_names(options: Mapping[str, Any], schema: type, what: str = "option") -> None:
    """Refuse names that ``schema`` (a dataclass) does not declare, naming the closest known ones."""
    known = [f.name for f in fields(schema)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        hints = " ".join(filter(None, (did_you_mean(name, known) for name in unknown)))
        raise TransferKitError(f"Unknown {what}(s) {', '.join(unknown)}. {hints + ' ' if hints else ''}"
                               f"Known: {', '.join(sorted(known))}.")


# --- recipes -----------------------------------------------------------------------------------------


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The options of a recipe file: YAML (``.yaml``/``.yml``) or TOML (``.toml``), flat ``name: value`` lines
    (dashes or underscores), optionally grouped under section tables (``[strategy]`` / ``strategy:``)."""
    path = Path(path)
    if not path.is_file():
        raise TransferKitError(f"Recipe not found: {path}. Fix: pass --config with an existing .yaml or .toml file.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            import yaml

            raw = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
        else:
            raise TransferKitError(f"Recipe {path} must be a .yaml, .yml or .toml file. Fix: rename it.")
    except TransferKitError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, JSONDecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TransferKitError(f"Cannot parse recipe {path}: {first}. Fix: correct the file's syntax.") from exc
    raw = raw or {}
    if not isinstance(raw, dict):
        raise TransferKitError(f"Recipe {path} must hold name: value pairs; found {type(raw).__name__}.")
    flat: dict[str, Any] = {}
    panels = {section.PANEL.lower(): section for section in TRAIN_SECTIONS}
    names = {s.__name__.removesuffix("Options").lower() for s in TRAIN_SECTIONS} | set(panels)
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if isinstance(value, dict) and name.lower() in names:  # a section table
            flat.update({str(k).replace("-", "_"): v for k, v in value.items()})
        else:
            flat[name] = value
    check_names(flat, TrainConfig, f"option in recipe {path}")
    return flat


def merge_options(recipe: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe values, overridden by the options given explicitly (``None`` means not given)."""
    return {**recipe, **{k: v for k, v in given.items() if v is not None}}


# --- options of the other commands ------------------------------------------------------------------


def json_flag() -> Any:
    return option(False, "Print one JSON document.", flags=("--json",))


@dataclass
class PlanOptions:
    PANEL: ClassVar[str] = "Plan"

    num_classes: int = option(10, "Classes of the task when --data is not given.", check=positive)
    processes: int | None = option(None, "Plan for N processes sharing each batch (torchrun --nproc-per-node N).",
                                   default_text="this launch's, 1 outside torchrun", check=positive_or_none)
    as_json: bool = json_flag()


@dataclass
class RunControlOptions:
    """``train``'s own switches (not part of the configuration)."""

    PANEL: ClassVar[str] = "Run"

    config: str | None = option(None, "A recipe (YAML or TOML) that sets any option; flags on the command line "
                                      "override it. A run's own config.yaml is one.")
    resume: str | None = option(None, "Continue an interrupted run folder from its last completed epoch (its saved "
                                      "settings are used).")
    dry_run: bool = option(False, "Print the plan (groups, phases, LRs, BatchNorm) and stop.")
    quiet: bool = option(False, "No progress bars or per-epoch lines.", flags=("--quiet", "-q"))


@dataclass
class CompareOptions:
    """``compare``'s grid (every other option is a ``train`` option)."""

    PANEL: ClassVar[str] = "Grid"

    strategies: str = option("scratch,linear-probe,two-stage", "Comma-separated strategies.")
    per_class: str = option("10,30,100", "Comma-separated training examples per class (segmentation: training "
                                         "images).")
    scratch_per_class: str = option("", "Extra sizes for scratch only (to find how much data it needs), e.g. 1000.")
    seeds: int = option(1, "Seeds per (strategy, size); 3 or more give bootstrap intervals worth reading.",
                        check=positive)
    recipes: str = option("own", "own: each strategy trains with its own recipe (scratch: a long budget, stopped "
                                 "when validation accuracy plateaus, its own LR and weight decay; transfer "
                                 "strategies: train's defaults); shared: train's defaults for every strategy. "
                                 "Options given here apply to every strategy.", choices=("own", "shared"))
    tune: str = option("lr", "lr: a small LR search per strategy and size (3 values on a log grid around the "
                             "recipe's, trained on seed 0, chosen on validation accuracy — never on test); none: the "
                             "recipe's LR.", choices=("lr", "none"))
    adapt: str = option("none", "Comma-separated domain-adaptation methods, a grid axis (needs --target-data): "
                                "each method other than none adds every pre-trained strategy trained with it "
                                "(two-stage+dann); every cell is also scored on the target's labelled test split "
                                "when it has one (builtin:fashion-mnist-m).")
    retention: bool = option(True, "Measure what each pre-trained cell kept of its pre-trained model (top-1 "
                                   "agreement on natural reference images, as `transferkit forgetting`): a column "
                                   "and a plot of accuracy vs retention.", flags=("--retention/--no-retention",))
    out: str = option("reports/compare", "Report folder (results.json, summary.md, report.html, runs/, cache/); an "
                                         "interrupted grid resumes there.")


# ``train`` options that compare sets per cell or owns.
COMPARE_OWNS = ("strategy", "per_class", "seed", "out", "overwrite", "cache_dir", "evaluate_test", "adapt")
ADVISE_USES = ("data", "task", "model", "weights", "per_class", "text_column", "label_column", "seed", "image_size",
               "ignore_index")


@dataclass
class AdviseOptions:
    PANEL: ClassVar[str] = "Output"

    as_json: bool = json_flag()


HELP_TTA = ("Test-time augmentation, image classification: none, or flip (the mean softmax of each image and its "
            "horizontal flip).")
HELP_REFERENCE = ("Reference inputs for the retention measures: a folder of images (a file of sentences, one per "
                  "line, for a language model).")


@dataclass
class EvaluateOptions:
    PANEL: ClassVar[str] = "Evaluate"

    run: str = option(help="A finished run folder.", argument=True)
    data: str | None = option(None, "Labelled examples: a folder of class sub-folders (a tree's test/ is used), a "
                                    "CSV manifest, a text file, or builtin:NAME (its test split).",
                              default_text="the run's own test split")
    as_json: bool = option(False, "Print one JSON document instead of a report.", flags=("--json",))
    png: str | None = option(None, "Where to write the confusion-matrix PNG (segmentation, detection: the folder "
                                   "for the per-class table and drawn examples).",
                             default_text="RUN/confusion_matrix.png; segmentation, detection: RUN/evaluation")
    batch_size: int = option(64, "Examples per batch.", check=positive)
    skip_bad_images: bool = option(False, "Skip unreadable images.")
    retention: bool = option(True, "--json: also measure what the run kept of its pre-trained model (top-1 "
                                   "agreement, KL, CKA, weight change: see `transferkit forgetting`).",
                             flags=("--retention/--no-retention",))
    reference: str | None = option(None, HELP_REFERENCE, default_text="built-in natural images / sentences")
    tta: str | None = option(None, HELP_TTA, default_text="the run's --tta", choices=TTA_CHOICES)


@dataclass
class ForgettingOptions:
    PANEL: ClassVar[str] = "Forgetting"

    run: str = option(help="A finished run folder.", argument=True)
    reference: str | None = option(None, HELP_REFERENCE, default_text="built-in natural images / sentences")
    previous: str | None = option(None, "Task sequence: the run (task A) this run continued from with --weights "
                                        "PREVIOUS/model.safetensors; also report A's test accuracy with this run's "
                                        "backbone under A's head (the drop is the backward transfer).")
    batch_size: int = option(32, "Examples per batch.", check=positive)
    as_json: bool = json_flag()


@dataclass
class InterpolateOptions:
    PANEL: ClassVar[str] = "Interpolate (WiSE-FT)"

    run: str = option(help="A finished run folder (fine-tuned; two-stage runs keep their linear-probe head).",
                      argument=True)
    out: str = option(help="The new run folder (the interpolated model at the chosen alpha).")
    alphas: str = option("0:1:0.1", "The alphas to try: start:stop:step or comma-separated values in \\[0, 1]; 0 is "
                                    "the pre-trained backbone + linear probe, 1 the fine-tuned run.")
    data: str | None = option(None, "Labelled validation examples to choose alpha on (a folder of class folders, a "
                                    "CSV manifest); never the test set.", default_text="the run's validation split")
    bn_recalibrate: bool = option(False, "Re-estimate BatchNorm statistics of each interpolated model on the run's "
                                         "training images.")
    reference: str | None = option(None, HELP_REFERENCE, default_text="built-in natural images / sentences")
    batch_size: int = option(64, "Examples per batch.", check=positive)
    overwrite: bool = option(False, "Replace an existing output folder.")
    as_json: bool = json_flag()


@dataclass
class PredictOptions:
    PANEL: ClassVar[str] = "Predict"

    run: str = option(help="A finished run folder.", argument=True)
    inputs: list[str] | None = option(None, "Image files and/or folders (searched recursively); for a language "
                                            "model, the texts.", argument=True)
    file: str | None = option(None, "Language models: a file of texts, one per line (or a CSV/TSV/JSONL with a text "
                                    "column).")
    top_k: int = option(3, "How many labels to show per input.", check=positive)
    out: str | None = option(None, "Segmentation: folder for the class-index masks (NAME.png) and colour overlays "
                                   "(NAME_overlay.png); detection: for the boxes (NAME.json) and the images with "
                                   "them drawn (NAME_boxes.png).", default_text="RUN/predictions")
    score_threshold: float | None = option(None, "Detection: keep boxes scoring at least this.", default_text="0.3",
                                           check=check_score_threshold)
    nms_threshold: float | None = option(None, "Detection: non-maximum suppression drops a box overlapping a "
                                               "higher-scoring one of its class by more than this IoU.",
                                         default_text="0.5", check=check_score_threshold)
    as_json: bool = json_flag()
    batch_size: int = option(64, "Examples per batch.", check=positive)
    tta: str | None = option(None, HELP_TTA, default_text="the run's --tta", choices=TTA_CHOICES)


@dataclass
class DemoOptions:
    PANEL: ClassVar[str] = "Demo"

    out: str = option("runs/demo", "Folder for the three demo runs.")
    per_class: int = option(30, "Training images per class.", check=positive)
    image_size: int = option(96, "Input size in pixels.", check=positive)
    epochs: int = option(8, "Epochs per run.", check=positive)


@dataclass
class ExportOptions:
    PANEL: ClassVar[str] = "Export"

    run: str = option(help="A finished run folder.", argument=True)
    format: str = option(help="onnx (onnxruntime), pt2 (torch.export program) or hf (a Hugging Face folder for "
                              "AutoModelForSequenceClassification; text runs with cls pooling).",
                         check=lambda n, v: check_choice(n, v, ("onnx", "pt2", "hf"), "Pass --format onnx."))
    out: str = option(help="The output file (onnx, pt2) or folder (hf); a JSON sidecar with labels, preprocessing "
                           "and the verification goes beside it.")
    include_preprocessing: bool = option(False, "Images: the graph takes uint8 NCHW images at the model's input "
                                                "size and scales and normalises them itself (resize and crop stay "
                                                "outside).")
    opset: int = option(18, "ONNX opset.", check=positive)
    tolerance: float = option(1e-4, "Largest difference in class probabilities between the export and the PyTorch "
                                    "model that the check accepts.",
                              check=lambda n, v: check_range(n, v, 0, 1, low_open=True, example="1e-4"))
    overwrite: bool = option(False, "Replace an existing output.")


@dataclass
class ServeOptions:
    PANEL: ClassVar[str] = "Serve"

    source: str = option(help="A finished run folder (PyTorch) or an exported .onnx file with its sidecar "
                              "(onnxruntime).", argument=True)
    host: str = option("127.0.0.1", "Interface to listen on (0.0.0.0: all, e.g. in a container).")
    port: int = option(8000, "TCP port.", check=lambda n, v: check_int(n, v, 1, example=8000))
    max_batch_size: int = option(16, "Dynamic batching: most inputs per model call (1: off).", check=positive)
    max_wait_ms: float = option(5.0, "Dynamic batching: how long a batch waits for more inputs.",
                                check=non_negative_float)
    max_queue: int = option(256, "Most inputs waiting for the model; beyond it requests get 503.", check=positive)
    max_request_mb: float = option(16.0, "Largest request body in MB (413 beyond).",
                                   check=lambda n, v: check_range(n, v, 0, 1e6, low_open=True, example=16))
    max_inputs: int = option(64, "Most images or texts in one request (413 beyond).", check=positive)
    max_image_pixels: int = option(40_000_000, "Largest image, width x height (413 beyond: decompression bombs).",
                                   check=positive)
    timeout: float = option(30.0, "Seconds a request may take (408 reading, 504 predicting).",
                            check=lambda n, v: check_range(n, v, 0, 1e6, low_open=True, example=30))
    top_k: int = option(3, "Labels per prediction when the request does not say.", check=positive)
    api_key: str | None = option(None, "Require this key ('X-API-Key: KEY' or 'Authorization: Bearer KEY') on "
                                       "/predict and /info.",
                                 default_text="the TRANSFERKIT_API_KEY environment variable, else none")
    threads: int | None = option(None, "Inference threads.", default_text="the runtime's",
                                 check=positive_or_none)


@dataclass
class ModelsOptions:
    PANEL: ClassVar[str] = "Output"

    as_json: bool = json_flag()


def check_values(values: Mapping[str, Any], schema: type) -> None:
    """Run the schema checks of ``schema``'s fields on the given (non-``None``) values."""
    for f in fields(schema):
        value = values.get(f.name)
        if value is not None and spec_of(f).check is not None:
            spec_of(f).check(f.name, value)


def type_hints(schema: type) -> dict[str, Any]:
    """The resolved field types of a section (annotations are strings under ``from __future__ import``)."""
    return typing.get_type_hints(schema)

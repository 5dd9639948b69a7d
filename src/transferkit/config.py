"""The configuration of a run: every option of ``transferkit train`` with its default, and its validation.

Saved as ``config.json`` in the run folder (what ``--resume`` reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import bad_value
from .models.text import is_text_model
from .strategies import STRATEGIES, resolve_bn_policy

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
HEAD_FITS = ("auto", "lbfgs", "sgd")
TEXT_LR, TEXT_SCRATCH_LR, TEXT_LORA_LR = 3e-5, 1e-4, 5e-4  # BERT recipe: 2e-5..5e-5; LoRA adapters learn faster


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run folder (what ``--resume`` reads).

    See ``transferkit train --help`` for each field; defaults follow the usual rules of thumb.
    """

    data: str
    model: str = "efficientnet_lite0"
    strategy: str = "two-stage"
    out: str | None = None
    weights: str | None = None
    epochs: int | None = None
    head_epochs: int = 3
    lr: float | None = None
    head_lr: float | None = None
    lrs: str | None = None
    lr_decay: float | None = None
    unfreeze_every: int = 1
    max_unfrozen: int | None = None
    groups: int | None = None
    l2_sp: float = 0.0
    feature_cache: str = "auto"
    cache_dir: str | None = None
    cache_views: int = 0
    head_fit: str = "auto"
    decoded_cache: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    batch_size: int = 32
    image_size: int | None = None
    augment: str = "light"
    dropout: float | None = None
    hidden: int = 0
    text_column: str = "text"
    label_column: str = "label"
    max_length: int | None = None
    pooling: str | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str | None = None
    trust_remote_code: bool = False
    val_fraction: float = 0.2
    per_class: int | None = None
    test_per_class: int | None = None
    seed: int = 0
    patience: int = 3
    bn: str = "auto"
    label_smoothing: float = 0.0
    class_weights: str = "none"
    weight_decay: float = 0.01
    warmup: float = 0.1
    workers: int | None = None
    skip_bad_images: bool = False
    mixed_precision: str = "auto"
    cpu: bool = False
    overwrite: bool = False
    evaluate_test: bool = True

    def resolve_defaults(self) -> None:
        """Defaults that depend on the modality: images 10 epochs, head dropout 0.2; text (the BERT recipe)
        4 epochs, dropout 0.1."""
        text = is_text_model(self.model)
        if self.epochs is None:
            self.epochs = 4 if text else 10
        if self.dropout is None:
            self.dropout = 0.1 if text else 0.2

    def validate(self) -> None:
        self.resolve_defaults()
        if self.strategy not in STRATEGIES:
            raise bad_value("strategy", self.strategy, f"one of {', '.join(STRATEGIES)}")
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        _positive("head_epochs", self.head_epochs)
        if self.per_class is not None:
            _positive("per_class", self.per_class)
        if self.test_per_class is not None:
            _positive("test_per_class", self.test_per_class)
        if not 0.0 < self.val_fraction < 1.0:
            raise bad_value("val_fraction", self.val_fraction, "a float in (0, 1)", "Pass e.g. --val-fraction 0.2.")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise bad_value("patience", self.patience, "a non-negative integer (0 turns early stopping off)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad_value("label_smoothing", self.label_smoothing, "a float in [0, 1)")
        if self.class_weights not in ("none", "auto"):
            raise bad_value("class_weights", self.class_weights, "'none' or 'auto'")
        if self.weight_decay < 0:
            raise bad_value("weight_decay", self.weight_decay, "a non-negative float")
        resolve_bn_policy(self.bn, self.strategy, self.batch_size)
        if isinstance(self.lrs, (list, tuple)):
            self.lrs = ",".join(str(v) for v in self.lrs)
        parse_lrs(self.lrs)
        if self.feature_cache not in ("auto", "off"):
            raise bad_value("feature_cache", self.feature_cache, "'auto' or 'off'")
        if self.decoded_cache not in ("auto", "off"):
            raise bad_value("decoded_cache", self.decoded_cache, "'auto' or 'off'")
        if self.channels_last not in ("auto", "on", "off"):
            raise bad_value("channels_last", self.channels_last, "'auto', 'on' or 'off'")
        if self.head_fit not in HEAD_FITS:
            raise bad_value("head_fit", self.head_fit, f"one of {', '.join(HEAD_FITS)}")
        if not isinstance(self.cache_views, int) or self.cache_views < 0:
            raise bad_value("cache_views", self.cache_views, "0 (un-augmented features) or a positive number of "
                            "augmented views", "Pass e.g. --cache-views 5.")
        if self.l2_sp < 0:
            raise bad_value("l2_sp", self.l2_sp, "a non-negative float (0: off)", "Pass e.g. --l2-sp 0.01.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad_value("mixed_precision", self.mixed_precision, f"one of {', '.join(MIXED_PRECISION)}")
        if self.workers is not None and self.workers < 0:
            raise bad_value("workers", self.workers, "a non-negative integer")


def parse_lrs(value: str | Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        return tuple(float(v) for v in parts)
    except (TypeError, ValueError) as exc:
        raise bad_value("lrs", value, "comma-separated learning rates, early layers first",
                        "Pass e.g. --lrs 1e-5,1e-4,1e-3.") from exc


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_value(name, value, "a positive integer", f"Pass e.g. --{name.replace('_', '-')} 8.")

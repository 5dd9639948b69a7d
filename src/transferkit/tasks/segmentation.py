"""Semantic segmentation: the pre-trained backbone's feature pyramid as the encoder, a new decoder as the head.

- **Head**: a U-Net or FPN decoder from segmentation-models-pytorch over :class:`~transferkit.models.pyramid.
  FeaturePyramid`, then a 3x3 convolution to one logit map per class. The encoder keeps the backbone's pre-trained
  weights from transferkit's own model sources (built-ins, timm, torchvision, ``--weights FILE``): smp never downloads
  anything. The decoder is the ``head`` layer group, so ``linear-probe`` trains the decoder on a frozen encoder,
  ``two-stage`` trains it first and then everything, ``progressive`` unfreezes encoder stages top down, ``scratch``
  starts the encoder from random weights. Inputs whose sides do not divide by 32 are padded (and the logits cropped).
- **Loss**: cross-entropy (class weights — by default inverse pixel frequency, ``--class-weights auto`` — label
  smoothing, ``--ignore-index``), plus ``--dice-weight`` x Dice loss.
- **Metrics** (validation and test alike): a confusion matrix summed over all images (torchmetrics), then per class
  IoU = TP / (TP + FP + FN) and Dice = 2TP / (2TP + FP + FN), pixel accuracy = correct / labelled pixels. Pixels
  marked with the ignore index count nowhere. **Absent classes** — no pixel of the class in the truth *and* none
  predicted, over the whole evaluation set — have no IoU (``null``) and are left out of mIoU and mean Dice (the
  convention of torchmetrics' macro average, VOC and mmseg); a class predicted but absent from the truth scores
  IoU 0 and counts. mIoU includes the background class. Early stopping follows validation mIoU.
- **Data**: :mod:`transferkit.data.masks` (images + masks folders, CSV manifests, ``builtin:fashion-scenes``) with
  joint augmentation; ``--per-class N`` means N training images.
- **Predict**: a class-index mask per image at the image's own size (the model sees it resized to the input size;
  its logits are resized back), pixel fractions per class, colour overlays.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..data.masks import (
    MaskDataset,
    MaskSamples,
    load_mask_eval_data,
    load_mask_training_data,
    mask_transforms,
    read_mask,
)
from ..data.samples import EvalData
from ..errors import TransferKitError, check_int, check_range
from ..models.groups import LayerGroup, group_backbone
from ..models.model import ModelSpec, TransferModel
from ..models.preprocessing import Preprocessing
from ..models.pyramid import FeaturePyramid, feature_pyramid, padding_for, rebuild_pyramid
from .base import Meter, Objective, Task, montage

logger = logging.getLogger(__name__)

DECODERS = {"unet": "U-Net", "fpn": "FPN"}


def check_decoder_channels(name: str, value: object) -> int:
    return check_int(name, value, 8, "an integer of at least 8 (the decoder's widest stage)", 128)


def check_ignore_index(name: str, value: object) -> int:
    return check_int(name, value, 0, "a mask value, 0 or more (255 by convention)", 255)


def check_dice_weight(name: str, value: object) -> float:
    return check_range(name, value, 0, 100, allowed="a non-negative weight (0: cross-entropy only)", example=0.5)


# --- the model -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """The new head of a segmentation model: a decoder over the encoder's pyramid and a per-pixel classifier.

    Attributes:
        decoder: ``unet`` or ``fpn``.
        encoder_channels: channels of the pyramid's maps (the input first, then strides 2..32).
        num_classes: classes of the label map (background included).
        channels: the decoder's widest stage (U-Net: halved at each of its 5 stages, at least 16; FPN: the pyramid
            width, with half of it, rounded to a multiple of 32, per segmentation branch).
        dropout: FPN only: channel dropout before the classifier (smp's default 0.2).
        pyramid: the encoder's :class:`~transferkit.models.pyramid.PyramidLayout` (to rebuild a saved run).
    """

    decoder: str
    encoder_channels: tuple[int, ...]
    num_classes: int
    channels: int = 128
    dropout: float = 0.0
    pyramid: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise TransferKitError(f"Segmentation needs at least two classes (background and one more); the label "
                                   f"map has {self.num_classes}.")

    def widths(self) -> list[int]:
        if self.decoder == "unet":
            return [max(16, self.channels >> i) for i in range(5)]
        return [self.channels, max(32, self.channels // 2 // 32 * 32)]

    def build(self) -> nn.Module:
        return SegmentationHead(self)

    def describe(self) -> str:
        widths = "→".join(map(str, self.widths()))
        return f"{DECODERS[self.decoder]} decoder ({widths} channels) → Conv3x3(→{self.num_classes} classes)"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder_channels"] = list(self.encoder_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        return cls(**{**data, "encoder_channels": tuple(data["encoder_channels"])})


class SegmentationHead(nn.Module):
    """smp's decoder and segmentation head: pyramid maps in, logits at the input's resolution out."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead as Classifier

        channels = list(config.encoder_channels)
        widths = config.widths()
        if config.decoder == "unet":
            from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

            self.decoder = UnetDecoder(encoder_channels=channels, decoder_channels=widths, n_blocks=5,
                                       use_norm="batchnorm", add_center_block=False, interpolation_mode="nearest")
            self.classifier = Classifier(widths[-1], config.num_classes, kernel_size=3)
        else:
            from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder

            self.decoder = FPNDecoder(encoder_channels=channels, encoder_depth=5, pyramid_channels=widths[0],
                                      segmentation_channels=widths[1], dropout=config.dropout, merge_policy="add")
            self.classifier = Classifier(widths[1], config.num_classes, kernel_size=3, upsampling=4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.decoder(features))


class SegmentationModel(TransferModel):
    """A :class:`TransferModel` whose backbone is a :class:`FeaturePyramid` and whose head is a decoder:
    ``model(x)`` gives logits (N, C, H, W) for any H, W (padded to a multiple of 32 inside)."""

    task = "segmentation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = padding_for(height, width)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros: the weights' mean colour after normalisation
        return self.head(self.backbone(x))[..., :height, :width]

    def linear_head(self) -> None:
        return None  # no exact fit: the decoder is not a linear layer

    def describe_head(self) -> str:
        replaced = f"replaced {self.spec.replaced}" if self.spec.replaced else "no pre-trained classifier"
        return (f"Head: {replaced} with new {self.head_config.describe()}, on the encoder's feature pyramid: "
                f"{self.backbone.layout.describe()}")


def _fit_input_size(body: nn.Module, size: int) -> None:
    """ViT-style timm models fix their input size: set it to the (padded) size the model will see."""
    padded = size + padding_for(size, size)[0]
    patch_embed = getattr(body, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if hasattr(body, "set_input_size") and img_size is not None and tuple(img_size) != (padded, padded):
        body.set_input_size(img_size=(padded, padded))


def _encoder(body: nn.Module, name: str, size: int, layout: dict | None = None) -> tuple[FeaturePyramid, list]:
    _fit_input_size(body, size)
    encoder = rebuild_pyramid(body, layout) if layout else feature_pyramid(body, name)
    example = None if hasattr(body, "group_matcher") else torch.zeros(1, 3, 64, 64)
    groups = [LayerGroup(g.name, tuple(f"body.{p}" for p in g.param_names))
              for g in group_backbone(body, example)]
    return encoder, groups


def build_segmentation_model(model: str, num_classes: int, *, weights: str | None = None, pretrained: bool = True,
                             image_size: int | None = None, decoder: str = "unet", channels: int = 128,
                             dropout: float = 0.0) -> SegmentationModel:
    """A pre-trained encoder (any transferkit model source) with a new decoder for ``num_classes`` classes."""
    from ..models.sources import load_backbone

    body, _, preprocessing, spec, _ = load_backbone(model, weights=weights, pretrained=pretrained)
    preprocessing = preprocessing.with_image_size(image_size)
    encoder, groups = _encoder(body, model, preprocessing.input_size)
    head = DecoderConfig(decoder, tuple(encoder.out_channels), num_classes, channels,
                         dropout if decoder == "fpn" else 0.0, encoder.layout.to_dict())
    net = SegmentationModel(encoder, head, preprocessing, spec, groups)
    logger.info("Model %s (%s weights); %s", model, spec.weights, net.describe_head())
    return net


# --- loss and figures -------------------------------------------------------------------------------------------


class SegmentationLoss(nn.Module):
    """Pixel cross-entropy (class weights, label smoothing, ignore index) + ``dice_weight`` x smp's Dice loss."""

    def __init__(self, weight: torch.Tensor | None, ignore_index: int, label_smoothing: float = 0.0,
                 dice_weight: float = 0.0) -> None:
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index,
                                                 label_smoothing=label_smoothing)
        self.dice_weight = dice_weight
        if dice_weight:
            from segmentation_models_pytorch.losses import DiceLoss

            self.dice = DiceLoss("multiclass", ignore_index=ignore_index, from_logits=True)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(logits, masks)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, masks)
        return loss


def confusion(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """The (truth x predicted) pixel confusion matrix of index maps, ignored pixels left out (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(predicted.reshape(-1), truth.reshape(-1).long(), num_classes,
                                       ignore_index=ignore_index, validate_args=False)


def scores(matrix: torch.Tensor | np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU, per-class IoU and Dice, mean Dice and pixel accuracy from a confusion matrix (rows: truth). A class with
    no pixel in the truth nor in the predictions is absent: ``None`` and left out of the means. ``foreground_iou`` is
    the IoU of "not class 0" (every other class merged): a class-agnostic figure, comparable with a threshold."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    union = truth + predicted - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    dice = np.where(present, 2 * tp / np.maximum(truth + predicted, 1), np.nan)
    labelled = matrix.sum()
    foreground = matrix[1:, 1:].sum()  # class 0 (background) against all the others merged
    foreground_union = matrix.sum() - matrix[0, 0]
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "foreground_iou": float(foreground / foreground_union) if foreground_union else None,
        "mean_dice": float(dice[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / labelled) if labelled else 0.0,
        "per_class": {name: {"iou": None if not present[i] else float(iou[i]),
                             "dice": None if not present[i] else float(dice[i]),
                             "pixels": int(truth[i]), "predicted": int(predicted[i])}
                      for i, name in enumerate(classes)},
        "absent": [name for i, name in enumerate(classes) if not present[i]],
        "classes": list(classes),
    }


class SegmentationMeter(Meter):
    """Mean loss (per image) and pixel accuracy over the epoch."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index
        self.total_loss, self.correct, self.labelled, self.samples = 0.0, 0, 0, 0

    def add(self, loss: float, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        valid = targets != self.ignore_index
        self.total_loss += loss * targets.size(0)
        self.correct += ((outputs.argmax(dim=1) == targets) & valid).sum().item()
        self.labelled += valid.sum().item()
        self.samples += targets.size(0)

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.total_loss / self.samples:.3f}",
                "px_acc": f"{self.correct / max(self.labelled, 1):.3f}"}

    def totals(self) -> list[float]:
        return [self.total_loss, self.correct, self.labelled, self.samples]

    def result(self, totals: Sequence[float]) -> dict[str, float]:
        total_loss, correct, labelled, samples = totals
        return {"loss": total_loss / max(samples, 1), "accuracy": correct / max(labelled, 1)}


class SegmentationObjective(Objective):
    """The loop's view of segmentation: :class:`SegmentationLoss`; validation loss (pixel cross-entropy), pixel
    accuracy and mIoU from one confusion matrix summed over the split's batches (and processes)."""

    monitor = "miou"

    def __init__(self, classes: Sequence[str], ignore_index: int = 255, dice_weight: float = 0.0) -> None:
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight

    def criterion(self, config: Any) -> nn.Module:
        weight = torch.tensor(config.class_weights, dtype=torch.float32) if config.class_weights else None
        return SegmentationLoss(weight, self.ignore_index, config.label_smoothing, self.dice_weight)

    def meter(self) -> Meter:
        return SegmentationMeter(self.ignore_index)

    def zeros(self) -> torch.Tensor:
        return torch.zeros(2 + len(self.classes) ** 2, dtype=torch.float64)

    def figures(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed pixel cross-entropy, labelled pixels, and the batch's (truth x predicted) confusion matrix,
        flattened: sums that add up over batches and processes into the split's matrix."""
        loss = F.cross_entropy(outputs.float(), targets, ignore_index=self.ignore_index, reduction="sum")
        labelled = (targets != self.ignore_index).sum()
        matrix = confusion(outputs.argmax(dim=1), targets, len(self.classes), self.ignore_index)
        return torch.cat([torch.stack([loss.double(), labelled.double()]), matrix.reshape(-1).double()])

    def summarise(self, totals: Sequence[float]) -> dict[str, float]:
        loss, labelled, *cells = totals
        n = len(self.classes)
        result = scores(np.asarray(cells, dtype=np.float64).reshape(n, n), self.classes)
        return {"loss": loss / max(labelled, 1), "accuracy": result["pixel_accuracy"], "miou": result["miou"]}


# --- predictions -------------------------------------------------------------------------------------------------


PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
                    [255, 215, 180], [0, 0, 128]], dtype=np.uint8)
"""Overlay colours: class i gets ``PALETTE[i % 20]`` (class 0, background, is left uncoloured)."""


def colourise(mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of a class-index mask (ignored pixels white)."""
    colours = PALETTE[np.asarray(mask, dtype=np.int64) % len(PALETTE)]
    colours[np.asarray(mask) == 255] = 255
    return colours


def overlay(image: Image.Image | np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with each non-background class painted over it in its colour."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    painted = mask != 0
    blended = pixels.copy()
    blended[painted] = (1 - alpha) * pixels[painted] + alpha * colourise(mask)[painted]
    return Image.fromarray(blended.round().astype(np.uint8))


@dataclass
class MaskPrediction:
    """One image's predicted mask (class indices at the image's size) and the share of pixels per class."""

    source: str
    mask: np.ndarray
    classes: list[str]

    @property
    def fractions(self) -> dict[str, float]:
        counts = np.bincount(self.mask.ravel(), minlength=len(self.classes))
        return {name: float(counts[i] / self.mask.size) for i, name in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "height": int(self.mask.shape[0]), "width": int(self.mask.shape[1]),
                "fractions": self.fractions}


def image_transform(preprocessing: Preprocessing) -> T.Transform:
    """What the model sees of an image at prediction: resized to the input size, normalised (no crop)."""
    size = (preprocessing.input_size, preprocessing.input_size)
    return T.Compose([T.Resize(size, interpolation=InterpolationMode(preprocessing.interpolation), antialias=True),
                      T.ToDtype(torch.float32, scale=True),
                      T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))])


@torch.no_grad()
def predict_masks(model: SegmentationModel, images: Sequence[Image.Image], batch_size: int = 16) -> list[np.ndarray]:
    """Class-index masks (uint8/int64 arrays at each image's own size) for RGB images."""
    model.eval()
    device = next(model.parameters()).device
    transform = image_transform(model.preprocessing)
    masks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = torch.stack([transform(tv_tensors.Image(torch.from_numpy(np.array(im)).permute(2, 0, 1)))
                             for im in chunk]).to(device)
        logits = model(batch).float()
        for image, row in zip(chunk, logits, strict=True):
            resized = F.interpolate(row[None], size=(image.size[1], image.size[0]), mode="bilinear",
                                    align_corners=False)
            index = resized[0].argmax(dim=0).cpu().numpy()
            masks.append(index.astype(np.uint8 if len(row) <= 256 else np.int64))
    return masks


# --- the task ----------------------------------------------------------------------------------------------------


class SegmentationTask(Task):
    name = "segmentation"
    description = "a class per pixel (masks)"
    dense = True
    monitor = "miou"
    headline = ("miou", "mean_dice")
    labels = {"miou": "mIoU", "mean_dice": "mean Dice", "pixel_accuracy": "pixel accuracy",
              "accuracy": "pixel accuracy"}
    per_class = "training images"
    caches_features = False

    def objective(self, config: Any, data: Any) -> Objective:
        return SegmentationObjective(data.classes, config.ignore_index, config.dice_weight)

    def plan_notes(self, config: Any) -> tuple[str, ...]:
        dice = f" + {config.dice_weight:g} x Dice" if config.dice_weight else ""
        weighted = (" weighted by inverse pixel frequency (--class-weights auto)" if config.class_weights == "auto"
                    else " (unweighted)")
        return (f"Segmentation: loss = pixel cross-entropy{weighted}{dice} (mask value {config.ignore_index} ignored); "
                "early stopping on validation mIoU; images and masks resized to the input size as squares (no centre "
                "crop; masks by nearest neighbour), with joint flips and crops under --augment.",
                "Segmentation runs every phase on images: a frozen encoder runs each epoch without gradients (its "
                "feature pyramid is not cached), and images are decoded each epoch (no decoded-input cache).")

    def load_data(self, config: Any) -> Any:
        if config.model and not _is_vision(config.model):
            raise TransferKitError(f"Segmentation needs a vision model; {config.model} is a language model. Fix: "
                                   "pass e.g. --model efficientnet_lite0.")
        return load_mask_training_data(config.data, val_fraction=config.val_fraction, per_class=config.per_class,
                                       seed=config.seed, ignore_index=config.ignore_index,
                                       test_per_class=config.test_per_class)

    def load_eval_data(self, spec: str | Path, classes: list[str], config: dict[str, Any]) -> EvalData:
        return load_mask_eval_data(spec, classes, ignore_index=config.get("ignore_index", 255))

    def build_model(self, config: Any, num_classes: int, pretrained: bool) -> SegmentationModel:
        return build_segmentation_model(config.model, num_classes, weights=config.weights, pretrained=pretrained,
                                        image_size=config.image_size, decoder=config.decoder,
                                        channels=config.decoder_channels, dropout=config.dropout)

    def rebuild_model(self, info: dict[str, Any]) -> SegmentationModel:
        from ..models.sources import rebuild_backbone

        head = DecoderConfig.from_dict(info["head"])
        preprocessing = Preprocessing.from_dict(info["preprocessing"])
        encoder, groups = _encoder(rebuild_backbone(info["model"]), info["model"]["spec"],
                                   preprocessing.input_size, head.pyramid)
        return SegmentationModel(encoder, head, preprocessing, ModelSpec(**info["model"]), groups)

    def datasets(self, data: Any, model: TransferModel, config: Any) -> tuple[MaskDataset, MaskDataset]:
        train_tf, eval_tf = mask_transforms(model.preprocessing, config.augment, config.ignore_index)
        return MaskDataset(data.train, train_tf), MaskDataset(data.val, eval_tf)

    @torch.no_grad()
    def evaluate(self, model: TransferModel, samples: MaskSamples, classes: list[str], batch_size: int = 16,
                 reduce: Callable[[list[float]], list[float]] | None = None,
                 ignore_index: int = 255) -> dict[str, Any]:
        """Scores at each image's own resolution: the logits are resized back to the mask's size. With ``reduce``,
        the confusion matrices (and image counts) of every process's share are summed first."""
        from ..data.images import open_image

        total = torch.zeros(len(classes), len(classes), dtype=torch.int64)
        for start in range(0, len(samples), batch_size):
            images = [open_image(item) for item in samples.items[start:start + batch_size]]
            for predicted, mask_item in zip(predict_masks(model, images, batch_size), samples.masks[start:],
                                            strict=False):
                truth = torch.from_numpy(read_mask(mask_item).astype(np.int64))
                total += confusion(torch.from_numpy(predicted.astype(np.int64)), truth, len(classes), ignore_index)
        n = len(samples)
        if reduce is not None:
            *cells, n = reduce([*total.reshape(-1).tolist(), n])
            total = torch.tensor(cells, dtype=torch.float64).round().to(torch.int64).reshape(total.shape)
        return {"n": int(n), **scores(total, classes), "ignore_index": ignore_index,
                "confusion_matrix": total.tolist()}

    def format_report(self, metrics: dict[str, Any]) -> str:
        width = max(12, *(len(c) for c in metrics["classes"])) + 2
        foreground = metrics.get("foreground_iou")
        lines = [f"mIoU {metrics['miou']:.4f}   mean Dice {metrics['mean_dice']:.4f}   pixel accuracy "
                 f"{metrics['pixel_accuracy']:.4f}" + (f"   foreground IoU {foreground:.4f}" if foreground is not None
                                                        else "") + f"   n = {metrics['n']} images", "",
                 f"{'class':<{width}}{'IoU':>8}{'Dice':>8}{'pixels':>12}{'predicted':>12}"]
        for name, row in metrics["per_class"].items():
            iou = "absent" if row["iou"] is None else f"{row['iou']:.3f}"
            dice = "" if row["dice"] is None else f"{row['dice']:.3f}"
            lines.append(f"{name:<{width}}{iou:>8}{dice:>8}{row['pixels']:>12d}{row['predicted']:>12d}")
        lines += ["", "IoU = TP / (TP + FP + FN) over all images; absent classes (no pixel in the truth nor predicted) "
                      "are left out of mIoU and mean Dice; ignored pixels count nowhere."]
        return "\n".join(lines)

    def predict(self, model: TransferModel, items: list[tuple[str, Any]], classes: list[str],
                batch_size: int = 16) -> list[MaskPrediction]:
        from ..data.images import open_image

        results = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = [item.convert("RGB") if isinstance(item, Image.Image) else open_image(item) for _, item in chunk]
            for (name, _), mask in zip(chunk, predict_masks(model, images, batch_size), strict=True):
                results.append(MaskPrediction(name, mask, list(classes)))
        return results

    def prediction_line(self, row: dict[str, Any]) -> str:
        shares = sorted(row["fractions"].items(), key=lambda kv: -kv[1])[:4]
        return f"{row['source']}\t{row['mask']}\t" + "  ".join(f"{name} {share:.3f}" for name, share in shares)

    def write_predictions(self, predictions: Sequence[MaskPrediction], items: Sequence[tuple[str, Any]],
                          out: Path) -> list[dict[str, Any]]:
        """``out/<name>.png`` (class-index mask, one byte per pixel) and ``out/<name>_overlay.png`` per image."""
        from ..data.images import open_image

        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        written = []
        for prediction, (name, item) in zip(predictions, items, strict=True):
            stem = Path(name).stem if isinstance(item, (str, Path)) else name.lstrip("#") or "image"
            base, k = stem, 1
            while stem in used:
                stem, k = f"{base}-{k}", k + 1
            used.add(stem)
            mask_path, overlay_path = out / f"{stem}.png", out / f"{stem}_overlay.png"
            Image.fromarray(prediction.mask.astype(np.uint8)).save(mask_path)
            image = item.convert("RGB") if isinstance(item, Image.Image) else open_image(item)
            overlay(image, prediction.mask).save(overlay_path)
            written.append({**prediction.to_dict(), "mask": str(mask_path), "overlay": str(overlay_path)})
        return written

    def write_evaluation(self, model: TransferModel, samples: MaskSamples, metrics: dict[str, Any], out: Path,
                         examples: int = 4) -> list[Path]:
        """``out/per_class_iou.csv`` and ``out/examples.png`` (image | truth | prediction for the first images)."""
        from ..data.images import open_image

        out.mkdir(parents=True, exist_ok=True)
        table = out / "per_class_iou.csv"
        with open(table, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "iou", "dice", "pixels", "predicted"])
            for name, row in metrics["per_class"].items():
                writer.writerow([name, "" if row["iou"] is None else f"{row['iou']:.4f}",
                                 "" if row["dice"] is None else f"{row['dice']:.4f}", row["pixels"], row["predicted"]])
            writer.writerow(["mIoU", f"{metrics['miou']:.4f}", f"{metrics['mean_dice']:.4f}", "", ""])
        images = [open_image(item) for item in samples.items[:examples]]
        predicted = predict_masks(model, images)
        rows = [[image, overlay(image, read_mask(m)), overlay(image, p)]
                for image, m, p in zip(images, samples.masks, predicted, strict=False)]
        picture = out / "examples.png"
        montage(rows, ["image", "truth", "prediction"], 128, Image.Resampling.NEAREST).save(picture)
        return [table, picture]

    def example_figure(self, runs: dict[str, TransferModel], samples: MaskSamples, examples: int = 3) -> Image.Image:
        """Test images, their truth and each run's prediction side by side (for ``compare``'s report)."""
        from ..data.images import open_image

        images = [open_image(item) for item in samples.items[:examples]]
        predictions = {name: predict_masks(model, images) for name, model in runs.items()}
        rows = [[image, overlay(image, read_mask(samples.masks[i]))] +
                [overlay(image, predictions[name][i]) for name in runs] for i, image in enumerate(images)]
        return montage(rows, ["image", "truth", *runs], 128, Image.Resampling.NEAREST)


def _is_vision(model: str) -> bool:
    from ..models.text import is_text_model

    return not is_text_model(model)


SEGMENTATION = SegmentationTask()

"""Object detection: the pre-trained backbone's feature pyramid, an FPN and a RetinaNet head (torchvision).

- **Detector**: torchvision's RetinaNet pieces — ``FeaturePyramidNetwork`` over the backbone's maps at strides 8,
  16 and 32 (:class:`~transferkit.models.pyramid.FeaturePyramid`, the encoder segmentation uses; P6/P7 added when the
  boxes need them), the v2 ``RetinaNetHead`` (GroupNorm, GIoU box loss), its anchor generator, matcher, focal loss
  and post-processing. Why RetinaNet rather than FCOS or Faster R-CNN: one stage (cheaper than Faster R-CNN's RPN +
  RoI heads on a CPU, and no proposal-sampling settings to tune); a sigmoid per class, so labels are the classes
  0..K-1 with no background class to confuse with class 0 (the same indices torchmetrics scores); a GroupNorm head
  that works with batches of 2-8 images; and its anchors are *the* place where a dataset's geometry enters, so they
  are set from the data's boxes (FCOS ties its centre-sampling radius to the same per-level sizes, so they cannot
  follow the data without breaking its target assignment). The FPN and the head are the ``head`` layer group:
  ``linear-probe`` trains them on a frozen backbone, ``two-stage`` first them and then everything, ``progressive``
  unfreezes backbone stages top down, ``scratch`` starts the backbone from random weights. The backbone keeps its
  pre-trained weights from transferkit's model sources (built-ins, timm, torchvision, ``--weights FILE``); nothing
  is downloaded. BatchNorm statistics of the pre-trained backbone stay frozen (``--bn auto``), as in torchvision's
  detection backbones.
- **Settings from the data, not from COCO**: the input size (``min_size`` = the median short side of the training
  images, or ``--image-size``; ``max_size`` from their widest aspect ratio) and the anchors (sizes spanning the 5th
  to 95th percentile of the box sides at that input size, three scales per pyramid level, as many levels as the
  span needs; aspect ratios at the 15th/50th/85th percentile of the boxes' height/width) — printed in the plan.
- **Normalisation happens once**: the dataset normalises with the weights' mean and std; the detector's own
  ``GeneralizedRCNNTransform`` (which resizes, pads to a multiple of 32 and would normalise again) gets mean 0 and
  std 1. Predictions take raw images and go through the same path.
- **Metrics** (torchmetrics ``MeanAveragePrecision``, faster-coco-eval backend): COCO mAP (IoU 0.5:0.95), mAP@0.5,
  mAP@0.75, per-class AP, class-agnostic AP, and a confusion summary of mislabelled detections. Early stopping
  follows validation mAP; the validation loss is the detector's loss on the validation images (one forward gives
  both).
- **Data**: :mod:`transferkit.data.boxes` (COCO, YOLO, CSV, ``builtin:fashion-scenes``), box-aware augmentation.
- **Predict**: boxes, labels and scores per image at the image's own size (``score_threshold``, ``nms_threshold``),
  JSON and drawn images.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchvision import tv_tensors

from ..data.boxes import (
    BoxDataset,
    BoxSamples,
    DetectionBatch,
    box_transforms,
    collate_boxes,
    load_box_eval_data,
    load_box_training_data,
)
from ..data.samples import EvalData
from ..errors import TransferKitError, check_range
from ..models.groups import LayerGroup, group_backbone
from ..models.model import ModelSpec, TransferModel
from ..models.preprocessing import Preprocessing
from ..models.pyramid import FeaturePyramid, feature_pyramid, rebuild_pyramid
from .base import Meter, Objective, Task, montage

logger = logging.getLogger(__name__)

FPN_CHANNELS = 128  # --decoder-channels' default; torchvision uses 256, half is plenty for a few classes on a CPU
LEVEL_STRIDES = (8, 16, 32, 64, 128)  # P3..P7
SCALES = 3  # anchor sizes per level: size x 2^(0, 1/3, 2/3), as RetinaNet
MAX_INPUT = 800  # the largest short side chosen from the data (torchvision's default; --image-size overrides it)
SCORE_THRESHOLD = 0.3  # predict's default (metrics use every detection above the detector's own 0.05)


def check_score_threshold(name: str, value: object) -> float | None:
    return None if value is None else check_range(name, value, 0, 1, high_open=False, example=0.3)


# --- the settings the data decides ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """The detector's input size and anchors, from the training images and boxes.

    Attributes:
        min_size: the short side images are resized to.
        max_size: the long side's limit.
        anchor_sizes: per pyramid level (from P3), its anchor sides in pixels at the input size.
        aspect_ratios: anchor height / width.
        why: where each number came from (for the plan).
    """

    min_size: int
    max_size: int
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...]
    why: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        levels = "; ".join(f"P{i + 3} (/{LEVEL_STRIDES[i]}) {'/'.join(f'{s:g}' for s in sizes)}"
                           for i, sizes in enumerate(self.anchor_sizes))
        ratios = "/".join(f"{r:g}" for r in self.aspect_ratios)
        return (f"input short side {self.min_size} px, long side at most {self.max_size} px ({self.why.get('size')}); "
                f"anchors {levels} px, height/width {ratios} ({self.why.get('anchors')})")


def geometry_from_data(samples: BoxSamples, image_size: int | None = None) -> Geometry:
    """:class:`Geometry` for ``samples`` (the training split): see the module docstring for the rules."""
    heights = np.array([s[0] for s in samples.sizes], dtype=np.float64)
    widths = np.array([s[1] for s in samples.sizes], dtype=np.float64)
    shorts, longs = np.minimum(heights, widths), np.maximum(heights, widths)
    if image_size:
        min_size, size_why = int(image_size), "--image-size"
    else:
        min_size = int(min(MAX_INPUT, max(32, round(float(np.median(shorts))))))
        size_why = f"the median short side of the {len(samples)} training images" + (
            f", capped at {MAX_INPUT}" if min_size == MAX_INPUT else "")
    ratio = min(float((longs / shorts).max()), 1333 / 800)
    max_size = max(min_size, int(math.ceil(min_size * ratio)))
    scale = np.minimum(min_size / shorts, max_size / longs)
    sides, aspects = [], []
    for boxes, factor in zip(samples.boxes, scale, strict=True):
        if len(boxes):
            w, h = (boxes[:, 2] - boxes[:, 0]) * factor, (boxes[:, 3] - boxes[:, 1]) * factor
            sides.append(np.sqrt(w * h))
            aspects.append(h / w)
    sides_all, aspects_all = np.concatenate(sides), np.concatenate(aspects)
    low = max(4.0, float(np.quantile(sides_all, 0.05)))
    high = max(low, float(np.quantile(sides_all, 0.95)))
    levels = int(np.clip(math.ceil(math.log2(high / low) - (SCALES - 1) / SCALES) + 1, 1, len(LEVEL_STRIDES)))
    anchor_sizes = tuple(tuple(round(low * 2 ** (i + j / SCALES), 1) for j in range(SCALES)) for i in range(levels))
    ratios = tuple(sorted({round(float(np.clip(np.quantile(aspects_all, q), 0.2, 5.0)), 2)
                           for q in (0.15, 0.5, 0.85)}))
    anchors_why = (f"box sides {low:.0f}-{high:.0f} px (5th-95th percentile of {len(sides_all)} boxes at the input "
                   f"size), height/width percentiles 15/50/85")
    return Geometry(min_size, max_size, anchor_sizes, ratios, {"size": size_why, "anchors": anchors_why})


# --- the model -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorConfig:
    """The new head of a detection model: FPN + RetinaNet head, and the geometry it was built for.

    Attributes:
        num_classes: object classes (no background class).
        in_channels: channels of the backbone's maps at strides 8, 16, 32.
        min_size, max_size, anchor_sizes, aspect_ratios: see :class:`Geometry`.
        channels: FPN and head width (``--decoder-channels``; GroupNorm with up to 32 groups).
        score_threshold: detections kept before NMS (torchvision's RetinaNet default, 0.05).
        nms_threshold: IoU above which NMS drops the lower-scoring box of a class.
        detections_per_image: most detections per image after NMS.
        pyramid: the backbone's :class:`~transferkit.models.pyramid.PyramidLayout` (to rebuild a saved run).
        why: where the geometry came from (the plan's words).
    """

    num_classes: int
    in_channels: tuple[int, ...]
    min_size: int
    max_size: int
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...]
    channels: int = FPN_CHANNELS
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    pyramid: dict = field(default_factory=dict)
    why: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise TransferKitError("Detection needs at least one object class; the label map has none.")

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.min_size, self.max_size, self.anchor_sizes, self.aspect_ratios, self.why)

    def build(self) -> nn.Module:
        return Detector(self)

    def describe(self) -> str:
        levels = ", ".join(f"P{i + 3}" for i in range(len(self.anchor_sizes)))
        return (f"RetinaNet (torchvision): FPN ({self.channels} ch, {levels}) → 4-conv GroupNorm class and box "
                f"subnets, {len(self.aspect_ratios) * SCALES} anchors per location → {self.num_classes} classes "
                "(sigmoid focal loss, GIoU box loss)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["in_channels"] = list(self.in_channels)
        data["anchor_sizes"] = [list(s) for s in self.anchor_sizes]
        data["aspect_ratios"] = list(self.aspect_ratios)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        return cls(**{**data, "in_channels": tuple(data["in_channels"]),
                      "anchor_sizes": tuple(tuple(s) for s in data["anchor_sizes"]),
                      "aspect_ratios": tuple(data["aspect_ratios"])})


def _retinanet():
    from torchvision.models.detection.retinanet import RetinaNet

    return RetinaNet


class Detector(nn.Module):
    """FPN + RetinaNet head with torchvision's anchor generator, matcher, box coder, resize transform, loss and
    post-processing (``compute_loss`` / ``postprocess_detections`` are RetinaNet's own methods, which read only the
    attributes set here). ``forward(maps)`` turns the backbone's pyramid into the FPN levels the head runs on."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        from torchvision.models.detection import _utils as det_utils
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.models.detection.transform import GeneralizedRCNNTransform
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        self.levels = len(config.anchor_sizes)
        width = config.channels
        self.fpn = FeaturePyramidNetwork(list(config.in_channels), width,
                                         extra_blocks=LastLevelP6P7(width, width) if self.levels > 3 else None)
        self.anchor_generator = AnchorGenerator(config.anchor_sizes, (config.aspect_ratios,) * self.levels)
        self.head = RetinaNetHead(width, self.anchor_generator.num_anchors_per_location()[0], config.num_classes,
                                  norm_layer=partial(nn.GroupNorm, math.gcd(32, width)))
        self.head.regression_head._loss_type = "giou"  # as torchvision's retinanet_resnet50_fpn_v2
        # The dataset already normalised with the weights' statistics: this transform only resizes and pads.
        self.transform = GeneralizedRCNNTransform(config.min_size, config.max_size, image_mean=[0.0, 0.0, 0.0],
                                                  image_std=[1.0, 1.0, 1.0], size_divisible=32)
        self.proposal_matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.score_thresh = config.score_threshold
        self.nms_thresh = config.nms_threshold
        self.detections_per_img = config.detections_per_image
        self.topk_candidates = 1000

    def compute_loss(self, targets, head_outputs, anchors):  # noqa: ANN001, ANN201 - torchvision's signature
        return _retinanet().compute_loss(self, targets, head_outputs, anchors)

    def postprocess_detections(self, head_outputs, anchors, image_shapes):  # noqa: ANN001, ANN201
        return _retinanet().postprocess_detections(self, head_outputs, anchors, image_shapes)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        from collections import OrderedDict

        levels = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps[3:6])))
        return list(levels.values())[:self.levels]


@dataclass
class DetectionOutput:
    """A validation forward's detections and its losses (the targets came with the batch)."""

    detections: list[dict[str, torch.Tensor]]
    losses: dict[str, torch.Tensor]


class DetectionModel(TransferModel):
    """A :class:`TransferModel` whose backbone is a :class:`FeaturePyramid` and whose head is a :class:`Detector`.

    ``model(images)`` (a list of normalised CHW tensors, any sizes, or a batch tensor) gives torchvision's
    detections (boxes at each input's own size); ``model(DetectionBatch(images, targets))`` gives the loss dict in
    training mode and a :class:`DetectionOutput` (detections and losses) in eval mode."""

    task = "detection"

    def forward(self, batch: Any) -> Any:
        images, targets = (batch.images, batch.targets) if isinstance(batch, DetectionBatch) else (list(batch), None)
        original = [tuple(image.shape[-2:]) for image in images]
        detector: Detector = self.head
        image_list, targets = detector.transform(list(images), targets)
        features = detector(self.backbone(image_list.tensors))
        outputs = detector.head(features)
        anchors = detector.anchor_generator(image_list, features)
        losses = detector.compute_loss(targets, outputs, anchors) if targets is not None else {}
        if self.training:
            return losses
        per_level = [f.size(2) * f.size(3) for f in features]
        per_anchor = outputs["cls_logits"].size(1) // sum(per_level)
        split = [n * per_anchor for n in per_level]
        detections = detector.postprocess_detections({k: list(v.split(split, dim=1)) for k, v in outputs.items()},
                                                     [list(a.split(split)) for a in anchors], image_list.image_sizes)
        detections = detector.transform.postprocess(detections, image_list.image_sizes, original)
        return DetectionOutput(detections, losses) if targets is not None else detections

    def linear_head(self) -> None:
        return None  # no exact fit: the head is not a linear layer

    def describe_head(self) -> str:
        replaced = f"replaced {self.spec.replaced}" if self.spec.replaced else "no pre-trained classifier"
        return (f"Head: {replaced} with new {self.head_config.describe()}, on the backbone's feature pyramid: "
                f"{self.backbone.layout.describe()}\nDetection geometry (from the data): "
                f"{self.head_config.geometry.describe()}")


def _encoder(body: nn.Module, name: str, layout: dict | None = None) -> tuple[FeaturePyramid, list[LayerGroup]]:
    encoder = rebuild_pyramid(body, layout) if layout else feature_pyramid(body, name)
    example = None if hasattr(body, "group_matcher") else torch.zeros(1, 3, 64, 64)
    groups = [LayerGroup(g.name, tuple(f"body.{p}" for p in g.param_names)) for g in group_backbone(body, example)]
    return encoder, groups


def build_detection_model(model: str, num_classes: int, geometry: Geometry, *, weights: str | None = None,
                          pretrained: bool = True, channels: int = FPN_CHANNELS) -> DetectionModel:
    """A pre-trained backbone (any transferkit model source) with a new FPN + RetinaNet head for ``geometry``."""
    from ..models.sources import load_backbone

    body, _, preprocessing, spec, _ = load_backbone(model, weights=weights, pretrained=pretrained)
    encoder, groups = _encoder(body, model)
    channels_at = encoder.out_channels[3:6]
    if 0 in channels_at:
        raise TransferKitError(f"{model} gives no feature map at stride 8, 16 or 32; detection's FPN needs all three. "
                               "Fix: pick a CNN --model (e.g. efficientnet_lite0).")
    head = DetectorConfig(num_classes, tuple(channels_at), geometry.min_size, geometry.max_size,
                          geometry.anchor_sizes, geometry.aspect_ratios, channels, pyramid=encoder.layout.to_dict(),
                          why=dict(geometry.why))
    preprocessing = replace(preprocessing, input_size=geometry.min_size,
                            source=f"{preprocessing.source}; detection input: short side {geometry.min_size}, long "
                                   f"side at most {geometry.max_size}")
    net = DetectionModel(encoder, head, preprocessing, spec, groups)
    logger.info("Model %s (%s weights); %s", model, spec.weights, net.describe_head())
    return net


# --- loss and figures -------------------------------------------------------------------------------------------


def mean_average_precision(class_metrics: bool = True) -> Any:
    """torchmetrics' COCO mAP on xyxy boxes, with the faster-coco-eval backend (a dependency of transferkit)."""
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=class_metrics,
                                backend="faster_coco_eval")


def _figure(value: Any) -> float | None:
    """A torchmetrics figure, ``None`` where COCO has none (-1: no ground truth to score)."""
    value = float(value)
    return None if value < 0 else value


def _on_cpu(rows: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().cpu() for k, v in row.items()} for row in rows]


class DetectionMeter(Meter):
    """Mean detector loss (and its classification and box parts) per image over the epoch."""

    def __init__(self) -> None:
        self.total_loss, self.classification, self.box, self.samples = 0.0, 0.0, 0.0, 0

    def add(self, loss: float, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> None:
        n = len(targets)
        self.total_loss += loss * n
        self.classification += float(outputs.get("classification", 0.0)) * n
        self.box += float(outputs.get("bbox_regression", 0.0)) * n
        self.samples += n

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.total_loss / max(self.samples, 1):.3f}"}

    def totals(self) -> list[float]:
        return [self.total_loss, self.classification, self.box, self.samples]

    def result(self, totals: Sequence[float]) -> dict[str, float]:
        total, classification, box, samples = totals
        n = max(samples, 1)
        return {"loss": total / n, "classification_loss": classification / n, "box_loss": box / n}


class DetectionObjective(Objective):
    """The loop's view of detection: the detector's own loss (focal + GIoU, computed inside ``net``); validation
    loss and COCO mAP / mAP@0.5 / mAP@0.75 over the validation images. The loss is a sum over images; mAP is not a
    sum, so the objective keeps torchmetrics' metric over the pass (reset by :meth:`zeros`), which gathers the
    detections of every process itself when ``torch.distributed`` is initialised."""

    monitor = "map"

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.metric: Any = None

    def criterion(self, config: Any) -> nn.Module:
        return nn.Identity()  # unused: torchvision detectors compute their losses inside

    def step(self, net: nn.Module, inputs: DetectionBatch, targets: Any, criterion: nn.Module) -> tuple[Any, Any]:
        losses = net(inputs)
        loss = sum(losses.values())
        return {k: v.detach() for k, v in losses.items()}, loss

    def meter(self) -> Meter:
        return DetectionMeter()

    def zeros(self) -> torch.Tensor:
        self.metric = mean_average_precision(class_metrics=False)
        return torch.zeros(2, dtype=torch.float64)

    def figures(self, outputs: DetectionOutput, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The batch's summed loss and image count; the detections go to the mAP metric."""
        self.metric.update(_on_cpu(outputs.detections), _on_cpu(targets))
        n = len(targets)
        loss = float(sum(outputs.losses.values())) if outputs.losses else 0.0
        return torch.tensor([loss * n, n], dtype=torch.float64)

    def summarise(self, totals: Sequence[float]) -> dict[str, float]:
        loss, n = totals
        result = self.metric.compute()
        return {"loss": loss / max(n, 1), "map": _figure(result["map"]) or 0.0,
                "map50": _figure(result["map_50"]) or 0.0, "map75": _figure(result["map_75"]) or 0.0}


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as iou

    return iou(a, b)


def mislabelled(predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                classes: Sequence[str], score: float = 0.5, iou: float = 0.5) -> list[dict[str, Any]]:
    """Detections (score at least ``score``) that overlap a true box (IoU at least ``iou``) of another class and none
    of their own: (truth, predicted, count), most frequent first."""
    counts: dict[tuple[int, int], int] = {}
    for prediction, target in zip(predictions, targets, strict=True):
        keep = prediction["scores"] >= score
        boxes, labels = prediction["boxes"][keep], prediction["labels"][keep]
        if not len(boxes) or not len(target["boxes"]):
            continue
        overlap = box_iou(boxes, target["boxes"].float()) >= iou
        for row, label in zip(overlap, labels, strict=True):
            truth = target["labels"][row]
            if len(truth) and not (truth == label).any():
                key = (int(torch.mode(truth).values), int(label))
                counts[key] = counts.get(key, 0) + 1
    return [{"truth": classes[t], "predicted": classes[p], "count": c}
            for (t, p), c in sorted(counts.items(), key=lambda kv: -kv[1])]


def detection_scores(predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                     classes: Sequence[str]) -> dict[str, Any]:
    """COCO mAP, mAP@0.5, mAP@0.75, mAR@100, per-class AP (``None`` for a class with no true box), class-agnostic
    mAP and mAP@0.5, and the mislabelled-detection summary, of detections against true boxes."""
    predictions, targets = _on_cpu(predictions), _on_cpu(targets)
    metric = mean_average_precision(class_metrics=True)
    metric.update(predictions, targets)
    result = metric.compute()
    agnostic = mean_average_precision(class_metrics=False)
    agnostic.update([{**p, "labels": torch.zeros_like(p["labels"])} for p in predictions],
                    [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets])
    flat = agnostic.compute()
    per_class_ap = {int(c): float(v) for c, v in zip(result["classes"].reshape(-1).tolist(),
                                                     result["map_per_class"].reshape(-1).tolist(), strict=True)}
    true_counts = np.bincount(np.concatenate([np.zeros(0, np.int64)] + [t["labels"].numpy() for t in targets]),
                              minlength=len(classes))
    predicted_counts = np.bincount(np.concatenate([np.zeros(0, np.int64)] + [p["labels"].numpy() for p in predictions
                                                                              ]), minlength=len(classes))
    return {
        "map": _figure(result["map"]) or 0.0, "map50": _figure(result["map_50"]) or 0.0,
        "map75": _figure(result["map_75"]) or 0.0, "mar100": _figure(result["mar_100"]) or 0.0,
        "per_class": {name: {"ap": _figure(per_class_ap[i]) if i in per_class_ap and true_counts[i] else None,
                             "boxes": int(true_counts[i]), "predicted": int(predicted_counts[i])}
                      for i, name in enumerate(classes)},
        "class_agnostic": {"map": _figure(flat["map"]) or 0.0, "map50": _figure(flat["map_50"]) or 0.0},
        "mislabelled": mislabelled(predictions, targets, classes),
        "classes": list(classes),
    }


# --- predictions -------------------------------------------------------------------------------------------------


COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
"""Box colours: class i gets ``COLOURS[i % 12]``."""


def draw_boxes(image: Image.Image, boxes: Any, labels: Any, classes: Sequence[str], scores: Any = None,
               width: int = 2) -> Image.Image:
    """A copy of ``image`` with each box outlined in its class's colour and captioned (name and score)."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for k, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1),
                                         strict=True)):
        colour = COLOURS[int(label) % len(COLOURS)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
        caption = classes[int(label)] + (f" {float(np.asarray(scores)[k]):.2f}" if scores is not None else "")
        draw.text((x0 + 2, max(0.0, y0 - 11)), caption, fill=colour)
    return canvas


@dataclass
class BoxPrediction:
    """One image's detections at its own size: boxes ``[xmin, ymin, xmax, ymax]``, labels and scores."""

    source: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "width": self.width, "height": self.height,
                "detections": [{"label": self.classes[int(lab)], "score": round(float(s), 4),
                                "box": [round(float(v), 2) for v in box]}
                               for box, lab, s in zip(self.boxes, self.labels, self.scores, strict=True)]}


def _normalised(model: DetectionModel, image: Image.Image) -> torch.Tensor:
    """An RGB image as the model takes it: scaled to [0, 1] and normalised with the weights' mean and std once."""
    _, evaluation = box_transforms(model.preprocessing, "none")
    return evaluation(tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))).as_subclass(torch.Tensor)


@torch.no_grad()
def detect(model: DetectionModel, images: Sequence[Image.Image], batch_size: int = 8,
           nms_threshold: float | None = None, score_threshold: float | None = None) -> list[dict[str, torch.Tensor]]:
    """torchvision detections (on the CPU) for RGB images, boxes at each image's own size; ``score_threshold``
    below the detector's own (0.05) lowers it for this call."""
    model.eval()
    device = next(model.parameters()).device
    detector: Detector = model.head
    saved = detector.nms_thresh, detector.score_thresh
    if nms_threshold is not None:
        detector.nms_thresh = nms_threshold
    if score_threshold is not None:
        detector.score_thresh = min(detector.score_thresh, score_threshold)
    try:
        results = []
        for start in range(0, len(images), batch_size):
            batch = [_normalised(model, image).to(device) for image in images[start:start + batch_size]]
            results += _on_cpu(model(batch))
        return results
    finally:
        detector.nms_thresh, detector.score_thresh = saved


# --- the task ----------------------------------------------------------------------------------------------------


class DetectionTask(Task):
    name = "detection"
    description = "labelled boxes around objects (COCO, YOLO, CSV)"
    dense = True
    monitor = "map"
    headline = ("map", "map50")
    labels = {"map": "mAP", "map50": "mAP@0.5", "map75": "mAP@0.75", "mar100": "mAR@100"}
    per_class = "training images"
    caches_features = False
    collate = staticmethod(collate_boxes)

    def objective(self, config: Any, data: Any) -> Objective:
        return DetectionObjective(data.classes)

    def plan_notes(self, config: Any) -> tuple[str, ...]:
        return ("Detection: loss = sigmoid focal (classes) + GIoU (boxes), computed inside the detector; early "
                "stopping on validation mAP (COCO, IoU 0.5:0.95).",
                "Detection: images are normalised once, in the data pipeline, with the weights' mean/std (the "
                "detector's own transform only resizes and pads); boxes move with flips and scale/crop under "
                "--augment and boxes that leave the image are dropped. Every phase runs on images (no feature "
                "cache).")

    def _geometry(self, config: Any) -> Geometry:
        data = self.load_data(config)
        return geometry_from_data(data.train, config.image_size)

    def load_data(self, config: Any) -> Any:
        from ..models.text import is_text_model

        if config.model and is_text_model(config.model):
            raise TransferKitError(f"Detection needs a vision model; {config.model} is a language model. Fix: pass "
                                   "e.g. --model efficientnet_lite0.")
        return load_box_training_data(config.data, val_fraction=config.val_fraction, per_class=config.per_class,
                                      seed=config.seed, test_per_class=config.test_per_class)

    def load_eval_data(self, spec: str | Path, classes: list[str], config: dict[str, Any]) -> EvalData:
        return load_box_eval_data(spec, classes)

    def build_model(self, config: Any, num_classes: int, pretrained: bool) -> DetectionModel:
        """The model for ``config``'s data: the input size and anchors come from its training split (read again:
        reading boxes is cheap next to training, and the hook takes no data)."""
        return build_detection_model(config.model, num_classes, self._geometry(config), weights=config.weights,
                                     pretrained=pretrained, channels=config.decoder_channels)

    def rebuild_model(self, info: dict[str, Any]) -> DetectionModel:
        from ..models.sources import rebuild_backbone

        head = DetectorConfig.from_dict(info["head"])
        encoder, groups = _encoder(rebuild_backbone(info["model"]), info["model"]["spec"], head.pyramid)
        return DetectionModel(encoder, head, Preprocessing.from_dict(info["preprocessing"]),
                              ModelSpec(**info["model"]), groups)

    def datasets(self, data: Any, model: TransferModel, config: Any) -> tuple[BoxDataset, BoxDataset]:
        train_tf, eval_tf = box_transforms(model.preprocessing, config.augment)
        return BoxDataset(data.train, train_tf), BoxDataset(data.val, eval_tf)

    @torch.no_grad()
    def evaluate(self, model: TransferModel, samples: BoxSamples, classes: list[str], batch_size: int = 16,
                 reduce: Callable[[list[float]], list[float]] | None = None, **options: Any) -> dict[str, Any]:
        """Scores at each image's own size. With several processes torchmetrics gathers every process's detections
        before computing (``reduce`` is not needed: mAP is not a sum)."""
        from ..data.images import open_image

        predictions = []
        for start in range(0, len(samples), batch_size):
            images = [open_image(item) for item in samples.items[start:start + batch_size]]
            predictions += detect(model, images, batch_size)
        targets = [samples.target(i) for i in range(len(samples))]
        return {"n": len(samples), **detection_scores(predictions, targets, classes)}

    def format_report(self, metrics: dict[str, Any]) -> str:
        width = max(12, *(len(c) for c in metrics["classes"])) + 2
        agnostic = metrics["class_agnostic"]
        lines = [f"mAP {metrics['map']:.4f}   mAP@0.5 {metrics['map50']:.4f}   mAP@0.75 {metrics['map75']:.4f}   "
                 f"mAR@100 {metrics['mar100']:.4f}   n = {metrics['n']} images",
                 f"class-agnostic: mAP {agnostic['map']:.4f}   mAP@0.5 {agnostic['map50']:.4f}", "",
                 f"{'class':<{width}}{'AP':>8}{'boxes':>8}{'predicted':>11}"]
        for name, row in metrics["per_class"].items():
            ap = "-" if row["ap"] is None else f"{row['ap']:.3f}"
            lines.append(f"{name:<{width}}{ap:>8}{row['boxes']:>8d}{row['predicted']:>11d}")
        if metrics.get("mislabelled"):
            lines += ["", "mislabelled detections (score >= 0.5 on another class's box, IoU >= 0.5): " + ", ".join(
                f"{m['truth']} as {m['predicted']} x{m['count']}" for m in metrics["mislabelled"][:5])]
        lines += ["", "AP: COCO average precision over IoU 0.5:0.95; '-': no true box of the class."]
        return "\n".join(lines)

    def predict(self, model: TransferModel, items: list[tuple[str, Any]], classes: list[str], batch_size: int = 16,
                score_threshold: float | None = None, nms_threshold: float | None = None,
                **options: Any) -> list[BoxPrediction]:
        from ..data.images import open_image

        check_score_threshold("score_threshold", score_threshold)
        threshold = SCORE_THRESHOLD if score_threshold is None else score_threshold
        results = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = [item.convert("RGB") if isinstance(item, Image.Image) else open_image(item) for _, item in chunk]
            found_all = detect(model, images, batch_size, nms_threshold, threshold)
            for (name, _), image, found in zip(chunk, images, found_all, strict=True):
                keep = found["scores"] >= threshold
                results.append(BoxPrediction(name, image.size[0], image.size[1], found["boxes"][keep].numpy(),
                                             found["labels"][keep].numpy(), found["scores"][keep].numpy(),
                                             list(classes)))
        return results

    def prediction_line(self, row: dict[str, Any]) -> str:
        found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in row["detections"][:6])
        return f"{row['source']}\t{len(row['detections'])} box(es)\t{found}"

    def write_predictions(self, predictions: Sequence[BoxPrediction], items: Sequence[tuple[str, Any]],
                          out: Path) -> list[dict[str, Any]]:
        """``out/<name>.json`` (the boxes) and ``out/<name>_boxes.png`` (the image with them drawn) per image."""
        import json

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
            row = prediction.to_dict()
            json_path, image_path = out / f"{stem}.json", out / f"{stem}_boxes.png"
            json_path.write_text(json.dumps(row, indent=1), encoding="utf-8")
            image = item.convert("RGB") if isinstance(item, Image.Image) else open_image(item)
            draw_boxes(image, prediction.boxes, prediction.labels, prediction.classes, prediction.scores).save(
                image_path)
            written.append({**row, "json": str(json_path), "drawn": str(image_path)})
        return written

    def write_evaluation(self, model: TransferModel, samples: BoxSamples, metrics: dict[str, Any], out: Path,
                         examples: int = 4) -> list[Path]:
        """``out/per_class_ap.csv`` and ``out/examples.png`` (truth | prediction for the first images)."""
        out.mkdir(parents=True, exist_ok=True)
        table = out / "per_class_ap.csv"
        with open(table, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "ap", "boxes", "predicted"])
            for name, row in metrics["per_class"].items():
                writer.writerow([name, "" if row["ap"] is None else f"{row['ap']:.4f}", row["boxes"],
                                 row["predicted"]])
            writer.writerow(["mAP", f"{metrics['map']:.4f}", "", ""])
        picture = out / "examples.png"
        self.example_figure({"prediction": model}, samples, examples).save(picture)
        return [table, picture]

    def example_figure(self, runs: dict[str, TransferModel], samples: BoxSamples, examples: int = 3) -> Image.Image:
        """Test images with their true boxes and each run's detections (score at least 0.3), side by side."""
        from ..data.images import open_image

        images = [open_image(item) for item in samples.items[:examples]]
        found = {name: detect(model, images) for name, model in runs.items()}
        rows = []
        for i, image in enumerate(images):
            row = [draw_boxes(image, samples.boxes[i], samples.labels[i], samples.classes)]
            for name in runs:
                keep = found[name][i]["scores"] >= SCORE_THRESHOLD
                row.append(draw_boxes(image, found[name][i]["boxes"][keep], found[name][i]["labels"][keep],
                                      samples.classes, found[name][i]["scores"][keep], width=1))
            rows.append(row)
        return montage(rows, ["truth", *runs], 160, Image.Resampling.BILINEAR)


DETECTION = DetectionTask()

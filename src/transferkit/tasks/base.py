"""The task concept: :class:`Task` (what a task decides) and :class:`Objective` (what the training loop asks of it).

A task decides six things: the **head** on the pre-trained backbone, the **loss**, the **metrics** (and which
validation figure early stopping follows), the **data format** (its reader and sample type), the **augmentation**
(joint for dense targets: a flip or crop moves the mask or the boxes with the image) and what **predict** returns.
Strategies, layer groups, LR and BatchNorm policies, the plan, checkpoints, resume, early stopping, the run folder and
``compare`` are shared: a task's head is always the model's last layer group (``head``), so ``linear-probe`` trains
the new head on a frozen backbone, ``two-stage`` trains it first and then everything, and so on.

Classification is the original code path (image folders, CSV manifests, texts; the feature and decoded-input caches;
``TrainedModel``'s top-k predictions); its :class:`Task` object supplies the objective and the names the shared code
prints. A **dense** task (segmentation, detection) brings its own pieces through the hooks below, and the
shared code calls them at fixed points: ``prepare.load_data`` / ``load_run_model`` / ``loaders``, ``fit``'s
objective, the test evaluation in ``api.train``, ``load`` / ``TrainedModel.predict`` / ``.evaluate``, and the CLI's
``evaluate`` and ``predict`` output. Adding a task is a module here (and its data reader under ``data/``) plus a line
in :data:`transferkit.tasks.TASKS`.

How object detection plugs in (:mod:`transferkit.tasks.detection`): a ``DetectionTask`` with ``dense = True`` whose
model is a torchvision detector (RetinaNet) on :class:`~transferkit.models.pyramid.FeaturePyramid` (the same encoder
segmentation uses) with the detector as the ``head`` group; ``collate`` keeps the per-image box targets as lists;
its objective overrides :meth:`Objective.step` (torchvision detectors compute their losses inside, from the images
and targets of a ``DetectionBatch``) and ``figures``/``summarise`` (mAP through torchmetrics), with
``monitor = "map"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ..data.samples import EvalData, SplitData
    from ..models.model import TransferModel


class Meter:
    """Running figures of one training epoch, from each batch's loss, outputs and targets. The loop reduces
    :meth:`totals` (sums) over the processes of a distributed run and :meth:`result` turns the reduced sums into the
    epoch's figures, so every process reports the same numbers."""

    samples = 0  # examples seen (for the throughput)

    def add(self, loss: float, outputs: Any, targets: Any) -> None:
        raise NotImplementedError

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows (this process's figures so far)."""
        return {}

    def totals(self) -> list[float]:
        """This process's sums (each must add up over processes: counts, sums of losses — never means)."""
        raise NotImplementedError

    def result(self, totals: Sequence[float]) -> dict[str, float]:
        """The epoch's training figures (at least ``loss``) from :meth:`totals` summed over the processes."""
        raise NotImplementedError


class Objective:
    """What the loop asks of a task: the loss, the running training figures, the validation figures.

    Per training batch the loop calls ``outputs, loss = step(net, inputs, targets, criterion)`` and
    ``meter.add(loss.item(), outputs, targets)``. Per validation batch it adds ``figures(outputs, targets)`` — a
    1-D tensor of **sums** over the batch's examples (losses, counts, a flattened confusion matrix), never means —
    to :meth:`zeros`; the totals are summed over the processes of a distributed run (each process holds its share
    of the validation set, so each example counts once) and ``summarise`` turns them into the epoch's validation
    figures, which hold at least ``loss`` and :attr:`monitor`, the figure early stopping follows (higher is better).
    """

    monitor: ClassVar[str] = "accuracy"

    def criterion(self, config: Any) -> nn.Module:
        """The training loss, from the loop's settings (:class:`~transferkit.training.loop.FitConfig`)."""
        raise NotImplementedError

    def step(self, net: nn.Module, inputs: Any, targets: Any, criterion: nn.Module) -> tuple[Any, torch.Tensor]:
        """One forward pass and its loss."""
        outputs = net(inputs)
        return outputs, criterion(outputs, targets)

    def meter(self) -> Meter:
        raise NotImplementedError

    def zeros(self) -> torch.Tensor:
        """The validation totals before the first batch (float64, the length of :meth:`figures`)."""
        raise NotImplementedError

    def figures(self, outputs: Any, targets: Any) -> torch.Tensor:
        """One validation batch's sums (a 1-D tensor the length of :meth:`zeros`)."""
        raise NotImplementedError

    def summarise(self, totals: Sequence[float]) -> dict[str, float]:
        """The validation figures of an epoch from the totals of every batch of every process."""
        raise NotImplementedError


class Task:
    """What a task decides (see the module docstring). Attributes are what the shared code prints and follows."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    dense: ClassVar[bool] = False
    """Targets are per-image structures (masks, boxes): the task brings its own data, model, datasets, evaluation and
    predictions through the hooks below."""
    monitor: ClassVar[str] = "accuracy"
    """The validation figure early stopping follows; ``val_<monitor>`` in every epoch record."""
    headline: ClassVar[tuple[str, str]] = ("accuracy", "macro_f1")
    """The two test figures ``compare`` reports per run (its main score and a second one)."""
    labels: ClassVar[dict[str, str]] = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
    """How figures are named for people."""
    per_class: ClassVar[str] = "training examples per class"
    """What ``--per-class N`` counts for this task."""
    caches_features: ClassVar[bool] = True
    """Whether head-only phases may run on cached backbone features (the plan asks)."""
    collate: ClassVar[Callable | None] = None
    """The DataLoader's ``collate_fn`` for the task's datasets (``None``: the default stacking)."""

    def label(self, figure: str) -> str:
        return self.labels.get(figure, figure)

    def objective(self, config: Any, data: SplitData) -> Objective:
        """The loop's loss and figures for a run."""
        raise NotImplementedError

    def plan_notes(self, config: Any) -> tuple[str, ...]:
        """Lines the plan adds about this task (decoder, input size, what is not cached)."""
        return ()

    # --- the hooks of dense tasks (classification's pieces are the original code paths) ---------------------

    def load_data(self, config: Any) -> SplitData:
        """The run's train / val (/ test) splits (``config`` is a :class:`~transferkit.options.TrainConfig`)."""
        raise NotImplementedError

    def load_eval_data(self, spec: str | Path, classes: list[str], config: dict[str, Any]) -> EvalData:
        """Labelled data to evaluate a finished run on, and which split of ``spec`` it is (the rule of
        :func:`~transferkit.data.sources.eval_split`: test, else val, else train, else all); ``config``: the run's
        saved configuration."""
        raise NotImplementedError

    def build_model(self, config: Any, num_classes: int, pretrained: bool) -> TransferModel:
        """The pre-trained backbone with this task's new head."""
        raise NotImplementedError

    def rebuild_model(self, info: dict[str, Any]) -> TransferModel:
        """A finished run's architecture from its ``transferkit.json`` (random weights; the caller loads them)."""
        raise NotImplementedError

    def datasets(self, data: SplitData, model: TransferModel, config: Any) -> tuple[Dataset, Dataset]:
        """Training and validation datasets of ``(input, target)`` pairs, with the task's (joint) augmentation."""
        raise NotImplementedError

    def evaluate(self, model: TransferModel, samples: Any, classes: list[str], batch_size: int = 16,
                 reduce: Callable[[list[float]], list[float]] | None = None, **options: Any) -> dict[str, Any]:
        """The task's metrics of ``model`` on labelled ``samples`` (``options``: the task's own, e.g. the ignore
        index). With ``reduce`` (:meth:`~transferkit.distributed.World.sum`), ``samples`` is this process's share and
        the metrics are computed from sums reduced over the processes — every process returns the same metrics."""
        raise NotImplementedError

    def format_report(self, metrics: dict[str, Any]) -> str:
        """:meth:`evaluate`'s metrics as a plain-text report."""
        raise NotImplementedError

    def predict(self, model: TransferModel, items: list[tuple[str, Any]], classes: list[str],
                batch_size: int = 16, **options: Any) -> list[Any]:
        """Predictions for ``(name, image)`` pairs (``options``: the task's own, e.g. detection's score threshold)."""
        raise NotImplementedError

    def prediction_line(self, row: dict[str, Any]) -> str:
        """One line of ``transferkit predict``'s output for a row ``write_predictions`` wrote."""
        raise NotImplementedError


def montage(rows: Sequence[Sequence[Any]], header: Sequence[str], cell: int,
            resample: int) -> Any:
    """A grid of PIL images (each scaled to ``cell`` px square with ``resample``) under a header row of captions:
    the drawn examples of a dense task's evaluation and report."""
    from PIL import Image, ImageDraw

    line = 14
    canvas = Image.new("RGB", (cell * len(header) + 2 * (len(header) - 1), line + len(rows) * (cell + 2)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(header):
        draw.text((j * (cell + 2) + 2, 1), text[:cell // 6 - 3], fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas.paste(image.convert("RGB").resize((cell, cell), resample), (j * (cell + 2), line + i * (cell + 2)))
    return canvas

"""Tasks: what differs between classification, segmentation and detection — the head, the loss, the metrics,
the data format, the joint augmentation and what ``predict`` returns. Everything else (strategies, layer groups, LR
and BatchNorm policies, the plan, checkpoints, resume, the run folder, ``compare``) is shared.

This module is the registry: task names, the ``--task`` check, inference from the data, and :func:`get_task`. It
imports no task module until one is asked for (they pull in decoders and metrics libraries).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import check_choice

if TYPE_CHECKING:
    from .base import Task

TASKS = {"classification": "transferkit.tasks.classification:CLASSIFICATION",
         "segmentation": "transferkit.tasks.segmentation:SEGMENTATION",
         "detection": "transferkit.tasks.detection:DETECTION"}
"""Task name -> ``module:attribute`` of its :class:`~transferkit.tasks.base.Task`."""


def check_task(name: str, value: object) -> str | None:
    """``--task``: one of :data:`TASKS`, or ``None`` (inferred from the data)."""
    if value is None:
        return None
    return check_choice(name, value, TASKS, "Pass e.g. --task segmentation, or leave --task out to infer it from "
                                            "the data (masks present: segmentation; boxes: detection).")


def get_task(name: str | None) -> Task:
    """The task object of ``name`` (``None``: classification)."""
    check_task("task", name)
    module, _, attribute = TASKS[name or "classification"].partition(":")
    return getattr(importlib.import_module(module), attribute)


def infer_task(data: str | Path | None) -> tuple[str, str]:
    """The task the data implies, and why: masks present (a ``masks/`` folder, a CSV manifest with a ``mask``
    column, or a built-in segmentation dataset) -> segmentation; boxes present (a COCO JSON file or
    ``annotations/*.json``, a YOLO ``labels/`` folder, a CSV manifest with xmin,ymin,xmax,ymax columns) -> detection
    (``builtin:fashion-scenes`` has both: segmentation unless ``--task detection``); otherwise classification."""
    from ..data.boxes import find_boxes
    from ..data.masks import find_masks

    found = find_masks(data) if data else None
    if found:
        return "segmentation", found
    found = find_boxes(data) if data else None
    if found:
        return "detection", found
    return "classification", "--data has no masks" if data else "the default"

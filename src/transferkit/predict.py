"""A finished run, loaded back: ``transferkit.load(run).predict([...])`` and ``.evaluate(data)``.

Classification predicts top-k labels; a dense task (segmentation) answers through its task object
(:mod:`transferkit.tasks`): masks from ``predict``, its own metrics from ``evaluate``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .allocator import keep_freed_memory
from .data.images import IMAGE_EXTENSIONS, build_transforms, open_image
from .data.samples import EvalData, Samples
from .data.sources import eval_split
from .errors import TransferKitError, check_choice
from .evaluate import compute_metrics
from .models.layout import to_layout
from .models.model import TransferModel
from .models.sources import rebuild_model
from .options import TTA_CHOICES
from .runfolder import HEAD_WEIGHTS, WEIGHTS, RunFolder
from .tasks import get_task
from .training.checkpoint import load_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Top-k labels with probabilities for one input."""

    source: str
    label: str
    probability: float
    top_k: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "label": self.label, "probability": self.probability,
                "top_k": [{"label": lab, "probability": p} for lab, p in self.top_k]}


class TrainedModel:
    """A trained :class:`TransferModel` with its class names and preprocessing, ready for inference. ``task`` is
    the task object of the model (:mod:`transferkit.tasks`). ``tta`` (``none`` or ``flip``: the mean softmax of each
    image and its horizontal flip) applies to :meth:`predict`, :meth:`predict_proba` and :meth:`evaluate`; by default
    the run's own ``--tta``."""

    def __init__(self, model: TransferModel, classes: list[str], info: dict[str, Any] | None = None,
                 run_dir: Path | None = None, tta: str | None = None) -> None:
        self.model = model.eval()
        self.classes = list(classes)
        self.info = info or {}
        self.run_dir = run_dir
        self.is_text = model.is_text
        self.task = get_task(model.task)
        self.transform = None if self.is_text else build_transforms(model.preprocessing, "none")[1]
        self.tta = check_tta(tta if tta is not None else self.info.get("config", {}).get("tta", "none"),
                             self.is_text, self.task.name)

    @property
    def preprocessing(self):
        return self.model.preprocessing

    @torch.no_grad()
    def predict_proba(self, inputs: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape (N, C), for image paths, folders, PIL images or uint8 arrays — or, for a
        language model, for strings."""
        items = self._inputs(inputs)
        return self._probabilities([it for _, it in items], batch_size)

    def predict(self, inputs: Iterable[Any], top_k: int = 3, batch_size: int = 64, **options: Any) -> list[Any]:
        """Top-k predictions for image paths (files or folders, searched recursively), PIL images or arrays —
        or, for a language model, for strings. Segmentation: a :class:`~transferkit.tasks.segmentation.
        MaskPrediction` per image (``.mask``, a class-index array at the image's size; ``.fractions``). Detection: a
        :class:`~transferkit.tasks.detection.BoxPrediction` per image (``.boxes``, ``.labels``, ``.scores``).
        ``options`` are a dense task's own (detection: ``score_threshold``, ``nms_threshold``)."""
        items = self._inputs(inputs)
        if self.task.dense:
            return self.task.predict(self.model, items, self.classes, batch_size=min(batch_size, 16), **options)
        if options:
            raise TransferKitError(f"{', '.join(options)}: not an option of a {self.task.name} model's predict. Fix: "
                                   "drop it.")
        probabilities = self._probabilities([it for _, it in items], batch_size)
        k = max(1, min(top_k, len(self.classes)))
        results = []
        for (name, _), row in zip(items, probabilities, strict=True):
            order = np.argsort(-row)[:k]
            top = [(self.classes[i], float(row[i])) for i in order]
            results.append(Prediction(name, top[0][0], top[0][1], top))
        return results

    def evaluate(self, data: str | Path | Samples | EvalData | None = None, batch_size: int = 64,
                 skip_bad_images: bool = False) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class metrics and the confusion matrix on labelled data (default: the run's own
        data, its test split when it has one); segmentation: mIoU, per-class IoU and Dice, pixel accuracy.

        The result also says what was evaluated: ``data``, ``split`` (``test``, ``val``, ``train``, ``all`` or
        ``given`` for samples passed in) and ``seen_in_training`` — true when the examples come from the run's own
        training data and are not its test split (validation picked the best epoch and the head's L2, so its score
        is optimistic); then a warning is logged as well. ``data`` may also be :meth:`eval_data`'s answer.
        """
        if isinstance(data, EvalData):
            found = data
        elif data is not None and not isinstance(data, (str, Path)):
            found = EvalData(data, "given")
        else:
            found = self.eval_data(data, skip_bad_images)
        source = found.source
        seen = (source is not None and found.split != "test"
                and _same_source(source, self.info.get("config", {}).get("data")))
        if seen:
            logger.warning("Evaluated on the %s split of the run's own training data (%s): the run saw these "
                           "examples (validation chose the best epoch), so this score is optimistic. Pass --data "
                           "with held-out examples for an unbiased one.", found.split, source)
        if self.task.dense:
            metrics = self.task.evaluate(self.model, found.samples, self.classes, min(batch_size, 16),
                                         ignore_index=self.info.get("config", {}).get("ignore_index", 255))
        else:
            probabilities = self._probabilities(found.samples.items, batch_size)
            metrics = compute_metrics(np.asarray(found.samples.labels), probabilities, self.classes)
        return {**metrics, "data": source, "split": found.split, "seen_in_training": seen}

    def eval_data(self, data: str | Path | None = None, skip_bad_images: bool = False) -> EvalData:
        """The labelled examples :meth:`evaluate` would use for ``data`` (default: the run's own data), and which
        split of it they are — one rule for the library and the CLI."""
        data = str(data) if data is not None else str(self.info.get("config", {}).get("data", ""))
        if not data:
            raise TransferKitError("No data to evaluate on. Fix: pass labelled examples (a folder, a CSV, "
                                   "builtin:NAME).")
        config = self.info.get("config", {})
        if self.task.dense:
            found = self.task.load_eval_data(data, self.classes, config)
        elif self.is_text:
            from .data.text import text_eval_split

            found = text_eval_split(data, self.classes, text_column=config.get("text_column", "text"),
                                    label_column=config.get("label_column", "label"))
        else:
            found = eval_split(data, self.classes, skip_bad_images=skip_bad_images)
        found.source = data
        return found

    def _probabilities(self, items: Sequence[Any], batch_size: int) -> np.ndarray:
        self.model.eval()
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            if self.is_text:
                batch = {k: v.to(device) for k, v in self.model.encode(list(chunk)).items()}
            else:
                batch = torch.stack([self.transform(_as_image(it)) for it in chunk]).to(device)
            with torch.no_grad():
                probabilities = torch.softmax(self.model(batch).float(), dim=1)
                if self.tta == "flip":  # the mean of the image's and its horizontal flip's
                    probabilities = (probabilities + torch.softmax(self.model(batch.flip(-1)).float(), dim=1)) / 2
                chunks.append(probabilities.cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def _inputs(self, inputs: Iterable[Any]) -> list[tuple[str, Any]]:
        if not self.is_text:
            return expand_inputs(inputs)
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TransferKitError(f"A language model predicts on strings; got {bad[0]}. Fix: pass texts (or "
                                   "--file FILE with one text per line).")
        if not texts or any(not t.strip() for t in texts):
            raise TransferKitError("Empty text to predict on. Fix: pass non-empty strings.")
        return [(t, t) for t in texts]


def check_tta(tta: str, is_text: bool, task: str) -> str:
    """``tta`` for a model: flip is implemented for image classification only (the one-line error names the fix)."""
    check_choice("tta", tta, TTA_CHOICES)
    if tta != "none" and (is_text or task != "classification"):
        what = "a language model" if is_text else f"a {task} model"
        raise TransferKitError(f"--tta {tta} is implemented for image classification; this is {what}. Fix: drop --tta "
                               "(or pass --tta none).")
    return tta


def load(run_dir: str | Path, merge: bool = True, tta: str | None = None) -> TrainedModel:
    """Load a finished run folder; checks that the weights fit the saved architecture and labels. The process then
    keeps freed memory as the run trained (its ``--cpu-allocator``, process-wide: :mod:`transferkit.allocator`), so
    inference on the CPU does not page-fault its activations in on every batch.

    Args:
        run_dir: the run folder.
        merge: for a LoRA run, merge the adapter into the encoder's weights (faster inference).
        tta: test-time augmentation for predict and evaluate (``none``, ``flip``); default: the run's ``--tta``.
    """
    run_dir = Path(run_dir)
    info = RunFolder(run_dir).read_info()
    keep_freed_memory(info.get("cpu_allocator", {}).get("setting", "auto"))  # before the model takes its memory
    classes = info["classes"]
    if len(classes) != info["head"]["num_classes"]:
        raise TransferKitError(f"{run_dir}: {len(classes)} class names but a head for {info['head']['num_classes']} "
                               "classes. The run folder is inconsistent; retrain it.")
    task = get_task(info.get("task", "classification"))
    if task.dense:
        model = task.rebuild_model(info)
    elif info.get("modality") == "text":
        from .models.text import rebuild_text_model

        model = rebuild_text_model(run_dir, info, merge=merge)  # LoRA: refuses a changed base encoder
        if "lora" in info["model"].get("extra", {}):
            # the adapter is in adapter/; the head is checked like full weights (shapes, hence the class count)
            _load_checked(model.head, run_dir / HEAD_WEIGHTS, prefix="head.")
            return TrainedModel(model, classes, info, run_dir, tta)
    else:
        model = rebuild_model(info["model"], info["head"], info["preprocessing"])
    _load_checked(model, run_dir / WEIGHTS)
    to_layout(model, "auto", on_gpu=torch.cuda.is_available())  # as --channels-last auto trains it
    return TrainedModel(model, classes, info, run_dir, tta)


def _load_checked(module: torch.nn.Module, path: Path, prefix: str = "") -> None:
    """Load ``path`` into ``module`` after checking names and shapes, with a one-line error naming the problems.

    Args:
        module: the model (or its head) built from ``transferkit.json``.
        path: the safetensors file.
        prefix: shown before the tensor names (``head.`` for a head loaded on its own).
    """
    if not path.is_file():
        raise TransferKitError(f"{path} is missing from the run folder. Fix: the run folder is incomplete; copy it "
                               "again or retrain.")
    state = load_weights(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{prefix}{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = ([f"{len(missing)} missing (e.g. {prefix}{missing[0]})"] if missing else []) + \
                   ([f"{len(unexpected)} unexpected (e.g. {prefix}{unexpected[0]})"] if unexpected else []) + \
                   ([f"wrong shapes: {'; '.join(wrong[:3])}"] if wrong else [])
        raise TransferKitError(f"{path} does not fit the model described in transferkit.json: "
                               f"{', '.join(problems)}. Fix: the files come from different runs; retrain.")
    module.load_state_dict(state)


def _same_source(a: str, b: str | None) -> bool:
    """Whether two ``--data`` values name the same data (paths compared once resolved)."""
    if b is None:
        return False
    if a.startswith("builtin:") or b.startswith("builtin:"):
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def expand_inputs(inputs: Iterable[Any]) -> list[tuple[str, Any]]:
    """(name, item) pairs: folders are searched recursively for images; missing paths are an error."""
    if isinstance(inputs, (str, Path, Image.Image, np.ndarray)):
        inputs = [inputs]
    result: list[tuple[str, Any]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
                if not files:
                    raise TransferKitError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}.")
                result += [(str(f), f) for f in files]
            elif path.is_file():
                result.append((str(path), path))
            else:
                raise TransferKitError(f"Input not found: {path}. Fix: pass image files or folders that exist.")
        elif isinstance(item, (Image.Image, np.ndarray)):
            result.append((f"#{i}", item))
        else:
            raise TransferKitError(f"Cannot predict on {type(item).__name__}: pass paths, PIL images or arrays.")
    return result


def _as_image(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    return open_image(item)

"""Inference back ends for serving: a run folder on PyTorch, or an exported ONNX file on onnxruntime.

Both turn one decoded input (an RGB PIL image, or a string) into a model-ready item with :meth:`prepare` (run per
request, in parallel), and a list of prepared items into class probabilities with :meth:`probabilities` (run per
batch, in one worker thread).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from .data.images import build_transforms
from .errors import TransferKitError
from .models.preprocessing import Preprocessing
from .predict import TrainedModel, load
from .runfolder import INFO

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the server needs from a model."""

    classes: list[str]
    modality: str
    runtime: str

    def describe(self) -> dict[str, Any]:
        """Model, preprocessing and source, for ``GET /info``."""

    def prepare(self, item: Image.Image | str) -> Any:
        """One decoded input -> one model-ready item (thread-safe)."""

    def probabilities(self, items: list[Any]) -> np.ndarray:
        """Prepared items -> class probabilities, shape (N, C)."""


class TorchPredictor:
    """A finished run folder on PyTorch (CPU, or the model's device)."""

    runtime = "pytorch"

    def __init__(self, trained: TrainedModel) -> None:
        self.trained = trained
        self.classes = list(trained.classes)
        self.modality = "text" if trained.is_text else "image"
        self.device = next(trained.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        return {"model": self.trained.info.get("model", {}).get("spec", ""), "source": str(self.trained.run_dir),
                "preprocessing": self.trained.preprocessing.to_dict(), "strategy": self.trained.info.get("strategy")}

    def prepare(self, item: Image.Image | str) -> Any:
        return item if self.modality == "text" else self.trained.transform(item)

    @torch.no_grad()
    def probabilities(self, items: list[Any]) -> np.ndarray:
        model = self.trained.model
        if self.modality == "text":
            batch = {k: v.to(self.device) for k, v in model.encode(list(items)).items()}
        else:
            batch = torch.stack(items).to(self.device)
        return torch.softmax(model(batch).float(), dim=1).cpu().numpy()


class OnnxPredictor:
    """An exported ONNX file (and its sidecar; for text, the tokenizer folder beside it) on onnxruntime."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from .export import read_sidecar

        self.path = Path(path)
        self.sidecar = read_sidecar(self.path)
        if self.sidecar.get("format") != "onnx":
            raise TransferKitError(f"{self.path}'s sidecar describes a {self.sidecar.get('format')!r} export. Fix: "
                                   "serve a run folder or an .onnx file.")
        self.classes = list(self.sidecar["classes"])
        self.modality = self.sidecar["modality"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        p = self.sidecar["preprocessing"]
        if self.modality == "text":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path.parent / p["tokenizer_folder"]))
            self.max_length = int(p["max_length"])
        else:
            preprocessing = Preprocessing.from_dict(p)
            if p.get("in_graph"):
                interpolation = InterpolationMode(preprocessing.interpolation)
                self.transform = T.Compose([T.Resize(preprocessing.resize_size, interpolation=interpolation,
                                                     antialias=True), T.CenterCrop(preprocessing.input_size),
                                            T.PILToTensor()])
            else:
                self.transform = build_transforms(preprocessing, "none")[1]

    def describe(self) -> dict[str, Any]:
        return {"model": self.sidecar.get("model", ""), "source": str(self.path),
                "preprocessing": self.sidecar["preprocessing"], "opset": self.sidecar.get("opset"),
                "verification": self.sidecar.get("verification")}

    def prepare(self, item: Image.Image | str) -> Any:
        return item if self.modality == "text" else self.transform(item).numpy()

    def probabilities(self, items: list[Any]) -> np.ndarray:
        if self.modality == "text":
            encoded = self.tokenizer(list(items), truncation=True, max_length=self.max_length, padding=True,
                                     return_tensors="np")
            feeds = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in self.input_names}
        else:
            feeds = {self.input_names[0]: np.stack(items)}
        logits = self.session.run(None, feeds)[0].astype(np.float32)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def load_predictor(source: str | Path, threads: int | None = None) -> TorchPredictor | OnnxPredictor:
    """A run folder (PyTorch) or an exported ``.onnx`` file with its sidecar (onnxruntime).

    Args:
        source: the run folder or the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """
    path = Path(source)
    if path.is_dir() and (path / INFO).is_file():
        return TorchPredictor(load(path, merge=True))
    if path.is_file() and path.suffix == ".onnx":
        return OnnxPredictor(path, threads=threads)
    if path.is_dir():
        load(path)  # raises the run folder's own clear error (unfinished, interrupted...)
    raise TransferKitError(f"Cannot serve {source}: pass a finished run folder or an exported .onnx file (with its "
                           ".onnx.json sidecar). Fix: check the path, or export with `transferkit export RUN --format "
                           "onnx --out model.onnx`.")

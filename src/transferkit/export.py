"""Export a finished run: ONNX, a ``torch.export`` program (``.pt2``) or a Hugging Face folder — always verified.

Every export is checked numerically before it is kept: the exported artefact runs on sample inputs (onnxruntime for
ONNX, the reloaded exported program for pt2, transformers' ``AutoModelForSequenceClassification`` for hf) and its
class probabilities must match the run's PyTorch model within :data:`TOLERANCE`. The result of the check, the labels,
the preprocessing and the input/output names and shapes go into a JSON sidecar next to the artefact
(``pets.onnx.json``, ``pets.pt2.json``, ``folder/transferkit-export.json``). Files are built in a staging folder
beside the output and moved into place only after the check passed, so a failed export leaves nothing behind.

    >>> from transferkit.export import export
    >>> export("runs/pets", "onnx", "pets.onnx")
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import TransferKitError, bad_value
from .options import ExportOptions
from .predict import TrainedModel, load

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2", "hf")
# Class probabilities of the export may differ from PyTorch's by at most this much (absolute). float32 kernels of
# different runtimes differ by ~1e-6 on these models; 1e-4 leaves a wide margin for bigger models and different CPUs
# while any real export bug (a wrong op, a specialised shape, a missing layer) shows up as 1e-2 or more.
TOLERANCE = ExportOptions.tolerance  # the option schema's defaults (transferkit export --help)
OPSET = ExportOptions.opset
SIDECAR_VERSION = 1
HF_SIDECAR = "transferkit-export.json"
# hf export: the stock classification heads put a dense layer and tanh between the [CLS] state and the classifier.
# transferkit's head is a linear layer on the [CLS] state itself, so the dense layer is set to EPSILON * I and the
# classifier to W / EPSILON: tanh(EPSILON * z) / EPSILON = z - EPSILON² z³ / 3 + ..., i.e. the same logits up to
# ~1e-8 z³ (verified numerically like every export).
EPSILON = 1e-4
# model_type -> (class, encoder attribute, dense layer, classifier layer) of the stock sequence classification head.
HF_HEADS = {
    "bert": ("BertForSequenceClassification", "bert", "bert.pooler.dense", "classifier"),
    "roberta": ("RobertaForSequenceClassification", "roberta", "classifier.dense", "classifier.out_proj"),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "roberta", "classifier.dense", "classifier.out_proj"),
}
SAMPLE_TEXTS = ["great film", "a long, slow and rather boring story about nothing in particular, told twice",
                "The markets fell sharply on Monday after the central bank raised interest rates.", "ok"]
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the exported file or folder.
        sidecar: the JSON sidecar (labels, preprocessing, inputs, verification).
        verification: the numerical check that passed (max differences, tolerance, samples).
    """

    path: Path
    sidecar: Path
    verification: dict[str, Any]


def export(run: str | Path | TrainedModel, format: str, out: str | Path, *, include_preprocessing: bool = False,
           opset: int = OPSET, tolerance: float = TOLERANCE, overwrite: bool = False) -> ExportResult:
    """Export a finished run and verify the export against the run's PyTorch model.

    Args:
        run: a run folder (or a model from :func:`transferkit.load`).
        format: ``onnx``, ``pt2`` (``torch.export``) or ``hf`` (a Hugging Face folder; text runs with cls pooling).
        out: the output file (onnx, pt2) or folder (hf).
        include_preprocessing: images, onnx/pt2: the graph takes uint8 NCHW images at the model's input size and
            scales and normalises them itself (resizing and cropping stay with the caller).
        opset: the ONNX opset.
        tolerance: the largest absolute difference in class probabilities the check accepts.
        overwrite: replace an existing output.

    Returns:
        The written paths and the verification record.

    Raises:
        TransferKitError: unsupported run or format, an existing output, or an export that fails the check.
    """
    if format not in FORMATS:
        raise bad_value("format", format, f"one of {', '.join(FORMATS)}", "Pass e.g. --format onnx.")
    if not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise bad_value("tolerance", tolerance, "a float in (0, 1)", "Pass e.g. --tolerance 1e-4.")
    trained = run if isinstance(run, TrainedModel) else load(run, merge=True)
    _check_supported(trained, format, include_preprocessing)
    out = Path(out)
    sidecar_name = HF_SIDECAR if format == "hf" else f"{out.name}.json"
    targets = [out] if format == "hf" else [out, out.with_name(sidecar_name)]
    if trained.is_text and format == "onnx":
        targets.append(out.with_name(f"{out.name}.tokenizer"))
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise TransferKitError(f"{existing[0]} already exists. Fix: choose another --out, or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    trained.model.eval()
    with _staging(out.parent) as stage:
        writer = {"onnx": _export_onnx, "pt2": _export_pt2, "hf": _export_hf}[format]
        staged = stage / out.name
        details = writer(trained, staged, include_preprocessing=include_preprocessing, opset=opset)
        verification = _verify(trained, details.pop("runner"), details.pop("inputs_kind"), tolerance,
                               include_preprocessing)
        if not verification["passed"]:
            raise TransferKitError(
                f"The {format} export of {_name(trained)} does not reproduce the PyTorch model: class probabilities "
                f"differ by up to {verification['max_abs_diff_probabilities']:.2e} (tolerance {tolerance:.0e}; "
                f"top-1 agrees on {verification['top1_agreement']:.0%} of {verification['samples']} samples). "
                "Nothing was written. Fix: report this with the run's transferkit.json; try --format pt2 meanwhile.")
        sidecar = _sidecar(trained, format, out, details, verification, include_preprocessing)
        sidecar_path = (staged / HF_SIDECAR) if format == "hf" else stage / sidecar_name
        sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        for entry in sorted(stage.iterdir()):  # the artefact (and ONNX external data), tokenizer, sidecar
            _replace(entry, out.parent / entry.name)
    logger.info("Exported %s to %s (verified: max probability difference %.1e, tolerance %.0e)", format, out,
                verification["max_abs_diff_probabilities"], tolerance)
    return ExportResult(out, out / HF_SIDECAR if format == "hf" else out.with_name(sidecar_name), verification)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported file (``pets.onnx`` -> ``pets.onnx.json``), with a clear error when missing."""
    path = Path(path)
    sidecar = path / HF_SIDECAR if path.is_dir() else path.with_name(f"{path.name}.json")
    if not sidecar.is_file():
        raise TransferKitError(f"{path} has no transferkit sidecar ({sidecar.name} missing). Fix: export it with "
                               "`transferkit export RUN --format onnx --out FILE`, which writes both.")
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    if data.get("transferkit_export") != SIDECAR_VERSION:
        raise TransferKitError(f"{sidecar} has sidecar version {data.get('transferkit_export')!r}; this transferkit "
                               f"reads version {SIDECAR_VERSION}. Fix: export the run again.")
    return data


# --- what can be exported ----------------------------------------------------------------------------------------


def _check_supported(trained: TrainedModel, format: str, include_preprocessing: bool) -> None:
    task = trained.info.get("task", "classification")
    if task != "classification":
        raise TransferKitError(f"Export of {task} runs is not supported yet; only classification runs export. Fix: "
                               "use transferkit.load(run) in Python for now.")
    if trained.is_text and include_preprocessing:
        raise TransferKitError("--include-preprocessing is for image models (tokenisation cannot go into the graph). "
                               "Fix: drop it; a text export takes input_ids and attention_mask, and the ONNX export "
                               "saves the tokenizer next to the model.")
    if format == "hf":
        if not trained.is_text:
            raise TransferKitError("--format hf is for language models (a Hugging Face folder for "
                                   "AutoModelForSequenceClassification). Fix: export image runs with --format onnx "
                                   "or --format pt2.")
        _hf_head_spec(trained)


def _hf_head_spec(trained: TrainedModel) -> tuple[str, str, str, str]:
    model = trained.model
    model_type = getattr(model.backbone.config, "model_type", "?")
    if model.preprocessing.pooling != "cls":
        raise TransferKitError(
            f"--format hf needs a run with cls pooling; this one uses {model.preprocessing.pooling} pooling, which no "
            "stock AutoModelForSequenceClassification head computes (they classify from the first token), so the "
            "folder would predict differently. Fix: --format onnx or --format pt2 (the pooling is inside the graph), "
            "or retrain with --pooling cls.")
    if model.head_config.hidden:
        raise TransferKitError("--format hf cannot represent a head with a hidden layer (--hidden): stock "
                               "classification heads are one dense layer and a classifier. Fix: --format onnx or "
                               "pt2, or retrain without --hidden.")
    if model_type not in HF_HEADS:
        raise TransferKitError(f"--format hf does not support '{model_type}' encoders yet (supported: "
                               f"{', '.join(HF_HEADS)}). Fix: --format onnx or --format pt2.")
    return HF_HEADS[model_type]


# --- the three formats ---------------------------------------------------------------------------------------------


class _ImageGraph(nn.Module):
    """The run's model, optionally preceded by uint8 -> float scaling and normalisation."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.model = model
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            images = (images.float() - self.mean) / self.std
        return self.model(images)


class _TextGraph(nn.Module):
    """The run's text model with token tensors as separate named inputs (what exporters and runtimes need)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(inputs)


def _graph_and_inputs(trained: TrainedModel, include_preprocessing: bool):
    """The module to export, example kwargs (batch 2: a batch of 1 would be specialised), dynamic shapes, and the
    input descriptions for the sidecar."""
    model = trained.model
    if trained.is_text:
        example = _encode(trained, SAMPLE_TEXTS[:2])
        batch = torch.export.Dim("batch", min=1, max=4096)
        sequence = torch.export.Dim("sequence", min=1, max=int(model.preprocessing.max_length))
        shapes = {name: {0: batch, 1: sequence} for name in example}
        described = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in example]
        return _TextGraph(model).eval(), example, shapes, described
    p = model.preprocessing
    size = p.input_size
    graph = _ImageGraph(model, p.mean, p.std) if include_preprocessing else _ImageGraph(model)
    generator = torch.Generator().manual_seed(0)
    if include_preprocessing:
        example = {"images": torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=generator)}
    else:
        example = {"images": torch.randn(2, 3, size, size, generator=generator)}
    shapes = {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
    described = [{"name": "images", "dtype": "uint8" if include_preprocessing else "float32",
                  "shape": ["batch", 3, size, size]}]
    return graph.eval(), example, shapes, described


def _torch_export(graph: nn.Module, example: dict[str, torch.Tensor], shapes: dict[str, Any]):
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(graph, (), kwargs=example, dynamic_shapes=shapes, strict=False)
    except Exception as exc:  # torch.export raises many types (UserError, Unsupported, GuardOnDataDependent...)
        raise TransferKitError(f"torch.export could not capture this model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}). This architecture cannot be exported yet. Fix: "
                               "use transferkit.load(run) in Python.") from exc


def _export_onnx(trained: TrainedModel, path: Path, *, include_preprocessing: bool, opset: int) -> dict[str, Any]:
    import onnxruntime as ort

    graph, example, shapes, described = _graph_and_inputs(trained, include_preprocessing)
    program = _torch_export(graph, example, shapes)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, (), kwargs=example, input_names=list(example),
                                             output_names=["logits"], opset_version=opset, dynamo=True)
    except Exception as exc:  # the exporter raises its own error types per unsupported operator
        raise TransferKitError(f"The ONNX exporter failed on this model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}). Fix: try --format pt2 or another --opset.") from exc
    onnx_program.save(str(path))
    if trained.is_text:
        trained.model.tokenizer.save_pretrained(str(path.with_name(f"{path.name}.tokenizer")))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], {k: v for k, v in inputs.items() if k in names})[0]

    return {"runner": runner, "inputs_kind": "numpy", "inputs": described, "opset": opset,
            "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)"}


def _export_pt2(trained: TrainedModel, path: Path, *, include_preprocessing: bool, opset: int) -> dict[str, Any]:
    graph, example, shapes, described = _graph_and_inputs(trained, include_preprocessing)
    program = _torch_export(graph, example, shapes)
    torch.export.save(program, str(path))
    reloaded = torch.export.load(str(path)).module()

    def runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return reloaded(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()

    return {"runner": runner, "inputs_kind": "numpy", "inputs": described,
            "runtime": f"torch.export.load (torch {torch.__version__})"}


def _export_hf(trained: TrainedModel, path: Path, *, include_preprocessing: bool, opset: int) -> dict[str, Any]:
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    class_name, encoder_attr, dense_name, classifier_name = _hf_head_spec(trained)
    model = trained.model
    config = model.backbone.config.__class__.from_dict(model.backbone.config.to_dict())
    config.num_labels = len(trained.classes)
    config.id2label = dict(enumerate(trained.classes))
    config.label2id = {label: i for i, label in enumerate(trained.classes)}
    config.architectures = [class_name]
    config.problem_type = "single_label_classification"
    hf_model = getattr(transformers, class_name)(config)
    linear = [m for m in model.head if isinstance(m, nn.Linear)][-1]
    width = linear.in_features
    state = {f"{encoder_attr}.{k}": v for k, v in model.backbone.state_dict().items()}
    state[f"{dense_name}.weight"] = torch.eye(width) * EPSILON
    state[f"{dense_name}.bias"] = torch.zeros(width)
    state[f"{classifier_name}.weight"] = linear.weight.detach() / EPSILON
    state[f"{classifier_name}.bias"] = linear.bias.detach().clone()
    expected = hf_model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise TransferKitError(f"--format hf: {class_name} expects weights this run does not have (e.g. "
                               f"{missing[0]}). Fix: --format onnx or --format pt2.")
    hf_model.load_state_dict({k: state[k] for k in expected}, strict=True)
    with _quiet_transformers():
        hf_model.save_pretrained(str(path))
        model.tokenizer.save_pretrained(str(path))
        reloaded = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))

    def runner(texts: list[str]) -> np.ndarray:
        encoded = tokenizer(texts, truncation=True, max_length=model.preprocessing.max_length, padding=True,
                            return_tensors="pt")
        with torch.no_grad():
            return reloaded(**encoded).logits.numpy()

    described = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
                 for n in tokenizer.model_input_names if n in TEXT_INPUTS]
    return {"runner": runner, "inputs_kind": "texts", "inputs": described, "class": class_name,
            "runtime": f"transformers {transformers.__version__} AutoModelForSequenceClassification",
            "head_mapping": f"{dense_name} = {EPSILON:g} * identity, {classifier_name} = the run's head / "
                            f"{EPSILON:g}: tanh is linear there, so the stock head reproduces the run's linear head "
                            "on the [CLS] state (checked numerically)"}


# --- verification -------------------------------------------------------------------------------------------------


def _encode(trained: TrainedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = trained.model.encode(texts)
    return {name: encoded[name] for name in TEXT_INPUTS if name in encoded}


def _verify(trained: TrainedModel, runner: Callable[[Any], np.ndarray], inputs_kind: str, tolerance: float,
            include_preprocessing: bool) -> dict[str, Any]:
    """Run the export and the PyTorch model on the same samples (batches of 1 and 3: the batch axis is dynamic)."""
    expected_chunks, got_chunks = [], []
    for batch in _samples(trained, include_preprocessing):
        with torch.no_grad():
            if trained.is_text:
                reference = trained.model(_encode(trained, batch))
            else:
                images = batch.float() / 255.0 if include_preprocessing else batch
                if include_preprocessing:
                    p = trained.preprocessing
                    images = (images - torch.tensor(p.mean).view(1, -1, 1, 1)) / torch.tensor(p.std).view(1, -1, 1, 1)
                reference = trained.model(images)
        if inputs_kind == "texts":
            logits = runner(batch)
        elif trained.is_text:
            logits = runner({k: v.numpy() for k, v in _encode(trained, batch).items()})
        else:
            logits = runner({"images": batch.numpy()})
        expected_chunks.append(reference.float().numpy())
        got_chunks.append(np.asarray(logits, dtype=np.float32))
    expected, got = np.concatenate(expected_chunks), np.concatenate(got_chunks)
    if got.shape != expected.shape:
        return {"passed": False, "max_abs_diff_probabilities": float("inf"), "top1_agreement": 0.0,
                "samples": len(expected), "tolerance": tolerance}
    p_expected, p_got = _softmax(expected), _softmax(got)
    diff = float(np.abs(p_expected - p_got).max())
    agreement = float((p_expected.argmax(1) == p_got.argmax(1)).mean())
    return {"passed": bool(diff <= tolerance and agreement == 1.0), "against": "the run's PyTorch model (float32, CPU)",
            "samples": len(expected), "batch_sizes": [len(c) for c in expected_chunks], "tolerance": tolerance,
            "max_abs_diff_probabilities": diff, "max_abs_diff_logits": float(np.abs(expected - got).max()),
            "top1_agreement": agreement}


def _samples(trained: TrainedModel, include_preprocessing: bool) -> list[Any]:
    if trained.is_text:
        return [SAMPLE_TEXTS[:1], SAMPLE_TEXTS[1:]]
    size = trained.preprocessing.input_size
    generator = torch.Generator().manual_seed(1)
    batches = []
    for n in (1, 3):
        if include_preprocessing:
            batches.append(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator))
        else:
            batches.append(torch.randn(n, 3, size, size, generator=generator).clamp(-3, 3))
    return batches


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --- sidecar and files --------------------------------------------------------------------------------------------


def _sidecar(trained: TrainedModel, format: str, out: Path, details: dict[str, Any], verification: dict[str, Any],
             include_preprocessing: bool) -> dict[str, Any]:
    from . import __version__

    p = trained.preprocessing
    notes = []
    if trained.is_text:
        preprocessing = {**p.to_dict(), "in_graph": False, "steps": f"tokenise with the tokenizer, truncate to "
                         f"{p.max_length} tokens, pad the batch; {p.pooling} pooling is inside the model"}
        if format == "onnx":
            preprocessing["tokenizer_folder"] = f"{out.name}.tokenizer"
        elif format == "hf":
            preprocessing["tokenizer_folder"] = "."
    else:
        preprocessing = {**p.to_dict(), "resize_size": p.resize_size, "in_graph": include_preprocessing}
        steps = (f"resize the short side to {p.resize_size} px ({p.interpolation}), centre-crop {p.input_size} px, "
                 "RGB, channels first (NCHW)")
        preprocessing["steps"] = (f"{steps}; pass uint8 pixels: the graph scales to [0, 1] and normalises with mean "
                                  "and std" if include_preprocessing else
                                  f"{steps}, scale to [0, 1], subtract mean, divide by std (float32)")
        notes.append(f"The image size is fixed at {p.input_size} x {p.input_size} (the model's input size; SAME-"
                     "padding models such as EfficientNet-Lite need a fixed size); the batch axis is dynamic.")
    if "head_mapping" in details:
        notes.append(f"Head: {details['head_mapping']}.")
    sidecar = {
        "transferkit_export": SIDECAR_VERSION, "format": format, "file": out.name, "modality": trained.model.modality,
        "model": trained.info.get("model", {}).get("spec", ""), "run": str(trained.run_dir or ""),
        "classes": list(trained.classes), "id2label": {str(i): c for i, c in enumerate(trained.classes)},
        "preprocessing": preprocessing, "inputs": details["inputs"],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(trained.classes)],
                     "meaning": "class scores; softmax gives probabilities, in the order of classes"}],
        "verification": {**verification, "runtime": details["runtime"]}, "notes": notes,
        "versions": {"transferkit": __version__, "torch": torch.__version__},
    }
    if "opset" in details:
        sidecar["opset"] = details["opset"]
    if "class" in details:
        sidecar["architecture"] = details["class"]
    return sidecar


def _name(trained: TrainedModel) -> str:
    return str(trained.run_dir or trained.info.get("model", {}).get("spec", "the model"))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and load report off for the call (transferkit logs what it wrote)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    """A temporary folder beside the output (same file system, so the final moves are renames); always removed."""
    stage = Path(tempfile.mkdtemp(prefix=".transferkit-export-", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replace(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(source, target)

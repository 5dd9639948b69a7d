"""What fine-tuning forgot: a fine-tuned model measured against the pre-trained model it started from.

* **Function** (image models whose pre-trained weights carry their classifier, e.g. the 1000 ImageNet classes of
  the built-in EfficientNet-Lite weights): the fine-tuned *backbone* under the *original* classifier is compared
  with the pre-trained model on reference images (:mod:`.reference`): top-1 agreement (1 = every prediction of
  the pre-trained model kept) and the mean KL divergence KL(pre-trained ‖ fine-tuned) in nats (0 = unchanged).
* **Text models**: the cosine similarity of the pooled sentence embeddings of both encoders on reference
  sentences (1 = unchanged).
* **Representations**: linear CKA (Kornblith et al. 2019) between the two models' outputs of each layer group
  (spatially or token-mean pooled) and of the pooled features the head sees: 1 = the same up to a rotation and
  scale, lower = the group's output changed; the group where it drops first is where the change starts.
* **Weights**: the relative change ‖θ₁ − θ₀‖ / ‖θ₀‖ of each layer group's parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TransferKitError
from ..models.groups import LayerGroup
from ..models.model import TransferModel
from .reference import reference_inputs

logger = logging.getLogger(__name__)

FEATURES = "features"  # the CKA entry of the pooled features the head sees


@dataclass
class Retention:
    """How much of the pre-trained model a fine-tuned one kept (see the module docstring for each measure).

    Attributes:
        reference: what the reference set was.
        samples: its size.
        top1_agreement: share of reference inputs where the fine-tuned backbone + original classifier predicts the
            pre-trained model's class; ``None`` without an original classifier (text models, or weights without
            one).
        kl: mean KL(pre-trained ‖ fine-tuned) over the original classes, in nats.
        embedding_cosine: text models: mean cosine similarity of the sentence embeddings.
        cka: linear CKA per layer group, input to output, then ``features``.
        weight_change: relative weight change per backbone layer group, then ``backbone`` (all of them).
        note: why a measure is missing, if one is.
    """

    reference: str
    samples: int
    top1_agreement: float | None
    kl: float | None
    embedding_cosine: float | None
    cka: dict[str, float]
    weight_change: dict[str, float]
    note: str = ""

    @property
    def most_changed(self) -> str | None:
        """The layer group whose output moved most (lowest CKA); ``None`` when none moved."""
        groups = {k: v for k, v in self.cka.items() if k != FEATURES and v < 1 - 1e-6}
        return min(groups, key=groups.get) if groups else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "most_changed_group": self.most_changed}


# --- the measures ------------------------------------------------------------------------------------


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two feature matrices of the same ``n`` examples, ``(n, p)`` and
    ``(n, q)``: ``⟨K, L⟩ / (‖K‖ ‖L‖)`` of the centred linear Gram matrices (Kornblith et al. 2019). 1 for features
    equal up to an orthogonal transform and isotropic scale; near 0 for independent ones."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides; got {x.shape[0]} and {y.shape[0]} rows.")
    x = x.double().reshape(x.shape[0], -1)
    y = y.double().reshape(y.shape[0], -1)
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    k, l_ = x @ x.T, y @ y.T
    denominator = (k.norm() * l_.norm()).item()
    return float((k * l_).sum().item() / denominator) if denominator > 0 else 0.0


def relative_weight_change(start: nn.Module, end: nn.Module, groups: Sequence[LayerGroup]) -> dict[str, float]:
    """‖θ₁ − θ₀‖ / ‖θ₀‖ over each group's parameters (names as in ``start.named_parameters()``), and over all
    of them as ``backbone``."""
    before, after = dict(start.named_parameters()), dict(end.named_parameters())
    change: dict[str, float] = {}
    total_diff = total_norm = 0.0
    for group in groups:
        diff = sum(float((after[n].detach().double() - before[n].detach().double()).pow(2).sum())
                   for n in group.param_names)
        norm = sum(float(before[n].detach().double().pow(2).sum()) for n in group.param_names)
        change[group.name] = (diff / norm) ** 0.5 if norm > 0 else 0.0
        total_diff, total_norm = total_diff + diff, total_norm + norm
    change["backbone"] = (total_diff / total_norm) ** 0.5 if total_norm > 0 else 0.0
    return change


def top1_agreement(start_logits: torch.Tensor, end_logits: torch.Tensor) -> float:
    return float((start_logits.argmax(1) == end_logits.argmax(1)).double().mean())


def mean_kl(start_logits: torch.Tensor, end_logits: torch.Tensor) -> float:
    """Mean KL(p_start ‖ p_end) in nats."""
    p_log, q_log = start_logits.double().log_softmax(1), end_logits.double().log_softmax(1)
    return float((p_log.exp() * (p_log - q_log)).sum(1).mean())


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


# --- forward passes with the group outputs ---------------------------------------------------------


def backbone_groups(model: TransferModel) -> list[LayerGroup]:
    """The model's layer groups without the head, named as ``model.backbone``'s parameters."""
    return [LayerGroup(g.name, tuple(p.removeprefix("backbone.") for p in g.param_names))
            for g in model.layer_groups() if all(p.startswith("backbone.") for p in g.param_names)]


def group_output_module(backbone: nn.Module, group: LayerGroup) -> nn.Module:
    """The module whose output is the group's output: the deepest module holding all its parameters (a stage,
    an encoder layer), or, when that is the whole backbone (a stem of loose layers), the module of its last
    parameter."""
    paths = [name.rsplit(".", 1)[0] if "." in name else "" for name in group.param_names]
    parts = [p.split(".") for p in paths]
    common: list[str] = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    prefix = ".".join(common)
    return backbone.get_submodule(prefix) if prefix else backbone.get_submodule(paths[-1])


def _pooled(output: Any) -> torch.Tensor:
    tensor = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
    tensor = tensor.detach().float()
    if tensor.ndim == 4:
        return tensor.mean(dim=(2, 3))
    if tensor.ndim == 3:
        return tensor.mean(dim=1)
    return tensor.reshape(tensor.shape[0], -1)


@torch.no_grad()
def run_reference(model: TransferModel, batches: Sequence[Any], groups: Sequence[LayerGroup],
                  classifier: nn.Module | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One pass over ``batches`` in eval mode: each group's pooled output and the pooled features (under
    ``features``), and ``classifier``'s logits on those features."""
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {g.name: [] for g in groups}
    outputs[FEATURES] = []
    logits: list[torch.Tensor] = []
    handles = [group_output_module(model.backbone, g).register_forward_hook(
        lambda _m, _i, out, name=g.name: outputs[name].append(_pooled(out))) for g in groups]
    try:
        for batch in batches:
            features = model.forward_features(batch)
            outputs[FEATURES].append(features.detach().float())
            if classifier is not None:
                logits.append(classifier(features).float())
    finally:
        for handle in handles:
            handle.remove()
    return {k: torch.cat(v) for k, v in outputs.items()}, torch.cat(logits) if logits else None


class RetentionProbe:
    """The pre-trained ``start``'s outputs on reference ``batches``, computed once; :meth:`measure` compares any
    model of the same architecture with them (an α sweep measures many)."""

    def __init__(self, start: TransferModel, batches: Sequence[Any], classifier: nn.Module | None = None,
                 reference: str = "", note: str = "") -> None:
        self.start, self.batches, self.classifier = start, batches, classifier
        self.reference, self.note = reference, note
        self.groups = backbone_groups(start)
        self.outputs, self.logits = run_reference(start, batches, self.groups, classifier)

    def measure(self, end: TransferModel) -> Retention:
        end_out, end_logits = run_reference(end, self.batches, self.groups, self.classifier)
        cka = {name: round(linear_cka(self.outputs[name], end_out[name]), 6) for name in self.outputs}
        change = relative_weight_change(self.start.backbone, end.backbone, self.groups)
        return Retention(
            reference=self.reference, samples=int(self.outputs[FEATURES].shape[0]),
            top1_agreement=None if self.logits is None else top1_agreement(self.logits, end_logits),
            kl=None if self.logits is None else mean_kl(self.logits, end_logits),
            embedding_cosine=mean_cosine(self.outputs[FEATURES], end_out[FEATURES]) if self.start.is_text else None,
            cka=cka, weight_change={k: round(v, 6) for k, v in change.items()}, note=self.note)


def compare_models(start: TransferModel, end: TransferModel, batches: Sequence[Any],
                   classifier: nn.Module | None = None, reference: str = "", note: str = "") -> Retention:
    """All the measures between a pre-trained ``start`` and a fine-tuned ``end`` of the same architecture."""
    return RetentionProbe(start, batches, classifier, reference, note).measure(end)


# --- a run against its pre-trained start -------------------------------------------------------------


def pretrained_start(info: dict[str, Any]) -> TransferModel:
    """The pre-trained model a finished run started from (same architecture and head shape, pre-trained backbone,
    new random head), from its ``transferkit.json``."""
    config, spec = info.get("config", {}), info["model"]
    if config.get("strategy") == "scratch" or spec.get("weights") == "random":
        raise TransferKitError("This run was trained from random weights (strategy scratch): there is no pre-trained "
                               "model it could have forgotten. Fix: measure a run that started from pre-trained "
                               "weights.")
    head = info["head"]
    if info.get("modality") == "text":
        from ..models.text import load_text_model

        return load_text_model(spec["spec"], head["num_classes"], dropout=head["dropout"], hidden=head["hidden"],
                               pooling=info["preprocessing"]["pooling"], max_length=info["preprocessing"]["max_length"],
                               trust_remote_code=bool(spec.get("extra", {}).get("trust_remote_code")))
    from ..models.sources import load_model

    model = load_model(spec["spec"], head["num_classes"], weights=config.get("weights"), dropout=head["dropout"],
                       hidden=head["hidden"], image_size=config.get("image_size"))
    return model


def original_classifier(info: dict[str, Any]) -> tuple[nn.Linear | None, str]:
    """The pre-trained classifier the run's head replaced, and a note when there is none."""
    if info.get("modality") == "text":
        return None, "language model: compared by sentence-embedding cosine"
    from ..models.sources import pretrained_classifier

    linear = pretrained_classifier(info["model"]["spec"], info.get("config", {}).get("weights"))
    if linear is None:
        return None, "the pre-trained weights carry no classifier: no agreement or KL"
    return linear.eval(), ""


def reference_batches(model: TransferModel, items: Sequence[Any], batch_size: int = 32) -> list[Any]:
    """The reference inputs as model inputs (the model's own evaluation preprocessing, or its tokenizer)."""
    if model.is_text:
        return [model.encode(list(items[i:i + batch_size])) for i in range(0, len(items), batch_size)]
    from ..data.images import build_transforms, open_image

    transform = build_transforms(model.preprocessing, "none")[1]

    def tensor(item: Any) -> torch.Tensor:
        return transform(item.convert("RGB") if hasattr(item, "convert") else open_image(item))

    return [torch.stack([tensor(it) for it in items[i:i + batch_size]]) for i in range(0, len(items), batch_size)]


def retention_probe(trained: Any, reference: str | Path | None = None, batch_size: int = 32,
                    start: TransferModel | None = None) -> RetentionProbe:
    """A :class:`RetentionProbe` for a loaded run (:class:`~transferkit.predict.TrainedModel`): its pre-trained
    start (loaded unless given), original classifier and reference inputs."""
    info = trained.info
    start = start if start is not None else pretrained_start(info)
    linear, note = original_classifier(info)
    items, description = reference_inputs(reference, trained.is_text)
    batches = reference_batches(trained.model, items, batch_size)
    return RetentionProbe(start.cpu(), batches, linear, description, note)


def measure_run(run: str | Path | Any, reference: str | Path | None = None, batch_size: int = 32) -> Retention:
    """Retention of a finished run (a folder or a loaded :class:`~transferkit.predict.TrainedModel`) against the
    pre-trained model it started from.

    Args:
        reference: a folder of images (a file of sentences for a language model); default: the built-in set.
    """
    from ..predict import TrainedModel, load

    trained = run if isinstance(run, TrainedModel) else load(run)
    return retention_probe(trained, reference, batch_size).measure(trained.model.cpu())


def backward_transfer(run: str | Path | Any, previous: str | Path | Any, batch_size: int = 64) -> dict[str, Any]:
    """The task-sequence protocol: ``previous`` was trained on task A, ``run`` continued from its weights on task B
    (``--weights PREVIOUS/model.safetensors``). A's test accuracy with B's backbone under A's own head, minus A's
    own test accuracy, is the backward transfer (negative: forgotten; Lopez-Paz & Ranzato 2017).

    Returns:
        ``previous``, ``data`` and ``split`` (A's evaluation data), ``accuracy_before``, ``accuracy_after`` and
        ``backward_transfer``.
    """
    import copy

    from ..predict import TrainedModel, load

    later = run if isinstance(run, TrainedModel) else load(run)
    earlier = previous if isinstance(previous, TrainedModel) else load(previous)
    started_from = later.info.get("config", {}).get("weights")
    expected = Path(earlier.run_dir or previous) / "model.safetensors"
    if not started_from or Path(started_from).resolve() != expected.resolve():
        raise TransferKitError(f"{later.run_dir} did not start from {expected} (its --weights: {started_from}). Fix: "
                               f"pass the run it continued from, or train task B with --weights {expected}.")
    combined = copy.deepcopy(earlier.model)
    combined.backbone.load_state_dict(later.model.backbone.state_dict())
    before = earlier.evaluate(batch_size=batch_size)
    after = TrainedModel(combined, earlier.classes, earlier.info, earlier.run_dir).evaluate(batch_size=batch_size)
    return {"previous": str(earlier.run_dir), "data": before["data"], "split": before["split"],
            "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "backward_transfer": after["accuracy"] - before["accuracy"]}


def format_retention(result: Retention) -> str:
    """A short plain-text report."""
    lines = [f"reference: {result.reference}"]
    if result.top1_agreement is not None:
        lines.append(f"top-1 agreement with the pre-trained classifier: {result.top1_agreement:.3f}   "
                     f"KL(pre-trained || fine-tuned): {result.kl:.3f} nats")
    if result.embedding_cosine is not None:
        lines.append(f"sentence-embedding cosine with the pre-trained encoder: {result.embedding_cosine:.3f}")
    if result.note:
        lines.append(f"note: {result.note}")
    lines.append(f"{'layer group':<28}{'CKA':>8}{'weight change':>16}")
    for name, value in result.cka.items():
        change = result.weight_change.get(name)
        lines.append(f"{name:<28}{value:>8.3f}{'' if change is None else f'{change:>16.4f}'}")
    lines.append(f"{'backbone (all groups)':<28}{'':>8}{result.weight_change.get('backbone', 0.0):>16.4f}")
    lines.append(f"most changed group (lowest CKA): {result.most_changed}" if result.most_changed else
                 "no layer group's output changed")
    return "\n".join(lines)

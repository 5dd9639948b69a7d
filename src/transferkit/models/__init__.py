"""Model sources, the TransferModel contract and preprocessing from the weights."""

from .groups import LayerGroup, coarsen, group_backbone
from .model import HeadConfig, ModelSpec, TransferModel
from .packaged import BUILTIN_MODELS
from .preprocessing import Preprocessing
from .sources import list_sources, load_model, parse_source, read_weights_file, rebuild_model

__all__ = ["BUILTIN_MODELS", "HeadConfig", "LayerGroup", "ModelSpec", "Preprocessing", "TransferModel", "coarsen",
           "group_backbone", "list_sources", "load_model", "parse_source", "read_weights_file", "rebuild_model"]

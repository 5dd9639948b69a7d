"""transferkit: adapt a pre-trained model to your data with the right strategy, fast.

    >>> import transferkit
    >>> run = transferkit.train(data="builtin:fashion-mnist", per_class=100, model="efficientnet_lite0",
    ...                         strategy="two-stage", out="runs/fmnist")
    >>> model = transferkit.load("runs/fmnist")
    >>> model.predict(["shoe.png"])
"""

__version__ = "0.1.0"

from .api import TrainResult, plan, train  # noqa: E402
from .data import load_eval_data, load_training_data  # noqa: E402
from .errors import IncompleteRunError, TransferKitError  # noqa: E402
from .evaluate import compute_metrics, format_report, save_confusion_png  # noqa: E402
from .experiments import advise, compare  # noqa: E402
from .models import TransferModel, list_sources, load_model  # noqa: E402
from .options import TrainConfig  # noqa: E402
from .predict import Prediction, TrainedModel, load  # noqa: E402
from .strategies import STRATEGIES, Phase, build_phases  # noqa: E402

__all__ = ["STRATEGIES", "IncompleteRunError", "Phase", "Prediction", "TrainConfig", "TrainResult", "TrainedModel",
           "TransferKitError", "TransferModel", "__version__", "advise", "build_phases", "compare", "compute_metrics",
           "format_report",
           "list_sources", "load", "load_eval_data", "load_model", "load_training_data", "plan",
           "save_confusion_png", "train"]

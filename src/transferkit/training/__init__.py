"""The training loop, its callbacks and crash-safe checkpoints."""

from .callbacks import Callback, EarlyStopping
from .loop import FitConfig, FitResult, TrainState, fit

__all__ = ["Callback", "EarlyStopping", "FitConfig", "FitResult", "TrainState", "fit"]

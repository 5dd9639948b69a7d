"""The offline demo: what transfer learning buys on a few hundred images.

Trains ``scratch``, ``linear-probe`` and ``two-stage`` with the built-in EfficientNet-Lite0 on
Fashion-MNIST (``per_class`` training images per class) and evaluates each on the same 1,000 held-out
test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .api import train

DEMO_STRATEGIES = ("scratch", "linear-probe", "two-stage")


def run_demo(out_dir: Path, *, per_class: int = 30, image_size: int = 96, epochs: int = 8,
             data: str = "builtin:fashion-mnist", model: str = "efficientnet_lite0",
             strategies: tuple[str, ...] = DEMO_STRATEGIES, progress: bool = True) -> list[dict[str, Any]]:
    """Train each strategy once; returns one row per strategy (test accuracy, macro-F1, seconds, run)."""
    rows = []
    for strategy in strategies:
        result = train(data, model=model, strategy=strategy, per_class=per_class, image_size=image_size,
                       epochs=epochs, head_epochs=2, test_per_class=100, patience=0,
                       out=str(Path(out_dir) / strategy), overwrite=True, progress=progress)
        rows.append({"strategy": strategy, "test_accuracy": result.test["accuracy"],
                     "macro_f1": result.test["macro_f1"], "seconds": result.seconds, "run": str(result.run_dir)})
    return rows

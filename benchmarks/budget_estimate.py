"""How close is ``--budget``'s estimate of a fine-tuning phase's first epoch to the epoch it estimates?

    python benchmarks/budget_estimate.py          # EfficientNet-Lite0, Fashion-MNIST 100/class; MiniLM-L6, BBC 20/class
    python benchmarks/budget_estimate.py --datasets bbc-news

Each dataset trains ``--strategy two-stage --epochs 2`` with a budget so large that every epoch runs; at the
boundary after the head stage the budget logs its estimate of the first fine-tuning epoch (a timed training step,
:class:`transferkit.training.budget.EpochEstimate`). The row gives that estimate next to the first and second
fine-tuning epochs as they ran (from the run's history), and estimate / first epoch. Timed results mean something
only on a quiet machine.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser, report  # noqa: E402

import transferkit  # noqa: E402
from transferkit.training.budget import EpochEstimate  # noqa: E402

DATASETS = {"fashion-mnist": ("builtin:fashion-mnist", "efficientnet_lite0", 100),
            "bbc-news": ("builtin:bbc-news", "minilm-l6", 20)}
def _recording(calls: list[float]):
    """``EpochEstimate.__call__`` that also keeps what it returned (the log rounds to whole seconds)."""
    original = EpochEstimate.__call__

    def call(self, trains=None):
        seconds = original(self, trains)
        calls.append(seconds)
        return seconds

    return original, call


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    args = p.parse_args(argv)
    rows = []
    for name in args.datasets:
        data, model, per_class = DATASETS[name]
        tiny = {"max_length": 64} if name == "bbc-news" else {"image_size": 32}
        options = {"per_class": 2, **tiny} if args.smoke else {"per_class": per_class}
        estimates: list[float] = []
        original, EpochEstimate.__call__ = _recording(estimates)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                result = transferkit.train(data, model=model, strategy="two-stage", epochs=2, budget=1e6,
                                           out=f"{tmp}/run", progress=False, evaluate_test=False, **options)
        finally:
            EpochEstimate.__call__ = original
        ends = [0.0] + [row["seconds"] for row in result.history]  # seconds since the fit started, per epoch end
        epochs = [(row["phase"], end - start)
                  for row, start, end in zip(result.history, ends[:-1], ends[1:], strict=True)]
        tuned = [seconds for phase, seconds in epochs if phase == "all"]
        estimate = estimates[0] if estimates else None  # the boundary's first: every group of the phase trains
        rows.append({"dataset": name, "model": model, "per_class": options["per_class"], "estimate_s": estimate,
                     "first_epoch_s": tuned[0], "second_epoch_s": tuned[1] if len(tuned) > 1 else None,
                     "estimate_vs_first": estimate / tuned[0] if estimate is not None else None})
    report("budget_estimate", rows, ["dataset", "model", "per_class", "estimate_s", "first_epoch_s",
                                     "second_epoch_s", "estimate_vs_first"], args.out,
           notes="estimate: made at the boundary after the head stage, every group training; epochs: from the run's "
                 "history (wall seconds of each fine-tuning epoch, validation and checkpoint included)")
    return rows


if __name__ == "__main__":
    main()

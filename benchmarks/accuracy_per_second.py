"""Accuracy per second (issue 16): test accuracy and wall time from the start of the run, caches built in it.

    python benchmarks/accuracy_per_second.py                  # Fashion-MNIST 100/class and BBC News 20/class
    python benchmarks/accuracy_per_second.py --budget 60      # adds a --budget 60 row per dataset
    python benchmarks/accuracy_per_second.py --datasets fashion-mnist --rows budget --budget 60 --budget-sizes 64 112

Rows per dataset: train's defaults (``--strategy auto``), ``--strategy two-stage`` (the fixed recipe that was the
default before auto) and (with ``--budget``) the defaults under that budget. The
issue's targets: Fashion-MNIST 100/class, EfficientNet-Lite0: >= 0.87 test accuracy within 60 s; BBC News 20/class,
minilm-l6: >= 0.95 with the defaults, faster than today. ``--budget-sizes`` adds the budget at smaller ``--image-size``
values (images only): does a smaller input, whose epochs are cheaper, fit a better model into the same budget than
the model's own input size? ``--rows`` picks which kinds of row to run. Timed targets mean something only on a quiet
machine (2 CPU cores, nothing else running); the table says what it measured, and the JSON keeps the machine.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser, report, timed  # noqa: E402

import transferkit  # noqa: E402
from transferkit.models.text import is_text_model  # noqa: E402

DATASETS = {"fashion-mnist": ("builtin:fashion-mnist", "efficientnet_lite0", 100, 0.87, 60.0),
            "bbc-news": ("builtin:bbc-news", "minilm-l6", 20, 0.95, None)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--budget-sizes", type=int, nargs="+", default=[],
                   help="with --budget, images: also the budget at each of these --image-size values")
    p.add_argument("--rows", nargs="+", default=["defaults", "two-stage", "budget"],
                   choices=["defaults", "two-stage", "budget"],
                   help="which rows to run [all]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-per-class", type=int, default=None,
                   help="test examples per class [all]: the budget excludes the test evaluation, the wall time not")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            data, model, per_class, target, seconds = DATASETS[name]
            if args.smoke:
                per_class = 2
            variants = {label: options for label, options in (("defaults", {}),
                                                               ("two-stage", {"strategy": "two-stage"}))
                        if label in args.rows}
            if args.budget and "budget" in args.rows:
                variants[f"budget {args.budget:g}s"] = {"budget": args.budget}
                for size in () if is_text_model(model) else args.budget_sizes:
                    variants[f"budget {args.budget:g}s at {size} px"] = {"budget": args.budget, "image_size": size}
            for label, options in variants.items():
                out = f"{tmp}/{name}-{label.replace(' ', '-')}"
                call = {"model": model, "per_class": per_class, "seed": args.seed, "out": out, "progress": False,
                        "test_per_class": args.test_per_class,
                        **({"epochs": 1, "test_per_class": 2} if args.smoke else {}), **options}
                wall, result = timed(lambda data=data, call=call: transferkit.train(data, **call))
                accuracy = (result.test or {}).get("accuracy")
                budget = result.model.info.get("budget") or {}
                rows.append({"dataset": name, "run": label, "strategy": result.model.info.get("strategy"),
                             "test_accuracy": accuracy, "seconds": wall, "epochs_run": len(result.history),
                             "best_epoch": result.best_epoch, "budget_stopped": budget.get("stopped_by_budget"),
                             "target": target, "target_seconds": seconds,
                             "met": accuracy is not None and accuracy >= target
                             and (seconds is None or wall <= seconds)})
    report("accuracy_per_second", rows, ["dataset", "run", "strategy", "test_accuracy", "seconds", "epochs_run",
                                         "best_epoch", "budget_stopped", "target", "target_seconds", "met"], args.out,
           notes="wall time of transferkit.train from its call (data, caches, training, test evaluation)")
    return rows


if __name__ == "__main__":
    main()

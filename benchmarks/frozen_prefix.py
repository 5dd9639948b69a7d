"""Frozen-prefix cache vs the uncached path, in the same run: progressive fine-tuning of the top groups.

    python benchmarks/frozen_prefix.py                     # Fashion-MNIST 100/class, EfficientNet-Lite0 at 128 px
    python benchmarks/frozen_prefix.py --max-unfrozen 4 --epochs 10

Both runs use the same data, model, seed and options (``--strategy progressive --max-unfrozen M --augment none``);
the only difference is ``--prefix-cache auto`` (the frozen first layers run once, the rest trains on their cached
outputs) against ``--prefix-cache off`` (they run on every step). Without augmentation both train the same model:
the table shows the validation accuracies and the largest weight difference next to the speed ratio.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser, report, timed  # noqa: E402

import transferkit  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--data", default="builtin:fashion-mnist")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default=None)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-unfrozen", type=int, nargs="+", default=[3])
    args = p.parse_args(argv)
    if args.smoke:
        args.per_class, args.image_size, args.epochs, args.max_unfrozen = 4, 32, 1, [2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for limit in args.max_unfrozen:
            common = dict(model=args.model, weights=args.weights, strategy="progressive", max_unfrozen=limit,
                          per_class=args.per_class, image_size=args.image_size, epochs=args.epochs, head_epochs=1,
                          augment="none", patience=0, evaluate_test=False, progress=False, overwrite=True,
                          cache_dir=f"{tmp}/cache-{limit}")
            plain_s, plain = timed(lambda common=common: transferkit.train(
                args.data, prefix_cache="off", out=f"{tmp}/plain", **common))
            cached_s, cached = timed(lambda common=common: transferkit.train(
                args.data, prefix_cache="auto", out=f"{tmp}/cached", **common))
            ours, theirs = cached.model.model.state_dict(), plain.model.model.state_dict()
            diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
            rows.append({"max_unfrozen": limit, "epochs": 1 + sum(r["phase"] != "head" for r in plain.history),
                         "uncached_s": plain_s, "cached_s": cached_s, "speedup": plain_s / cached_s,
                         "val_acc_uncached": plain.val_accuracy, "val_acc_cached": cached.val_accuracy,
                         "max_weight_diff": diff,
                         "cached_phases": sum(r["inputs"].startswith("cached activations") for r in cached.history)})
    report("frozen_prefix", rows, ["max_unfrozen", "epochs", "uncached_s", "cached_s", "speedup", "val_acc_uncached",
                                   "val_acc_cached", "max_weight_diff", "cached_phases"], args.out,
           notes=f"{args.data}, {args.per_class}/class, {args.model} @ {args.image_size} px, progressive, augment "
                 "none; "
                 "end-to-end wall time of transferkit.train (data, caches, training, validation), both in this run")
    return rows


if __name__ == "__main__":
    main()

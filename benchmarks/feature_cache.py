"""Cached vs uncached linear-probe, end to end, for several numbers of head epochs.

    python benchmarks/feature_cache.py                      # Fashion-MNIST 100/class, 128 px, E = 1, 5, 20
    python benchmarks/feature_cache.py --per-class 1000 --epochs 10

Both runs use the same data, model, seed and SGD head (``--head-fit sgd``, ``--augment none``) so the
only difference is whether the frozen backbone runs every epoch or once. The goal: at least 0.8 x E
faster for E >= 5.
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
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 20])
    args = p.parse_args(argv)
    if args.smoke:
        args.per_class, args.image_size, args.epochs = 2, 32, [1, 2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in args.epochs:
            common = dict(model=args.model, strategy="linear-probe", per_class=args.per_class,
                          image_size=args.image_size, epochs=epochs, augment="none", head_fit="sgd", patience=0,
                          evaluate_test=False, progress=False, overwrite=True)
            plain_s, plain = timed(lambda common=common: transferkit.train(
                args.data, feature_cache="off", decoded_cache="off", out=f"{tmp}/plain", **common))
            cached_s, cached = timed(lambda common=common, epochs=epochs: transferkit.train(
                args.data, out=f"{tmp}/cached", cache_dir=f"{tmp}/cache-{epochs}", **common))
            rows.append({"head_epochs": epochs, "uncached_s": plain_s, "cached_s": cached_s,
                         "speedup": plain_s / cached_s, "goal": 0.8 * epochs if epochs >= 5 else None,
                         "val_acc_uncached": plain.val_accuracy, "val_acc_cached": cached.val_accuracy})
    report("feature_cache", rows, ["head_epochs", "uncached_s", "cached_s", "speedup", "goal", "val_acc_uncached",
                                   "val_acc_cached"], args.out,
           notes=f"{args.data}, {args.per_class}/class, {args.model} @ {args.image_size} px; end-to-end wall time of "
                 "transferkit.train (data loading, caching, training, validation)")
    return rows


if __name__ == "__main__":
    main()

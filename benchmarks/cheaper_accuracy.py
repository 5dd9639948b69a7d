"""Cheaper accuracy (issue 16 part 4): train's defaults against each opt-in option alone, on the same seeds.

    python benchmarks/cheaper_accuracy.py                       # both datasets, 3 seeds each
    python benchmarks/cheaper_accuracy.py --seeds 5 --datasets fashion-mnist --ema-decay 0.995
    python benchmarks/cheaper_accuracy.py --datasets fashion-mnist --image-size 112 --runs /tmp/cheaper  # resumable

Variants: ``defaults``; ``ema`` (``--ema DECAY``); ``tta`` (``--tta flip``, image classification only: skipped for the
language model, where it is refused); ``single`` (``--schedule single``); ``lr-decay`` (``--lr-decay 0.5``: layer-wise
LR decay from the head's 1e-3 down, instead of 1e-4 for every pre-trained group); ``single progressive`` (``--strategy
progressive`` with ``--schedule single``, next to ``progressive`` with its per-phase restarts: the case the single
schedule is about, since two-stage's exact head fit leaves one phase on the schedule); ``epochs 20`` (the length
``advise`` printed for two-stage under 3,000 samples until issue 16: 2x the images' 10 epochs, 5x text's 4). Each row:
test accuracy mean [min, max] over the seeds, mean wall time of ``transferkit.train`` (data, caches, training, test
evaluation), and the ratios of both to the defaults (for the progressive pair: to ``progressive``) measured in the
same run. A default changes only if its row shows a gain beyond the seed spread (issue 16). Timings mean something
only on a quiet machine. With ``--runs DIR`` every finished run is kept there (``DIR/NAME-VARIANT-SEED``) and read
instead of trained again, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser, report, timed  # noqa: E402

import transferkit  # noqa: E402

DATASETS = {"fashion-mnist": ("builtin:fashion-mnist", "efficientnet_lite0", 100),
            "bbc-news": ("builtin:bbc-news", "minilm-l6", 20)}


def variants(ema_decay: float, text: bool) -> dict[str, tuple[dict, str]]:
    """label -> (train options, the label of the row it is compared with)."""
    rows = {"defaults": ({}, "defaults"), f"ema {ema_decay:g}": ({"ema": ema_decay}, "defaults")}
    if not text:
        rows["tta flip"] = ({"tta": "flip"}, "defaults")
    rows["schedule single"] = ({"schedule": "single"}, "defaults")
    rows["lr-decay 0.5"] = ({"lr_decay": 0.5}, "defaults")
    rows["progressive"] = ({"strategy": "progressive"}, "progressive")
    rows["progressive single"] = ({"strategy": "progressive", "schedule": "single"}, "progressive")
    rows["epochs 20"] = ({"epochs": 20}, "defaults")  # what advise printed for two-stage under 3,000 samples
    return rows


def run_once(data: str, call: dict, folder: Path) -> tuple[float, float]:
    """Test accuracy and wall seconds of ``transferkit.train(data, **call)`` into ``folder``; a finished run there
    (its ``benchmark.json``) is read instead of trained again."""
    saved = folder / "benchmark.json"
    if saved.is_file():
        found = json.loads(saved.read_text(encoding="utf-8"))
        if found["call"] == call:
            return found["accuracy"], found["seconds"]
    wall, result = timed(lambda: transferkit.train(data, out=str(folder / "run"), overwrite=True, **call))
    accuracy = (result.test or {}).get("accuracy", float("nan"))
    saved.write_text(json.dumps({"call": call, "accuracy": accuracy, "seconds": wall}, indent=2), encoding="utf-8")
    return accuracy, wall


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (0..N-1)")
    p.add_argument("--ema-decay", type=float, default=0.99, help="the --ema value of the ema row")
    p.add_argument("--image-size", type=int, default=None, help="images: --image-size for every row [default: the "
                                                                 "weights']")
    p.add_argument("--max-length", type=int, default=None, help="text: --max-length for every row [default: the "
                                                                 "model's]")
    p.add_argument("--runs", type=Path, default=None, help="keep finished runs here and reuse them (resumable) "
                                                             "[default: a temporary folder]")
    p.add_argument("--variants", nargs="+", default=None, help="only these rows (labels as printed, e.g. 'defaults' "
                                                               "'lr-decay 0.5') [all]")
    args = p.parse_args(argv)
    known = variants(args.ema_decay, text=False)
    if unknown := [v for v in args.variants or () if v not in known]:
        p.error(f"unknown variant(s) {unknown}; the rows are {list(known)}")
    seeds = 1 if args.smoke else args.seeds
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        for name in args.datasets:
            data, model, per_class = DATASETS[name]
            text = model == "minilm-l6"
            smoke = {"per_class": 2, "epochs": 1, "head_epochs": 1, "test_per_class": 2,
                     **({} if text else {"image_size": 32})} if args.smoke else {}
            size = ({"max_length": args.max_length} if text and args.max_length else
                    {"image_size": args.image_size} if args.image_size and not text else {})
            measured: dict[str, dict] = {}
            rows_here = variants(args.ema_decay, text)
            wanted = set(args.variants or rows_here) | {rows_here[v][1] for v in args.variants or () if v in rows_here}
            for label, (options, baseline) in rows_here.items():
                if label not in wanted:
                    continue
                accuracies, seconds = [], []
                for seed in range(seeds):
                    call = {"model": model, "per_class": per_class, "seed": seed, "progress": False,
                            **size, **options, **smoke,
                            **({"max_unfrozen": 3} if args.smoke and "strategy" in options else {})}
                    accuracy, wall = run_once(data, call, runs / f"{name}-{label.replace(' ', '-')}-{seed}")
                    accuracies.append(accuracy)
                    seconds.append(wall)
                row = {"dataset": name, "variant": label, "seeds": seeds,
                       "test_accuracy": statistics.fmean(accuracies), "acc_min": min(accuracies),
                       "acc_max": max(accuracies), "seconds": statistics.fmean(seconds), "vs": baseline}
                base = measured.get(baseline, row)
                row["acc_ratio"] = row["test_accuracy"] / base["test_accuracy"] if base["test_accuracy"] else None
                row["time_ratio"] = row["seconds"] / base["seconds"]
                measured[label] = row
                rows.append(row)
    report("cheaper_accuracy", rows, ["dataset", "variant", "seeds", "test_accuracy", "acc_min", "acc_max", "seconds",
                                      "vs", "acc_ratio", "time_ratio"], args.out,
           notes="test accuracy: mean [min, max] over the seeds; seconds: mean wall time of transferkit.train from its "
                 "call; ratios against the 'vs' row of the same run")
    return rows


if __name__ == "__main__":
    main()

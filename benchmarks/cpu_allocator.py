"""``--cpu-allocator auto`` (glibc malloc keeps freed memory) against malloc as it is, on this machine, in one run.

    python benchmarks/cpu_allocator.py                        # EfficientNet-Lite0, ResNet-18, ResNet-50 @ 224 px
    python benchmarks/cpu_allocator.py --models timm:resnet18 --batch-size 64 --no-train
    python benchmarks/cpu_allocator.py --models --no-train --predict-runs runs/pets runs/news   # loaded runs only

The allocator settings are process-wide and cannot be undone, so each (model, setting) is measured in a fresh Python
process: the same module (random weights), the same batch and layout as ``train`` uses on the CPU (channels_last
where ``--channels-last auto`` picks it), inference images/s (the feature and prefix caches, evaluation, predict)
and training-step images/s (forward, cross-entropy, backward, AdamW), best of ``--repeats`` timings after a warm-up,
and the peak resident memory. Prints the ratios (allocator on / off) and the kernel (system) CPU seconds of each
process, where the page faults of malloc as it is show up. Then whole ``transferkit train`` runs (Fashion-MNIST,
30 images per class, 3 epochs: the feature cache, the head fit, fine-tuning, the test), off and on alternating
``--train-repeats`` times, each in its own process: the ratio of the median wall times, and whether the test
accuracy is the same (it was in these short runs; longer ones can drift by float rounding, since kernels may take
other code paths at other memory alignments). ``--predict-runs`` adds finished runs as ``predict`` / ``evaluate`` /
``serve`` use them: ``transferkit.load`` (which applies the run's recorded setting) and ``predict`` on
``--predict-n`` inputs (256-px noise JPEGs for an image run, ~400-word texts for a text run), each load in a fresh
process, the run as saved against a copy whose ``transferkit.json`` says ``off``, alternating ``--repeats`` times:
the ratio of the medians of each process's best of 3 predict calls.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser, report  # noqa: E402

SMOKE = {"models": ["timm:test_resnet"], "image_size": 32, "batch_size": 4, "repeats": 1, "train_per_class": 2,
         "train_epochs": 1, "train_repeats": 1}


def measure(name: str, setting: str, image_size: int, batch_size: int, repeats: int) -> dict:
    """In this process: apply ``setting``, then time one model (see the module's docstring)."""
    from transferkit.allocator import keep_freed_memory

    applied = keep_freed_memory(setting)
    import torch
    from channels_last import rates

    from transferkit.models import load_model
    from transferkit.models.layout import prefers_channels_last

    torch.manual_seed(0)
    model = load_model(name, 10, pretrained=False)
    images = torch.randn(batch_size, 3, image_size, image_size)
    if prefers_channels_last(model, on_gpu=False):
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    inference, training = rates(model, images, labels, repeats)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "infer_img_s": inference, "train_img_s": training,
            "peak_rss_mb": usage.ru_maxrss / 1024, "system_s": usage.ru_stime}


def _child(argv: list[str], what: str) -> dict:
    """This script run with ``argv`` in a fresh process; the JSON its last line prints."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the measuring process failed ({what}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _in_fresh_process(name: str, setting: str, args) -> dict:
    return _child(["--child", name, setting, "--image-size", str(args.image_size), "--batch-size",
                   str(args.batch_size), "--repeats", str(args.repeats)], f"{name}, {setting}")


def train_run(setting: str, args, out: Path) -> dict:
    """``transferkit train`` end to end in a fresh process with ``--cpu-allocator setting``: its wall time (from
    transferkit.json), test accuracy, and that process's kernel CPU seconds and peak resident memory."""
    usage = _child(["--child-train", "--data", args.train_data, "--model", args.train_model, "--per-class",
                    str(args.train_per_class), "--test-per-class", str(args.train_per_class), "--epochs",
                    str(args.train_epochs), "--cpu-allocator", setting, "--out", str(out), "--quiet", "--overwrite"],
                   f"transferkit train, {setting}")
    info = json.loads((out / "transferkit.json").read_text())
    return {"seconds": info["metrics"]["seconds"], "test_accuracy": info["metrics"]["test"]["accuracy"], **usage}


def _train_here(argv: list[str]) -> None:
    """The measured process of :func:`train_run`: the train command, then its own resource use as JSON."""
    from transferkit.cli import main as cli

    try:
        cli(["train", *argv])
    except SystemExit as done:
        if done.code:
            raise
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"system_s": usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))


def _predict_here(run: str, inputs: str) -> None:
    """The measured process of :func:`predict_run`: load the run (its allocator setting applies), predict."""
    import time

    import transferkit
    from transferkit import allocator

    model = transferkit.load(run)
    items = json.loads(Path(inputs).read_text())
    model.predict(items[:4])  # warm-up
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        model.predict(items)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"applied": bool(allocator._applied), "seconds": min(seconds)}))


def predict_run(run: Path, args, work: Path) -> dict:
    """A finished run loaded as saved (its setting) and as a copy set to ``off``, each in fresh processes."""
    import shutil

    import numpy as np
    from PIL import Image

    info = json.loads((run / "transferkit.json").read_text())
    off = work / f"{run.name}-off"
    shutil.copytree(run, off, ignore=shutil.ignore_patterns("checkpoint", "feature-cache"))
    (off / "transferkit.json").write_text(json.dumps({**info, "cpu_allocator": {"setting": "off"}}))
    rng = np.random.default_rng(0)
    if info.get("modality") == "text":
        words = "the council said on tuesday that the new plan would raise spending on schools and roads".split()
        items = [" ".join(rng.choice(words, 400)) for _ in range(args.predict_n)]
    else:
        items = []
        for i in range(args.predict_n):
            path = work / f"input-{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
            items.append(str(path))
    inputs = work / f"{run.name}-inputs.json"
    inputs.write_text(json.dumps(items))
    times: dict[str, list[float]] = {"off": [], "run's": []}
    applied = None
    for _ in range(args.repeats):  # alternating
        for setting, folder in (("off", off), ("run's", run)):
            done = _child(["--child-predict", str(folder), str(inputs)], f"predict {folder.name}")
            times[setting].append(done["seconds"])
            applied = done["applied"] if setting == "run's" else applied
    off_s, on_s = statistics.median(times["off"]), statistics.median(times["run's"])
    return {"model": f"predict {run.name} ({info.get('cpu_allocator', {}).get('setting', 'auto')}), "
                     f"{args.predict_n} inputs", "applied": applied, "off_run_s": off_s, "on_run_s": on_s,
            "predict_speedup": off_s / on_s}


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--models", nargs="*", default=["efficientnet_lite0", "timm:resnet18", "timm:resnet50"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-data", default="builtin:fashion-mnist",
                   help="also time `transferkit train` end to end on this data, off then on [builtin:fashion-mnist]")
    p.add_argument("--train-model", default="efficientnet_lite0")
    p.add_argument("--train-per-class", type=int, default=30, help="training and test images per class [30]")
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--train-repeats", type=int, default=3, help="runs per setting, alternating; medians [3]")
    p.add_argument("--no-train", action="store_true", help="skip the end-to-end training runs")
    p.add_argument("--predict-runs", nargs="*", type=Path, default=[],
                   help="finished runs: time load + predict with the run's setting against off")
    p.add_argument("--predict-n", type=int, default=64, help="inputs per predict call [64]")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-train"]:
        return _train_here(argv[1:])
    if argv[:1] == ["--child-predict"]:
        return _predict_here(*argv[1:3])
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(*args.child, args.image_size, args.batch_size, args.repeats)))
        return []
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    rows = []
    for name in args.models:
        off, on = (_in_fresh_process(name, setting, args) for setting in ("off", "auto"))
        rows.append({"model": name, "image_size": args.image_size, "batch": args.batch_size,
                     "applied": on["applied"],
                     "off_infer_img_s": off["infer_img_s"], "on_infer_img_s": on["infer_img_s"],
                     "infer_speedup": on["infer_img_s"] / off["infer_img_s"],
                     "off_train_img_s": off["train_img_s"], "on_train_img_s": on["train_img_s"],
                     "train_speedup": on["train_img_s"] / off["train_img_s"],
                     "off_system_s": off["system_s"], "on_system_s": on["system_s"],
                     "off_peak_rss_mb": off["peak_rss_mb"], "on_peak_rss_mb": on["peak_rss_mb"],
                     "rss_ratio": on["peak_rss_mb"] / off["peak_rss_mb"]})
    if not args.no_train:
        runs = {"off": [], "auto": []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.train_repeats):  # alternating, so a busy spell of the machine hits both
                for setting, done in runs.items():
                    done.append(train_run(setting, args, Path(tmp) / setting))
        off, on = ({key: statistics.median(r[key] for r in done) for key in done[0]} for done in runs.values())
        rows.append({"model": f"train {args.train_model} {args.train_data} {args.train_per_class}/class "
                              f"{args.train_epochs} epochs", "run_speedup": off["seconds"] / on["seconds"],
                     "off_run_s": off["seconds"], "on_run_s": on["seconds"],
                     "same_test_accuracy": len({r["test_accuracy"] for done in runs.values() for r in done}) == 1,
                     "off_system_s": off["system_s"], "on_system_s": on["system_s"],
                     "off_peak_rss_mb": off["peak_rss_mb"], "on_peak_rss_mb": on["peak_rss_mb"],
                     "rss_ratio": on["peak_rss_mb"] / off["peak_rss_mb"]})
    with tempfile.TemporaryDirectory() as tmp:
        rows += [predict_run(run, args, Path(tmp)) for run in args.predict_runs]
    report("cpu_allocator", rows, ["model", "image_size", "batch", "applied", "off_infer_img_s", "on_infer_img_s",
                                   "infer_speedup", "off_train_img_s", "on_train_img_s", "train_speedup",
                                   "off_run_s", "on_run_s", "run_speedup", "predict_speedup", "same_test_accuracy",
                                   "off_system_s", "on_system_s", "rss_ratio"], args.out,
           notes="off: malloc as it is; on: --cpu-allocator auto (applied: whether glibc took the settings); "
                 "speedup = on / off images/s, best of each process's repeats; run_speedup = off / on wall time "
                 "of the whole training run (transferkit.json's seconds; medians of the alternating repeats); "
                 "predict_speedup = off / the run's setting, seconds of predict on a loaded run (medians); "
                 "system_s: kernel CPU seconds of the measuring process; rss_ratio = on / off peak resident memory")
    return rows


if __name__ == "__main__":
    main()

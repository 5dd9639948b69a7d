"""Check `advise` against `compare` and against the defaults.

Ranking mode: for every training-set size of one or more compare reports, what advise recommends at that size
(`advise --per-class N`) and how that strategy ranked in compare there.

    python benchmarks/advise_vs_compare.py --reports reports/fmnist reports/digits reports/bbc

Measurements are cached in the results JSON (``measurements``), so after changing the rules in
``transferkit.experiments.advise.recommend`` a rerun re-applies them in seconds (``--remeasure`` to measure
again). "full" rows give the advice for the whole dataset next to compare's largest size.

Run mode (``--run``): the advice as a user takes it. For each built-in dataset and size, ``transferkit advise --json``
is asked for its command, and that exact command line is run (only ``--seed``, ``--test-per-class``, ``--out`` and
``--quiet`` are appended: they choose the seed, the test sample and the folder, not the recipe), next to ``transferkit
train --strategy two-stage`` (the fixed recipe that was the default before ``--strategy auto``, which runs the advice
itself, became it; "the defaults" below) on the same seeds; both are timed from the command's start (process, data,
model, caches, training, test). With ``--reports`` the best compare cell at that size is shown too. The advice *holds*
when its mean test accuracy is not below the defaults' beyond the two seed spreads (half the range of each one's
seeds). When the advised line resolves to the defaults' own configuration (``--strategy two-stage --lr 1e-4 --augment
light`` on images is what ``train --strategy two-stage`` does without other options), it is one command: it runs once
and fills both columns (``same_recipe``).

    python benchmarks/advise_vs_compare.py --run --per-class 10,100 --seeds 2 --runs /tmp/avc \
        --reports benchmarks/results/compare/*/

Finished runs are kept in ``--runs`` and reused, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import typer  # noqa: E402
from common import RESULTS, parser, report  # noqa: E402

from transferkit import cli  # noqa: E402
from transferkit.experiments.advise import Measurements, measure, recommend  # noqa: E402
from transferkit.experiments.grid import CellResult, ranking  # noqa: E402
from transferkit.models.text import is_text_model  # noqa: E402
from transferkit.options import TrainConfig  # noqa: E402
from transferkit.strategies import DEFAULT_HEAD_LR, DEFAULT_LR, default_lr  # noqa: E402


def check(report_dir: Path, cache: dict, remeasure: bool = False, measurer=measure) -> list[dict]:
    saved = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    data, model = saved["data"], saved["model"]
    results = [CellResult(**row) for row in saved["cells"]]
    transfer_sizes = sorted({r.per_class for r in results if r.strategy != "scratch"})
    rows = []
    for n in [*transfer_sizes, None]:
        key = f"{data}|{model}|{n or 'full'}"
        if remeasure or key not in cache:
            cache[key] = asdict(measurer(data, model, per_class=n))
        advice = recommend(Measurements(**cache[key]))
        compared_at = n or transfer_sizes[-1]
        ranked = ranking(results, compared_at)
        names = [row.strategy for row in ranked]
        rank = names.index(advice.strategy) + 1 if advice.strategy in names else None
        best = ranked[0]
        chosen = ranked[rank - 1] if rank else None
        gap = best.accuracy - chosen.accuracy if chosen else None
        rows.append({"data": data, "per_class": n or "full", "compare_at": compared_at,
                     "probe": cache[key]["probe_accuracy"], "domain": cache[key]["domain_distance"],
                     "samples": cache[key]["samples"], "advised": advice.strategy, "rank": rank,
                     "of": len(ranked), "advised_acc": chosen.accuracy if chosen else None, "best": best.strategy,
                     "best_acc": best.accuracy, "gap": gap,
                     "within_spread": gap is not None and gap <= best.spread + chosen.spread,
                     "advised_s": chosen.seconds if chosen else None, "best_s": best.seconds,
                     "ranking": " > ".join(f"{row.strategy} {row.accuracy:.3f}" for row in ranked)})
    return rows


# --- run mode: the printed command against the defaults ------------------------------------------------------------

DATASETS = {"builtin:fashion-mnist": "efficientnet_lite0", "builtin:digits": "efficientnet_lite0",
            "builtin:lfw-faces": "efficientnet_lite0", "builtin:fashion-mnist-m": "efficientnet_lite0",
            "builtin:font-digits": "efficientnet_lite0", "builtin:bbc-news": "minilm-l6"}
"""Every built-in classification dataset, with the model the README uses for it."""

RUN_COLUMNS = ["data", "per_class", "seeds", "advised", "advised_acc", "advised_spread", "advised_s", "default_acc",
               "default_spread", "default_s", "diff", "speedup", "holds", "same_recipe", "best_cell", "command"]

Runner = Callable[[list[str], Path], float]


def transferkit_argv(command: str) -> list[str]:
    """A printed ``transferkit ...`` command line as the argv that runs it with this Python."""
    argv = shlex.split(command)
    if not argv or argv[0] != "transferkit":
        raise ValueError(f"not a transferkit command: {command!r}")
    return [sys.executable, "-m", "transferkit", *argv[1:]]


def run_process(argv: list[str], log: Path) -> float:
    """Run ``argv`` to completion (its output to ``log``); the wall seconds from its start."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"{shlex.join(argv)} exited with {done.returncode}:\n{tail}")
    return time.perf_counter() - start


def advised_command(data: str, model: str, per_class: int | None, folder: Path, runner: Runner) -> dict:
    """``transferkit advise --json`` for one dataset and size (cached in ``folder/advice.json``)."""
    saved = folder / "advice.json"
    if not saved.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        argv = transferkit_argv(f"transferkit advise --data {data} --model {model}"
                                + (f" --per-class {per_class}" if per_class else "") + " --json")
        log = folder / "advise.log"
        runner(argv, log)
        advice = json.loads(log.read_text(encoding="utf-8").strip().splitlines()[-1])
        saved.write_text(json.dumps(advice, indent=2))
    return json.loads(saved.read_text())


def recipe(command: str) -> dict:
    """The configuration a printed ``transferkit train`` line resolves to, parsed by the command line itself, with the
    LRs it leaves to their defaults filled in (so ``--lr 1e-4`` on images and no ``--lr`` compare equal)."""
    train = typer.main.get_command(cli.app).commands["train"]
    given = cli._given(train.make_context("train", shlex.split(command)[2:]).params, TrainConfig)
    config = asdict(TrainConfig(**given).validate())
    config["lr"] = config["lr"] or default_lr(config["strategy"], is_text_model(config["model"])) or DEFAULT_LR
    config["head_lr"] = config["head_lr"] or DEFAULT_HEAD_LR
    return config


def run_once(command: str, folder: Path, seed: int, test_per_class: int | None, runner: Runner) -> dict:
    """Run one train command line as printed, plus the seed, test sample and output folder; its test accuracy and
    wall seconds. A folder with a finished run is read, not run again."""
    result = folder / "benchmark.json"
    if result.is_file():
        return json.loads(result.read_text())
    argv = [*transferkit_argv(command), "--seed", str(seed), "--out", str(folder / "run"), "--overwrite", "--quiet"]
    if test_per_class:
        argv += ["--test-per-class", str(test_per_class)]
    folder.mkdir(parents=True, exist_ok=True)
    seconds = runner(argv, folder / "train.log")
    info = json.loads((folder / "run" / "transferkit.json").read_text())
    row = {"command": shlex.join(argv), "seconds": seconds, "accuracy": info["metrics"]["test"]["accuracy"],
           "strategy": info["strategy"]}
    result.write_text(json.dumps(row, indent=2))
    return row


def best_cell(reports: list[dict], data: str, per_class: int | None) -> str | None:
    """The compare report's best strategy at this size, as "strategy accuracy"."""
    for saved in reports:
        if saved["data"] != data:
            continue
        results = [CellResult(**row) for row in saved["cells"]]
        sizes = sorted({r.per_class for r in results})
        size = per_class if per_class in sizes else (sizes[-1] if per_class is None and sizes else None)
        if size is not None:
            top = ranking(results, size)[0]
            return f"{top.strategy} {top.accuracy:.3f} ± {top.spread:.3f} ({saved.get('options')})"
    return None


def check_commands(data: str, per_class: int | None, seeds: int, runs: Path, test_per_class: int | None,
                   reports: list[dict], runner: Runner = run_process) -> dict:
    """The advised command and the defaults on ``seeds`` seeds, side by side."""
    model = DATASETS.get(data, "efficientnet_lite0")
    folder = runs / data.replace(":", "-") / f"n{per_class or 'full'}"
    advice = advised_command(data, model, per_class, folder, runner)
    defaults = f"transferkit train --data {data} --model {model} --strategy two-stage" + (
        f" --per-class {per_class}" if per_class else "")
    # advice that resolves to the defaults' own configuration is one command: it runs once and fills both columns
    same = recipe(advice["command"]) == recipe(defaults)
    advised = [run_once(advice["command"], folder / f"advised-s{s}", s, test_per_class, runner) for s in range(seeds)]
    default = advised if same else [run_once(defaults, folder / f"defaults-s{s}", s, test_per_class, runner)
                                    for s in range(seeds)]
    (a_acc, a_spread, a_s), (d_acc, d_spread, d_s) = _summary(advised), _summary(default)
    return {"data": data, "per_class": per_class or "full", "seeds": seeds, "advised": advice["strategy"],
            "advised_acc": a_acc, "advised_spread": a_spread, "advised_s": a_s, "default_acc": d_acc,
            "default_spread": d_spread, "default_s": d_s, "diff": a_acc - d_acc, "speedup": d_s / a_s,
            "holds": a_acc >= d_acc - (a_spread + d_spread), "best_cell": best_cell(reports, data, per_class),
            "same_recipe": same, "command": advice["command"], "reasons": advice["reasons"]}


def _summary(runs: list[dict]) -> tuple[float, float, float]:
    accs = [r["accuracy"] for r in runs]
    return sum(accs) / len(accs), (max(accs) - min(accs)) / 2, sum(r["seconds"] for r in runs) / len(runs)


def run_mode(args) -> list[dict]:
    sizes = [None if s == "full" else int(s) for s in args.per_class.split(",")]
    reports = [json.loads((folder / "results.json").read_text(encoding="utf-8")) for folder in args.reports]
    rows = [check_commands(data, n, args.seeds, args.runs, args.test_per_class, reports)
            for data in args.data for n in sizes]
    held = sum(row["holds"] for row in rows)
    report("advise_commands", rows, RUN_COLUMNS, args.out or RESULTS / "advise_commands.json",
           notes=f"the advised command held (not below the defaults beyond the seed spreads) in {held} of "
                 f"{len(rows)} cases; speedup = defaults' seconds / the advised command's")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--reports", nargs="+", type=Path, default=[], help="compare report folders (results.json)")
    p.add_argument("--remeasure", action="store_true", help="measure again instead of using cached measurements")
    p.add_argument("--run", action="store_true", help="run the exact command advise prints against the defaults")
    p.add_argument("--data", nargs="+", default=list(DATASETS), help="run mode: datasets [all built-in ones]")
    p.add_argument("--per-class", default="10,100", help="run mode: comma-separated sizes (or 'full') [10,100]")
    p.add_argument("--seeds", type=int, default=2, help="run mode: seeds per command [2]")
    p.add_argument("--test-per-class", type=int, default=200, help="run mode: test examples per class [200]")
    p.add_argument("--runs", type=Path, default=Path("runs/advise-commands"),
                   help="run mode: folder for the runs (finished ones are reused) [runs/advise-commands]")
    args = p.parse_args(argv)
    if args.run:
        return run_mode(args)
    out = args.out or RESULTS / "advise_vs_compare.json"
    cache = json.loads(out.read_text())["measurements"] if out.is_file() and not args.remeasure else {}
    measurer = measure
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.reports = [_smoke_report(Path(tmp))]
            measurer = _smoke_measure
        rows = [row for folder in args.reports for row in check(folder, cache, args.remeasure, measurer)]
        report("advise_vs_compare", rows, ["data", "per_class", "samples", "probe", "domain", "advised", "rank", "of",
                                           "gap", "within_spread", "advised_s", "best_s", "ranking"], out)
    saved = json.loads(out.read_text())
    saved["measurements"] = cache
    out.write_text(json.dumps(saved, indent=2))
    return rows


def _smoke_report(folder: Path) -> Path:
    cells = [CellResult(s, n, seed, acc + 0.01 * seed, acc, 1.0, [{"epoch": 1, "seconds": 1.0, "val_accuracy": acc}])
             for s, n, acc in [("scratch", 10, 0.3), ("linear-probe", 10, 0.8), ("two-stage", 10, 0.7),
                               ("scratch", 100, 0.6), ("linear-probe", 100, 0.85), ("two-stage", 100, 0.9)]
             for seed in (0, 1)]
    (folder / "results.json").write_text(json.dumps({"cells": [asdict(c) for c in cells], "data": "smoke",
                                                     "model": "m"}))
    return folder


def _smoke_measure(data: str, model: str, per_class: int | None = None) -> Measurements:
    n = per_class or 300
    return Measurements("image", 12 * n, 10, n, n, 28, 224, 0.8, 0.7, 1.0, "feature statistics")


if __name__ == "__main__":
    main()

"""Issue 14's measurements: Fashion-MNIST -> Fashion-MNIST-M (and font digits -> handwritten digits) with
EfficientNet-Lite0 on the CPU.

Target test accuracy of source-only two-stage, DANN and CDAN+E (with the frozen-feature linear probe and a
target-labelled oracle for scale), over seeds; and, for a two-stage Fashion-MNIST run, retention and accuracy over
the WiSE-FT alpha sweep beside plain fine-tune and L2-SP. Every run is an ordinary CLI command (printed), results
are appended to ``--out`` as they finish, and finished runs are skipped when the script is started again.

Every run trains the same fixed schedule and keeps its final weights (``--keep last``): selected on the source
validation split, a short two-stage run often ends with its head-only stage, and every method would then score the
same on the target (the DANN papers report the final model too). Target labels are never read for training or
selection; the oracle trains on them.

    python benchmarks/shift_fmnist.py                          # Fashion-MNIST -> Fashion-MNIST-M
    python benchmarks/shift_fmnist.py --pair font-digits       # builtin:font-digits -> builtin:digits
    python benchmarks/shift_fmnist.py --pair sequence          # task A (digits) then task B (Fashion-MNIST)
    python benchmarks/shift_fmnist.py --table                  # the README's tables from the JSON, no training
    python benchmarks/shift_fmnist.py --dry-run                # the commands that would run, nothing trained
    python benchmarks/shift_fmnist.py --workers 2              # independent runs side by side (1 thread each)

The task-sequence protocol (``--pair sequence``): a two-stage run on task A (``builtin:digits``), then task B
(``builtin:fashion-mnist``) trained from its weights (``--weights A/model.safetensors``) by plain fine-tune,
fine-tune + L2-SP, two-stage, and WiSE-FT of the two-stage run (alpha chosen on B's validation split); for each,
A's test accuracy with B's backbone under A's own head (``transferkit forgetting B --previous A``): the backward
transfer (negative: forgotten). The WiSE-FT row interpolates between θ₀ = A's backbone (the run's ``--weights``)
with B's linear-probe head and θ₁ = B's two-stage run: ``transferkit interpolate`` starts from the weights the run
started from, so alpha = 0 is "A's features, B's probe" and the drop measures what the fine-tuned part forgot.

Resuming: a JSON written before keeps its recorded ``settings`` (older results used 3 epochs without ``--keep
last``), so the missing runs are trained exactly like the finished ones; a (method, seed) in the JSON is skipped,
and so is a train command whose run folder is complete. ``--per-class``, ``--test-per-class``, ``--epochs`` and
``--image-size`` set the settings of a new JSON and are checked against what the datasets hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

COMMON = ["--model", "efficientnet_lite0", "--image-size", "64", "--per-class", "50", "--epochs", "5",
          "--head-epochs", "1", "--batch-size", "32", "--patience", "0", "--keep", "last", "--workers", "0", "-q"]
PAIRS = {  # name -> (source, target, test images per class: builtin:digits' test split has 52-55 per class)
    "fashion-mnist": ("builtin:fashion-mnist", "builtin:fashion-mnist-m", 100),
    "font-digits": ("builtin:font-digits", "builtin:digits", 50),
    "sequence": ("builtin:digits", "builtin:fashion-mnist", 50),  # task A, task B
}
COUNTS = {  # smallest class of the pool and of the test split (builtin:digits: a fixed stratified 30% test split)
    "builtin:fashion-mnist": (6000, 1000), "builtin:fashion-mnist-m": (6000, 1000),
    "builtin:font-digits": (500, 100), "builtin:digits": (122, 52),
}
SEQUENCE = {  # task B's methods, each from task A's weights
    "fine-tune": ["--strategy", "fine-tune"],
    "fine-tune + L2-SP 0.01": ["--strategy", "fine-tune", "--l2-sp", "0.01"],
    "two-stage": ["--strategy", "two-stage"],
}
TASK_A, WISE_B = "task A two-stage", "WiSE-FT of two-stage"
SOURCE, TARGET = PAIRS["fashion-mnist"][:2]


def methods(source: str, target: str) -> dict[str, list[str]]:
    """Method name -> train flags (besides the common ones, --seed and --out); cheapest informative order first."""
    return {
        "source-only two-stage": ["--data", source, "--target-data", target, "--strategy", "two-stage"],
        "DANN two-stage": ["--data", source, "--target-data", target, "--adapt", "dann", "--strategy", "two-stage"],
        "linear probe (frozen features)": ["--data", source, "--target-data", target, "--strategy", "linear-probe"],
        "CDAN+E two-stage": ["--data", source, "--target-data", target, "--adapt", "cdan", "--strategy", "two-stage"],
        "oracle (target labels) two-stage": ["--data", target, "--strategy", "two-stage"],
    }


METHODS = methods(SOURCE, TARGET)
FORGETTING = {  # Fashion-MNIST runs whose retention is compared with the WiSE-FT sweep (seed 0)
    "fine-tune": ["--data", SOURCE, "--strategy", "fine-tune"],
    "fine-tune + L2-SP 0.01": ["--data", SOURCE, "--strategy", "fine-tune", "--l2-sp", "0.01"],
}


@dataclass
class Job:
    """One result of the JSON: CLI commands run in order, then ``record(outputs, seconds)`` stores the row."""

    key: tuple[str, str, int]  # (section, method, seed)
    commands: list[list[str]]
    record: Callable[[list[str], float], None]
    needs: tuple[str, str, int] | None = None  # a job whose run folder this one reads


def folder(runs: Path, name: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return runs / f"{slug}-s{seed}"


def value(settings: list[str], flag: str) -> str | None:
    return settings[settings.index(flag) + 1] if flag in settings else None


def train_command(settings: list[str], test_per_class: int, flags: list[str], seed: int, out: Path) -> list[str]:
    extra = [] if "--test-per-class" in settings else ["--test-per-class", str(test_per_class)]
    return ["train", *flags, *settings, *extra, "--seed", str(seed), "--out", str(out), "--overwrite"]


def train_row(out: Path, flags: list[str], target: str) -> dict:
    info = json.loads((out / "transferkit.json").read_text())
    adaptation = info.get("adaptation") or {}
    on_target = flags[1] == target  # the oracle: its own test split is the target's
    scored = adaptation.get("target_test") or (info["metrics"]["test"] if on_target else None)
    return {"run": str(out), "source_test_accuracy": None if on_target else info["metrics"]["test"]["accuracy"],
            "target_test_accuracy": scored["accuracy"] if scored else None,
            "seconds": info["metrics"]["seconds"], "selected_on": adaptation.get("selected_on"),
            "domain_accuracy_per_epoch": [h.get("train_domain_accuracy") for h in _history(out)]}


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _rows(results: dict, section: str, name: str) -> list[dict]:
    return results.setdefault(section, {}).setdefault(name, [])


def _add(results: dict, section: str, name: str, row: dict) -> None:
    rows = _rows(results, section, name)
    rows.append(row)
    rows.sort(key=lambda r: r["seed"])


def done(results: dict, key: tuple[str, str, int]) -> bool:
    section, name, seed = key
    entry = results.get(section, {}).get(name)
    if section == "wise_ft":
        return entry is not None
    return any(r["seed"] == seed for r in entry or [])


def plan(results: dict, pair: str, settings: list[str], runs: Path, seeds: int) -> list[Job]:
    """Every job of the pair, in the order a single worker runs them (seed 0 of every method first)."""
    source, target, test_per_class = PAIRS[pair]

    def trained(section: str, name: str, flags: list[str], seed: int, out_name: str | None = None,
                extra: Callable[[dict, list[str]], None] | None = None, needs=None) -> Job:
        out = folder(runs, out_name or name, seed)

        def record(outputs: list[str], seconds: float) -> None:
            row = {**train_row(out, flags, target), "seed": seed}
            if extra:
                extra(row, outputs)
            if section == "wise_ft":
                results[section][name] = row
            else:
                _add(results, section, name, row)

        commands = [train_command(settings, test_per_class, flags, seed, out)]
        if extra:
            commands.append(["forgetting", str(out), *(["--previous", str(folder(runs, TASK_A, seed))]
                                                       if section == "sequence" else []), "--json"])
        return Job((section, name, seed), commands, record, needs)

    if pair == "sequence":
        return _sequence_jobs(results, settings, runs, seeds, trained)
    jobs = [trained("adaptation", name, flags, seed) for seed in range(seeds)
            for name, flags in methods(source, target).items()]
    if pair == "fashion-mnist":  # WiSE-FT of the seed-0 two-stage run, beside plain fine-tune and L2-SP
        key = ("adaptation", "source-only two-stage", 0)
        first = [r for r in results.get("adaptation", {}).get(key[1], []) if r["seed"] == 0]
        source_run = first[0]["run"] if first else str(folder(runs, key[1], 0))  # an older JSON: source-only-1706-s0

        def sweep(outputs: list[str], seconds: float) -> None:
            record = json.loads(outputs[0])
            results["wise_ft"]["sweep"] = {"run": source_run, "alpha": record["alpha"], "points": record["sweep"]}
            results["wise_ft"]["two-stage"] = {"run": source_run, "retention": json.loads(outputs[1])}

        wise = Job(("wise_ft", "sweep", 0), [
            ["interpolate", source_run, "--alphas", "0:1:0.25", "--out", str(runs / "wise-ft-s0"), "--overwrite",
             "--json"], ["forgetting", source_run, "--json"]], sweep, key)
        retention = [trained("wise_ft", name, flags, 0, extra=lambda row, out: row.update(retention=json.loads(out[1])))
                     for name, flags in FORGETTING.items()]
        count = len(methods(source, target))
        jobs = jobs[:count] + [wise, *retention] + jobs[count:]
    return jobs


def _sequence_jobs(results: dict, settings: list[str], runs: Path, seeds: int, trained: Callable) -> list[Job]:
    task_a, task_b, _ = PAIRS["sequence"]
    jobs = []

    def sequence_row(row: dict, outputs: list[str]) -> None:
        row.pop("source_test_accuracy")  # None: task B's data is the pair's "target"
        row["task_b_test_accuracy"] = row.pop("target_test_accuracy")
        row["sequence"] = json.loads(outputs[1])

    for seed in range(seeds):
        first = ("sequence", TASK_A, seed)
        a_run = folder(runs, TASK_A, seed)
        jobs.append(trained("sequence", TASK_A, ["--data", task_a, "--strategy", "two-stage"], seed))
        weights = ["--weights", str(a_run / "model.safetensors")]
        for name, flags in SEQUENCE.items():
            jobs.append(trained("sequence", name, ["--data", task_b, *weights, *flags], seed, f"task B {name}",
                                sequence_row, first))
        b_run, wise = folder(runs, "task B two-stage", seed), runs / f"task-b-wise-ft-s{seed}"

        def record(outputs: list[str], seconds: float, seed: int = seed, wise: Path = wise) -> None:
            info = json.loads((wise / "transferkit.json").read_text())
            _add(results, "sequence", WISE_B, {
                "run": str(wise), "seed": seed, "alpha": json.loads(outputs[0])["alpha"], "seconds": round(seconds, 2),
                "task_b_test_accuracy": info["metrics"]["test"]["accuracy"], "sequence": json.loads(outputs[1])})

        jobs.append(Job(("sequence", WISE_B, seed), [
            ["interpolate", str(b_run), "--out", str(wise), "--overwrite", "--json"],
            ["forgetting", str(wise), "--previous", str(a_run), "--json"]], record, ("sequence", "two-stage", seed)))
    return jobs


def run_command(args: list[str], threads_env: dict[str, str] | None) -> str:
    """One CLI command (a train whose run folder is complete is skipped); its stdout."""
    if args[0] == "train" and (Path(value(args, "--out")) / "transferkit.json").is_file():
        return ""
    print("$ transferkit " + " ".join(args), flush=True)
    done_ = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True,
                           env={**os.environ, **threads_env} if threads_env else None)
    if done_.returncode != 0:
        tail = "\n".join((done_.stderr or done_.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"failed (exit {done_.returncode}): transferkit {' '.join(args)}\n{tail}")
    return done_.stdout


def execute(jobs: list[Job], results: dict, save: Callable[[], None], workers: int) -> list[str]:
    """Run the pending jobs, ``workers`` at a time, a job after the one it needs; returns the failures."""
    pending = [job for job in jobs if not done(results, job.key)]
    keys = {job.key for job in pending}
    lock, failed, failures = threading.Lock(), set(), []
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if workers > 1 else None

    def work(job: Job) -> None:
        start = time.perf_counter()
        outputs = [run_command(command, threads) for command in job.commands]
        with lock:
            job.record(outputs, time.perf_counter() - start)
            save()
        print(f"{job.key[1]} seed {job.key[2]}: done ({time.perf_counter() - start:.0f} s)", flush=True)

    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for job in [j for j in pending if j.needs in failed]:
                pending.remove(job)
                failed.add(job.key)
                failures.append(f"{job.key[1]} seed {job.key[2]}: skipped, it needs {job.needs[1]} seed {job.needs[2]}")
            ready = [j for j in pending if j.needs not in keys]
            for job in ready[:workers - len(running)]:
                pending.remove(job)
                running[pool.submit(work, job)] = job
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                keys.discard(job.key)
                if future.exception() is not None:
                    failed.add(job.key)
                    failures.append(f"{job.key[1]} seed {job.key[2]}: {future.exception()}")
                    print(failures[-1], file=sys.stderr, flush=True)
    return failures


def _spread(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 else f"{mean:.3f}"


def _seconds(rows: list[dict]) -> str:
    seconds = [r["seconds"] for r in rows if r.get("seconds") is not None]
    return f"{sum(seconds) / len(seconds):.0f}" if seconds else "-"


def table(results: dict) -> str:
    """Markdown: per method, source and target test accuracy over the seeds (mean [min, max]), seconds per run;
    the WiSE-FT sweep and retention; the task sequence (A's accuracy before / after B, backward transfer)."""
    lines = []
    if results.get("adaptation"):
        lines += ["| method | seeds | source test accuracy | target test accuracy | s per run |",
                  "|---|---|---|---|---|"]
        order = list(METHODS)  # the same names for every pair; rows finished out of order are listed in it
        for name, rows in sorted(results["adaptation"].items(), key=lambda i: order.index(i[0]) if i[0] in order
                                 else len(order)):
            lines.append(f"| {name} | {len(rows)} | {_spread([r['source_test_accuracy'] for r in rows])} | "
                         f"{_spread([r['target_test_accuracy'] for r in rows])} | {_seconds(rows)} |")
    wise = results.get("wise_ft") or {}
    if "sweep" in wise:
        lines += ["", "| WiSE-FT alpha | val accuracy | test accuracy | top-1 agreement | KL |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p['alpha']:.2f} | {p['val_accuracy']:.3f} | {p['test_accuracy']:.3f} | "
                  f"{p['top1_agreement']:.3f} | {p['kl']:.2f} |" for p in wise["sweep"]["points"]]
        rows = [(n, r) for n, r in wise.items() if n != "sweep" and "retention" in r]
        lines += ["", "| run | test accuracy | top-1 agreement | KL | most changed group |", "|---|---|---|---|---|"]
        for n, r in rows:
            kept = r["retention"]
            accuracy = r.get("source_test_accuracy")
            lines.append(f"| {n} | {accuracy if accuracy is not None else '-'} | {kept['top1_agreement']:.3f} | "
                         f"{kept['kl']:.2f} | {kept.get('most_changed_group', '-')} |")
    sequence = results.get("sequence") or {}
    if sequence:
        lines += ["", "| task B method (from task A's weights) | seeds | A before | A after | backward transfer | "
                  "B test accuracy | s per run |", "|---|---|---|---|---|---|---|"]
        for name, rows in sequence.items():
            moved = [r["sequence"].get("task_sequence", {}) for r in rows if "sequence" in r] or [
                {"accuracy_before": r.get("source_test_accuracy")} for r in rows]  # task A itself
            lines.append(f"| {name} | {len(rows)} | {_spread([m.get('accuracy_before') for m in moved])} | "
                         f"{_spread([m.get('accuracy_after') for m in moved])} | "
                         f"{_spread([m.get('backward_transfer') for m in moved])} | "
                         f"{_spread([r.get('task_b_test_accuracy') for r in rows])} | "
                         f"{_seconds(rows)} |")
    return "\n".join(lines).strip()


def resolve_settings(results: dict, args: argparse.Namespace, pair: str) -> list[str]:
    """The recorded settings of an existing JSON, or COMMON with the overrides; checked against the datasets."""
    given = {"--per-class": args.per_class, "--test-per-class": args.test_per_class, "--epochs": args.epochs,
             "--image-size": args.image_size}
    if "settings" in results:
        settings = list(results["settings"])
        clash = [f"{k} {v} (recorded: {value(settings, k)})" for k, v in given.items()
                 if v is not None and value(settings, k) not in (None, str(v))]
        if clash:
            raise ValueError(f"--out already holds results with other settings: {', '.join(clash)}. Fix: drop the "
                             "option(s) to resume with the recorded settings, or pass another --out.")
    else:
        settings = list(COMMON)
    for flag, v in [(k, v) for k, v in given.items() if v is not None]:
        if flag in settings:
            settings[settings.index(flag) + 1] = str(v)
        else:
            settings += [flag, str(v)]
    per_class = int(value(settings, "--per-class"))
    test_per_class = int(value(settings, "--test-per-class") or PAIRS[pair][2])
    for dataset in PAIRS[pair][:2]:
        pool, test = COUNTS[dataset]
        if per_class >= pool:
            raise ValueError(f"--per-class must be below {pool} for {dataset} (its smallest class has {pool} images "
                             f"in the pool, and validation needs some). Got {per_class}. Fix: --per-class {pool // 2}.")
        if test_per_class > test:
            raise ValueError(f"--test-per-class must be at most {test} for {dataset} (its test split's smallest "
                             f"class). Got {test_per_class}. Fix: --test-per-class {test}.")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="fashion-mnist")
    parser.add_argument("--out", help="results JSON [default: benchmarks/results/shift_<pair>.json; "
                                      "fashion-mnist: benchmarks/results/shift_fmnist.json]")
    parser.add_argument("--runs", help="where the run folders go [default: /tmp/shift-runs-<pair>]")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 [default: 3; the sequence: 1]")
    parser.add_argument("--workers", type=int, default=1, help="training commands run at once (1 thread each if >1)")
    parser.add_argument("--per-class", type=int, help="training images per class [default: 50, or the JSON's]")
    parser.add_argument("--test-per-class", type=int, help="test images per class [default: the pair's]")
    parser.add_argument("--epochs", type=int, help="[default: 5, or the JSON's]")
    parser.add_argument("--image-size", type=int, help="[default: 64, or the JSON's]")
    parser.add_argument("--table", action="store_true", help="print the tables from --out and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run and exit")
    args = parser.parse_args(argv)
    default_out = "shift_fmnist.json" if args.pair == "fashion-mnist" else f"shift_{args.pair.replace('-', '_')}.json"
    out = Path(args.out or f"benchmarks/results/{default_out}")
    runs = Path(args.runs or f"/tmp/shift-runs-{args.pair}")
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.table:
        print(table(results))
        return 0
    if args.workers < 1:
        parser.error(f"--workers must be a positive integer. Got {args.workers}.")
    try:
        settings = resolve_settings(results, args, args.pair)
    except ValueError as exc:
        parser.error(str(exc))
    results = {"settings": settings, "adaptation": {}, "wise_ft": {}, **results}
    seeds = args.seeds or (1 if args.pair == "sequence" else 3)
    jobs = [job for job in plan(results, args.pair, settings, runs, seeds) if not done(results, job.key)]
    if args.dry_run:
        for job in jobs:
            for command in job.commands:
                print("transferkit " + " ".join(command))
        return 0

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")

    failures = execute(jobs, results, save, args.workers)
    for failure in failures:
        print(f"FAILED {failure.splitlines()[0]}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

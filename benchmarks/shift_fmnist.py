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

The task-sequence protocol (``--pair sequence``): a two-stage run on task A (``builtin:digits``), then task B
(``builtin:fashion-mnist``) trained from its weights (``--weights A/model.safetensors``) by plain fine-tune,
fine-tune + L2-SP, two-stage, and WiSE-FT of the two-stage run (alpha chosen on B's validation split); for each,
A's test accuracy with B's backbone under A's own head (``transferkit forgetting B --previous A``): the backward
transfer (negative: forgotten).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

COMMON = ["--model", "efficientnet_lite0", "--image-size", "64", "--per-class", "50", "--epochs", "5",
          "--head-epochs", "1", "--batch-size", "32", "--patience", "0", "--keep", "last", "--workers", "0", "-q"]
PAIRS = {  # name -> (source, target, test images per class: builtin:digits' test split has 50-55 per class)
    "fashion-mnist": ("builtin:fashion-mnist", "builtin:fashion-mnist-m", 100),
    "font-digits": ("builtin:font-digits", "builtin:digits", 50),
    "sequence": ("builtin:digits", "builtin:fashion-mnist", 50),  # task A, task B
}
SEQUENCE = {  # task B's methods, each from task A's weights
    "fine-tune": ["--strategy", "fine-tune"],
    "fine-tune + L2-SP 0.01": ["--strategy", "fine-tune", "--l2-sp", "0.01"],
    "two-stage": ["--strategy", "two-stage"],
}
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


def cli(*args: str) -> str:
    command = [sys.executable, "-m", "transferkit", *args]
    print("$ transferkit " + " ".join(args), flush=True)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return done.stdout


def train(runs: Path, name: str, flags: list[str], seed: int, pair: str = "fashion-mnist") -> dict:
    source, target, test_per_class = PAIRS[pair]
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    folder = runs / f"{slug}-s{seed}"
    if not (folder / "transferkit.json").is_file():
        cli("train", *flags, *COMMON, "--test-per-class", str(test_per_class), "--seed", str(seed),
            "--out", str(folder), "--overwrite")
    info = json.loads((folder / "transferkit.json").read_text())
    adaptation = info.get("adaptation") or {}
    on_target = flags[1] == target  # the oracle: its own test split is the target's
    scored = adaptation.get("target_test") or (info["metrics"]["test"] if on_target else None)
    return {"run": str(folder), "seed": seed, "source_test_accuracy": None if on_target else
            info["metrics"]["test"]["accuracy"], "target_test_accuracy": scored["accuracy"] if scored else None,
            "seconds": info["metrics"]["seconds"], "selected_on": adaptation.get("selected_on"),
            "domain_accuracy_per_epoch": [h.get("train_domain_accuracy") for h in _history(folder)]}


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 else f"{mean:.3f}"


def table(results: dict) -> str:
    """Markdown: per method, source and target test accuracy over the seeds (mean [min, max]), seconds per run."""
    lines = ["| method | seeds | source test accuracy | target test accuracy | s per run |", "|---|---|---|---|---|"]
    for name, rows in results["adaptation"].items():
        seconds = sum(r["seconds"] for r in rows) / len(rows)
        lines.append(f"| {name} | {len(rows)} | {_spread([r['source_test_accuracy'] for r in rows])} | "
                     f"{_spread([r['target_test_accuracy'] for r in rows])} | {seconds:.0f} |")
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
            if accuracy is None and n == "two-stage":  # the swept run itself: alpha 1
                accuracy = next(p["test_accuracy"] for p in wise["sweep"]["points"] if p["alpha"] == 1.0)
            lines.append(f"| {n} | {accuracy if accuracy is not None else '-'} | {kept['top1_agreement']:.3f} | "
                         f"{kept['kl']:.2f} | {kept.get('most_changed_group', '-')} |")
    sequence = results.get("sequence") or {}
    if sequence:
        lines += ["", "| task B by | seeds | task B test accuracy | task A before | task A after | backward transfer |",
                  "|---|---|---|---|---|---|"]
        for name, rows in sequence.items():
            figures = [r["sequence"]["task_sequence"] for r in rows]
            lines.append(f"| {name} | {len(rows)} | {_spread([r['task_b_test_accuracy'] for r in rows])} | "
                         f"{_spread([f['accuracy_before'] for f in figures])} | "
                         f"{_spread([f['accuracy_after'] for f in figures])} | "
                         f"{_spread([f['backward_transfer'] for f in figures])} |")
    return "\n".join(lines)


def task_sequence(results: dict, runs: Path, seeds: int, save: Callable[[], None]) -> None:
    """Task A, then task B from A's weights by each method; A's accuracy before and after (backward transfer)."""
    task_a, task_b, _ = PAIRS["sequence"]
    rows = results.setdefault("sequence", {})
    for seed in range(seeds):
        first = train(runs, "task A two-stage", ["--data", task_a, "--strategy", "two-stage"], seed, "sequence")
        weights = str(Path(first["run"]) / "model.safetensors")
        for name, flags in SEQUENCE.items():
            if any(r["seed"] == seed for r in rows.get(name, [])):
                continue
            row = train(runs, f"task B {name}", ["--data", task_b, "--weights", weights, *flags], seed, "sequence")
            row["task_b_test_accuracy"] = row.pop("target_test_accuracy")  # task B is the pair's "target"
            del row["source_test_accuracy"], row["selected_on"], row["domain_accuracy_per_epoch"]
            row["sequence"] = json.loads(cli("forgetting", row["run"], "--previous", first["run"], "--json"))
            rows.setdefault(name, []).append(row)
            save()
            if name == "two-stage" and not any(r["seed"] == seed for r in rows.get("WiSE-FT of two-stage", [])):
                wise = runs / f"task-b-wise-ft-s{seed}"
                record = json.loads(cli("interpolate", row["run"], "--out", str(wise), "--overwrite", "--json"))
                info = json.loads((wise / "transferkit.json").read_text())
                rows.setdefault("WiSE-FT of two-stage", []).append({
                    "run": str(wise), "seed": seed, "alpha": record["alpha"],
                    "task_b_test_accuracy": info["metrics"]["test"]["accuracy"],
                    "sequence": json.loads(cli("forgetting", str(wise), "--previous", first["run"], "--json"))})
                save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="fashion-mnist")
    parser.add_argument("--out", help="results JSON [default: benchmarks/results/shift_<pair>.json; "
                                      "fashion-mnist: benchmarks/results/shift_fmnist.json]")
    parser.add_argument("--runs", help="where the run folders go [default: /tmp/shift-runs-<pair>]")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="print the tables from --out and exit")
    args = parser.parse_args()
    default_out = "shift_fmnist.json" if args.pair == "fashion-mnist" else f"shift_{args.pair.replace('-', '_')}.json"
    out = Path(args.out or f"benchmarks/results/{default_out}")
    runs = Path(args.runs or f"/tmp/shift-runs-{args.pair}")
    results = json.loads(out.read_text()) if out.is_file() else {"settings": COMMON, "adaptation": {}, "wise_ft": {}}
    if args.table:
        print(table(results))
        return
    source, target, _ = PAIRS[args.pair]
    if args.pair == "sequence":
        task_sequence(results, runs, args.seeds, lambda: out.write_text(json.dumps(results, indent=1) + "\n"))
        return
    pair_methods = methods(source, target)

    def save() -> None:
        out.write_text(json.dumps(results, indent=1) + "\n")

    def run_method(name: str, seed: int) -> None:
        rows = results["adaptation"].setdefault(name, [])
        if any(r["seed"] == seed for r in rows):
            return
        start = time.perf_counter()
        rows.append(train(runs, name, pair_methods[name], seed, args.pair))
        rows.sort(key=lambda r: r["seed"])
        print(f"{name} seed {seed}: {rows[-1]['target_test_accuracy']} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        save()

    for name in pair_methods:
        run_method(name, 0)
    if args.pair == "fashion-mnist":  # WiSE-FT of the seed-0 two-stage run, beside plain fine-tune and L2-SP
        if "sweep" not in results["wise_ft"]:
            source_run = results["adaptation"]["source-only two-stage"][0]["run"]
            record = json.loads(cli("interpolate", source_run, "--alphas", "0:1:0.25", "--out",
                                    str(runs / "wise-ft-s0"), "--overwrite", "--json"))
            results["wise_ft"]["sweep"] = {"run": source_run, "alpha": record["alpha"], "points": record["sweep"]}
            results["wise_ft"]["two-stage"] = {"run": source_run,
                                               "retention": json.loads(cli("forgetting", source_run, "--json"))}
            save()
        for name, flags in FORGETTING.items():
            if name not in results["wise_ft"]:
                row = train(runs, name, flags, 0)
                row["retention"] = json.loads(cli("forgetting", row["run"], "--json"))
                results["wise_ft"][name] = row
                save()
    for seed in range(1, args.seeds):
        for name in pair_methods:
            run_method(name, seed)


if __name__ == "__main__":
    main()

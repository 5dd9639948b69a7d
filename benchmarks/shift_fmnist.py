"""Issue 14's measurements: Fashion-MNIST -> Fashion-MNIST-M with EfficientNet-Lite0 on the CPU.

Target test accuracy of source-only two-stage, DANN and CDAN+E (with the frozen-feature linear probe and a
target-labelled oracle for scale), over seeds; and, for a two-stage Fashion-MNIST run, retention and accuracy over
the WiSE-FT alpha sweep beside plain fine-tune and L2-SP. Every run is an ordinary CLI command (printed), results
are appended to ``--out`` as they finish, and finished runs are skipped when the script is started again.

    nice -n 19 python benchmarks/shift_fmnist.py --out benchmarks/results/shift_fmnist.json --runs /tmp/shift-runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--model", "efficientnet_lite0", "--image-size", "64", "--per-class", "50", "--test-per-class", "100",
          "--epochs", "3", "--head-epochs", "1", "--batch-size", "32", "--patience", "0", "--workers", "0", "-q"]
SOURCE, TARGET = "builtin:fashion-mnist", "builtin:fashion-mnist-m"
METHODS = {  # name -> train flags (besides COMMON, --seed and --out); cheapest informative order first
    "source-only two-stage": ["--data", SOURCE, "--target-data", TARGET, "--strategy", "two-stage"],
    "DANN two-stage": ["--data", SOURCE, "--target-data", TARGET, "--adapt", "dann", "--strategy", "two-stage"],
    "linear probe (frozen features)": ["--data", SOURCE, "--target-data", TARGET, "--strategy", "linear-probe"],
    "CDAN+E two-stage": ["--data", SOURCE, "--target-data", TARGET, "--adapt", "cdan", "--strategy", "two-stage"],
    "oracle (target labels) two-stage": ["--data", TARGET, "--strategy", "two-stage"],
}
FORGETTING = {  # Fashion-MNIST runs whose retention is compared with the WiSE-FT sweep (seed 0)
    "fine-tune": ["--data", SOURCE, "--strategy", "fine-tune"],
    "fine-tune + L2-SP 0.01": ["--data", SOURCE, "--strategy", "fine-tune", "--l2-sp", "0.01"],
}


def cli(*args: str) -> str:
    command = [sys.executable, "-m", "transferkit", *args]
    print("$ transferkit " + " ".join(args), flush=True)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return done.stdout


def train(runs: Path, name: str, flags: list[str], seed: int) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    folder = runs / f"{slug}-s{seed}"
    if not (folder / "transferkit.json").is_file():
        cli("train", *flags, *COMMON, "--seed", str(seed), "--out", str(folder), "--overwrite")
    info = json.loads((folder / "transferkit.json").read_text())
    adaptation = info.get("adaptation") or {}
    target = adaptation.get("target_test") or (info["metrics"]["test"] if flags[1] == TARGET else None)
    return {"run": str(folder), "seed": seed, "source_test_accuracy": None if flags[1] == TARGET else
            info["metrics"]["test"]["accuracy"], "target_test_accuracy": target["accuracy"] if target else None,
            "seconds": info["metrics"]["seconds"], "selected_on": adaptation.get("selected_on"),
            "domain_accuracy_per_epoch": [h.get("train_domain_accuracy") for h in _history(folder)]}


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/shift_fmnist.json")
    parser.add_argument("--runs", default="/tmp/shift-runs")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    results = json.loads(out.read_text()) if out.is_file() else {"settings": COMMON, "adaptation": {}, "wise_ft": {}}

    def save() -> None:
        out.write_text(json.dumps(results, indent=1) + "\n")

    def run_method(name: str, seed: int) -> None:
        rows = results["adaptation"].setdefault(name, [])
        if any(r["seed"] == seed for r in rows):
            return
        start = time.perf_counter()
        rows.append(train(runs, name, METHODS[name], seed))
        print(f"{name} seed {seed}: {rows[-1]['target_test_accuracy']} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        save()

    run_method("source-only two-stage", 0)
    if "sweep" not in results["wise_ft"]:  # WiSE-FT of the seed-0 two-stage Fashion-MNIST run
        source = results["adaptation"]["source-only two-stage"][0]["run"]
        record = json.loads(cli("interpolate", source, "--alphas", "0:1:0.25", "--out", str(runs / "wise-ft-s0"),
                                "--overwrite", "--json"))
        results["wise_ft"]["sweep"] = {"run": source, "alpha": record["alpha"], "points": record["sweep"]}
        results["wise_ft"]["two-stage"] = {"run": source, "retention": json.loads(cli("forgetting", source, "--json"))}
        save()
    for name in METHODS:
        run_method(name, 0)
    for name, flags in FORGETTING.items():  # plain fine-tune and L2-SP beside the sweep (seed 0)
        if name not in results["wise_ft"]:
            row = train(runs, name, flags, 0)
            row["retention"] = json.loads(cli("forgetting", row["run"], "--json"))
            results["wise_ft"][name] = row
            save()
    for seed in range(1, args.seeds):
        for name in METHODS:
            run_method(name, seed)


if __name__ == "__main__":
    main()

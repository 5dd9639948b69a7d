"""Throughput of one run spread over several processes: 1 vs N processes, the same run each time.

    python benchmarks/distributed.py              # CPU: 1 process x 2 threads vs 2 processes x 1 thread
    python benchmarks/distributed.py --gpus       # 1 GPU vs every GPU of the machine (benchmarks/gpu.sh calls it)
    python benchmarks/distributed.py --smoke      # tiny; checks that the script works

Each row is one ``torchrun --standalone --nproc-per-node P -m transferkit train ...`` of the same fine-tune run
(same data, seed and settings); its samples/s is what the run recorded for its last epoch (training samples of all
processes per second of the slowest process, see ``train_samples_per_s`` in metrics.jsonl), and ``ratio`` divides
it by the 1-process rate of the same invocation (configurations alternate, ``--repeats`` times; the table keeps
every repeat and the summary the median ratio).

On CPUs the processes share the machine's cores (threads per process = cores / P), and the global batch is the
same for every P: the question is whether distribution costs anything. A third configuration, 1 process with 1
thread, separates what the second process brings from what a second thread brings (``ratio`` is always against the
first row of a repeat, 1 process with all cores). On GPUs each process has its own GPU and the global batch grows
with P (``--per-gpu-batch`` each), the usual way to use more GPUs: ``efficiency`` is the rate over P times the
1-GPU rate.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser, report  # noqa: E402
from weights_fingerprint import make_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(processes: int, threads: int, options: list[str], out: Path, timeout: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "transferkit", "train", *options, "--out", str(out), "--overwrite", "-q"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    info = json.loads((out / "transferkit.json").read_text())
    return {"processes": processes, "threads_per_process": threads, "global_batch": info["distributed"]["global_batch"],
            "samples_per_s": last["train_samples_per_s"], "val_accuracy": info["metrics"]["val_accuracy"],
            "test_accuracy": (info["metrics"]["test"] or {}).get("accuracy"),
            "fit_seconds": info["metrics"]["fit_seconds"]}


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--gpus", action="store_true", help="one process per GPU, 1 vs all GPUs")
    p.add_argument("--processes", type=int, default=2, help="CPU: the N of 1 vs N processes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--per-gpu-batch", type=int, default=64)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.gpus:
            import torch

            gpus = torch.cuda.device_count()
            if gpus < 2:
                raise SystemExit(f"--gpus needs at least 2 GPUs; this machine has {gpus}.")
            counts = [1, gpus]
            base = ["--data", "builtin:digits", "--per-class", "150", "--model", "timm:resnet50", "--strategy",
                    "scratch", "--image-size", "224", "--epochs", "2", "--workers", str(max(1, cores // gpus - 1))]

            def options(n: int) -> list[str]:
                return [*base, "--batch-size", str(args.per_gpu_batch * n)]

            configs = [(n, max(1, cores // n)) for n in counts]
        else:
            configs = [(1, cores), (args.processes, max(1, cores // args.processes)), (1, 1)]
            base = ["--data", "builtin:digits", "--per-class", "40", "--image-size", "32", "--strategy", "fine-tune",
                    "--epochs", "2", "--batch-size", "32", "--feature-cache", "off", "--cpu", "--workers", "0"]
            if args.smoke:
                data = tmp / "images"
                _tiny_images(data)
                weights = make_weights(tmp)
                base = ["--data", str(data), "--model", "timm:test_efficientnet", "--weights", str(weights),
                        "--image-size", "32", "--strategy", "fine-tune", "--epochs", "1", "--batch-size", "8",
                        "--cpu", "--workers", "0"]
                args.repeats, configs = 1, configs[:2]

            def options(n: int) -> list[str]:
                return base

        rows = []
        for repeat in range(args.repeats):
            first = None
            for n, threads in configs:
                row = run(n, threads, options(n), tmp / f"run-{n}-{threads}", args.timeout)
                first = first or row["samples_per_s"]
                row["repeat"] = repeat + 1
                row["ratio"] = row["samples_per_s"] / first
                if args.gpus:
                    row["efficiency"] = row["samples_per_s"] / (n * first)
                rows.append(row)
                print(f"repeat {repeat + 1}: {n} process(es) x {threads} thread(s): {row['samples_per_s']:.1f} "
                      "samples/s", flush=True)
    many = max(n for n, _ in configs)
    ratios = [r["ratio"] for r in rows if r["processes"] == many]
    device = "GPU" if args.gpus else "CPU"
    notes = (f"{device}, {cores} cores; median ratio {many} processes vs 1: {statistics.median(ratios):.2f} over "
             f"{len(ratios)} repeat(s); options: {' '.join(base)}")
    report("distributed_gpu" if args.gpus else "distributed", rows,
           ["repeat", "processes", "threads_per_process", "global_batch", "samples_per_s", "ratio",
            *(["efficiency"] if args.gpus else []), "val_accuracy", "test_accuracy"], args.out, notes=notes)
    return rows


def _tiny_images(root: Path) -> None:
    import numpy as np
    from PIL import Image

    for split, count in (("train", 8), ("val", 3), ("test", 3)):
        for c, colour in enumerate(((220, 40, 40), (40, 200, 60), (40, 60, 220))):
            for i in range(count):
                rng = np.random.default_rng(100 * c + i + (0 if split == "train" else 1000))
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
                path = root / split / f"c{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)


if __name__ == "__main__":
    main()

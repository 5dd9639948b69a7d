#!/usr/bin/env bash
# The whole GPU measurement in one command: setup (if needed), then the benchmark, then the CPU-side ones.
# On a machine with several GPUs it also measures one run spread over all of them (benchmarks/distributed.py
# --gpus: 1 GPU vs N GPUs, one torchrun process per GPU). That multi-GPU part has not been run yet: no machine with
# several GPUs has been available; it is written against the same code path the CPU tests run with 2 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make setup
export HF_HUB_OFFLINE=1
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout 300 .venv/bin/python benchmarks/gpu_bench.py "$@"
gpus=$(.venv/bin/python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  timeout 1800 .venv/bin/python benchmarks/distributed.py --gpus --repeats 1
else
  echo "one GPU: skipping the multi-GPU measurement (benchmarks/distributed.py --gpus)"
fi

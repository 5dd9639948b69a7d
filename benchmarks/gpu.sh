#!/usr/bin/env bash
# The whole GPU measurement in one command: setup (if needed), then the benchmark, then the CPU-side ones.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make setup
export HF_HUB_OFFLINE=1
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout 300 .venv/bin/python benchmarks/gpu_bench.py "$@"

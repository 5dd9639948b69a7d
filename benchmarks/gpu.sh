#!/usr/bin/env bash
# The whole GPU measurement in one command: benchmarks/gpu_bench.py (throughput of plain and transferkit training,
# the input pipelines alone and feeding a ResNet-50 fine-tune), then, with several GPUs, one run spread over all of
# them (benchmarks/distributed.py --gpus: 1 GPU vs N GPUs, one torchrun process per GPU; not run yet, no machine
# with several GPUs has been available).
#
#   bash benchmarks/gpu.sh                 # on a CUDA machine; extra arguments go to gpu_bench.py
#   bash benchmarks/gpu.sh --smoke         # tiny CPU run of this same script (tests/test_benchmarks.py runs it)
#
# The Python: $PYTHON if set; else this checkout's .venv (`make setup`); else the machine's own python3 when it
# already holds torch, timm and accelerate: the GPU machine lent to a session has no network, so nothing can be
# installed there, and its image holds those (not this project's packaged weights, segmentation or serving
# packages, which these measurements do not import; a test runs them with those blocked). Only where none of
# these works does it run `make setup`. Results go to $OUT when it is set (the lent machine sends that folder
# back), else to benchmarks/results/. Everything ends within 9 minutes on one GPU: a lent machine runs a command
# for at most 10.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
elif command -v python3 >/dev/null && python3 -c "import torch, timm, accelerate" 2>/dev/null; then py=python3
else make setup; py=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the package need not be installed
smoke=0
for arg in "$@"; do [ "$arg" = --smoke ] && smoke=1; done
out=${OUT:-benchmarks/results}
mkdir -p "$out"
"$py" -c "import sys, torch; print(sys.executable, 'torch', torch.__version__, torch.cuda.get_device_name(0)
      if torch.cuda.is_available() else 'no CUDA device')"
if [ "$smoke" = 0 ]; then
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: run on a GPU machine, or pass --smoke'"
fi
timeout 480 "$py" benchmarks/gpu_bench.py --out "$out/gpu.json" "$@"
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [ "$smoke" = 0 ] && [ "$gpus" -ge 2 ]; then
  timeout 1800 "$py" benchmarks/distributed.py --gpus --repeats 1 --out "$out/distributed_gpus.json"
else
  echo "fewer than 2 GPUs (or --smoke): skipping the multi-GPU measurement (benchmarks/distributed.py --gpus)"
fi

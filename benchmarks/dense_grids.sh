#!/usr/bin/env bash
# The segmentation and detection grids of issues 12 and 13: scratch vs frozen encoder (linear-probe) vs two-stage
# on builtin:fashion-scenes with EfficientNet-Lite0, 3 training sizes x 3 seeds, every strategy on train's
# defaults plus the options below (--recipes shared: an equal budget for all three). Detection runs at 96 px: at
# 64 px the anchors' smallest items are a few pixels wide and two-stage at 200 images reached val mAP 0.05 after 27
# epochs, against 0.17 at 96 px (seed 0, one run each). The cells run in parallel
# worker processes (benchmarks/fair_parallel.py: the same cells, report and resumability as `transferkit compare`).
#
#   bash benchmarks/dense_grids.sh OUT [segmentation|detection|both] [WORKERS]
#
# Resumable: run the same line again and finished cells are kept. The report (results.json, summary.md,
# report.html) lands in OUT/<task>/; copy it to benchmarks/results/compare/ to publish it.
set -euo pipefail
out=${1:?usage: dense_grids.sh OUT [segmentation|detection|both] [WORKERS]}
which=${2:-both}
workers=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}
common=(--data builtin:fashion-scenes --model efficientnet_lite0 --strategies scratch,linear-probe,two-stage
        --seeds 3 --tune none --recipes shared --workers "$workers" --order long-first
        --set batch_size=8 --set test_per_class=100)
if [[ $which == segmentation || $which == both ]]; then
  "$python" "$here/fair_parallel.py" "${common[@]}" --out "$out/segmentation" --per-class 20,60,200 \
      --set task=segmentation --set image_size=64 --set epochs=25 --set head_epochs=2
fi
if [[ $which == detection || $which == both ]]; then
  "$python" "$here/fair_parallel.py" "${common[@]}" --out "$out/detection" --per-class 20,60,200 \
      --set task=detection --set image_size=96 --set epochs=25 --set head_epochs=2
fi

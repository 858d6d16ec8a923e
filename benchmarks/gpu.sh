#!/usr/bin/env bash
# The GPU benchmark: one short script for a lent GPU machine (about 6 minutes on an H100), results in $OUT
# (default: ./gpu-results). Every figure it writes goes to BENCHMARKS.md with the card's name.
#   OUT=/tmp/gpu bash benchmarks/gpu.sh
# It needs the project's venv (make setup) and no network: ByzFL comes with the [dev] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY=.venv/bin/python
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$OUT/device.txt" 2>&1 || true
cat "$OUT/device.txt"
# 1. every rule and pipeline at n=20, d=11M, f=4 against ByzFL and Flower (BENCHMARKS.md "Aggregators")
timeout 240 $PY benchmarks/aggregators.py --device cuda --json "$OUT/aggregators.json" \
  > "$OUT/aggregators.txt" 2>&1 || echo "aggregators: exit $?" >> "$OUT/aggregators.txt"
# 2. coordinate-wise kernels and distance rules against one read pass, n=50, d=2M, f=10
timeout 90 $PY benchmarks/coordinatewise_kernels.py --device cuda --n 50 --d 2000000 --f 10 --peers \
  > "$OUT/coordinatewise.txt" 2>&1 || echo "coordinatewise: exit $?" >> "$OUT/coordinatewise.txt"
timeout 90 $PY benchmarks/distance_kernels.py --device cuda --n 50 --d 2000000 --f 10 --floors \
  > "$OUT/distance.txt" 2>&1 || echo "distance: exit $?" >> "$OUT/distance.txt"
tail -n 40 "$OUT"/*.txt

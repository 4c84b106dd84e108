#!/usr/bin/env bash
# One prepared run on a GPU machine (H100): the training-speed table (loader, step, augmentation, inference, end to
# end with the defaults and without augmentation, kernel profiles), the plan `unetseg train` makes on that GPU, and
# the CUDA tests. Usage, from the repository root: OUT=/some/dir bash benchmarks/gpu_train_check.sh [COUNT] [EPOCHS]
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/unetseg-gpu}
COUNT=${1:-600}
EPOCHS=${2:-5}
DATA=${TMPDIR:-/tmp}/unetseg-carvana
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" | tee -a "$OUT/gpu.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_predict_gpu.py 2>&1 | tail -2 | tee -a "$OUT/gpu.txt"
timeout 420 python3 benchmarks/bench_train.py --device cuda --count "$COUNT" --epochs "$EPOCHS" --data "$DATA" \
    --e2e-extra "--augment none" --profile "$OUT/profile.txt" --out "$OUT/train.md" 2>&1 | tee "$OUT/bench_train.log" | tail -30
timeout 60 python3 -m unetseg plan --data "$DATA" --scale 0.5 --time-budget 10m 2>&1 | tee "$OUT/plan.txt"

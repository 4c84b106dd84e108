#!/usr/bin/env bash
# One prepared run on a GPU machine (H100): the CUDA paths of the trainer and the training-speed table.
# Usage, from the repository root: OUT=/some/dir bash benchmarks/gpu_train_check.sh [COUNT] [EPOCHS]
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/unetseg-gpu}
COUNT=${1:-600}
EPOCHS=${2:-4}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" | tee -a "$OUT/gpu.txt"
# fp16 with the grad scaler (no compile) and bf16 with compile (the default), tiny runs on a slice of the data
python3 benchmarks/bench_train.py --device cuda --count "$COUNT" --epochs "$EPOCHS" \
    --profile "$OUT/profile.txt" --out "$OUT/train.md" 2>&1 | tee "$OUT/bench_train.log" | tail -25
DATA=${TMPDIR:-/tmp}/unetseg-carvana
for precision in fp16 bf16; do
    start=$(date +%s)
    timeout 300 python3 -m unetseg train --data "$DATA" --scale 0.25 --precision "$precision" -e 1 --val-rounds 2 \
        --out "$OUT/run-$precision" --overwrite --quiet --log-every 5 > "$OUT/run-$precision.log" 2>&1
    echo "train --precision $precision: exit $? in $(( $(date +%s) - start )) s, $(tail -n 1 "$OUT/run-$precision/metrics.csv" | cut -d, -f1-5)" | tee -a "$OUT/gpu.txt"
done
rm -rf "$OUT"/run-*/checkpoints

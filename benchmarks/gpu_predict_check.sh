#!/usr/bin/env bash
# One prepared run on a GPU machine (H100): CUDA prediction tests, the prediction-speed table, and the end-to-end
# training speed with validation batches kept on the GPU. Usage from the repository root: OUT=DIR bash THIS
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/unetseg-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_predict_gpu.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
timeout 90 python3 benchmarks/bench_predict.py --count 256 --width 64 --device cuda --batch-size 16 \
    --compare-naive --naive-count 32 --data /tmp/unetseg-pred 2>&1 | tail -12 | tee "$OUT/predict.txt"
timeout 110 python3 benchmarks/bench_train.py --device cuda --count 400 --epochs 3 --only-e2e \
    --out "$OUT/train_e2e.md" 2>&1 | tail -10

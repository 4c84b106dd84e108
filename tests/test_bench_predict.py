"""The prediction benchmark runs (tiny images, every mode) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_predict.py"


def test_benchmark_smoke_prints_a_table():
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("predict throughput on ")[1].splitlines()
    assert "img/s" in table[1] and "vs naive" in table[1]
    modes = [line[7:41].strip() for line in table[2:]]
    assert modes == ["unetseg", "unetseg --tta flips", "unetseg --tta full", "naive (Pytorch-UNet loop)"]
    for line in table[2:]:
        tokens = line.split()
        rate = tokens[-2] if tokens[-1].endswith("x") else tokens[-1]  # img/s, before the "vs naive" ratio if any
        assert float(rate) > 0

"""The data benchmark runs end to end on a few small pairs (its --smoke mode) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data.py"


def test_data_benchmark_smoke_prints_the_table():
    result = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("| run ") and "loader img/s" in lines[1]
    rows = [line for line in lines if line.startswith("| first run") or line.startswith("| second run")]
    assert len(rows) == 3
    assert all(float(cell) > 0 for row in rows for cell in row.strip("|").split("|")[4:])  # img/s columns
    assert "decoding every epoch instead" in lines[-1]

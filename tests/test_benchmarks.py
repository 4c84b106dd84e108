"""The benchmark scripts run end to end in their smoke modes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_training_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_train.py"), "--smoke", "--data", str(tmp_path / "car")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for label in ("loader alone", "step alone, bf16", "inference alone", "end to end"):
        assert label in result.stdout


def test_recipe_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_recipe.py"), "--smoke", "--only", "multiclass"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "synthetic shapes, 1%-pixel class" in result.stdout and "class3" in result.stdout


def test_generalization_benchmark_smoke(tmp_path):
    rows = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_generalize.py"), "--smoke", "--json", str(rows)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| smoke | 0.1 min | miou |" in result.stdout and "mean ratio" in result.stdout
    import json

    (row,) = json.loads(rows.read_text())
    assert 0 <= row["naive"] <= 1 and 0 <= row["unetseg"] <= 1 and row["naive_epochs"] >= 1
    assert set(row["iou"]) == {"0", "1", "2"} and abs(sum(row["share"].values()) - 1) < 1e-9


def test_generalization_benchmark_measures_a_variation_alone(tmp_path):
    rows = tmp_path / "rows.json"
    command = [sys.executable, str(BENCHMARKS / "bench_generalize.py"), "--smoke", "--json", str(rows), "--no-naive"]
    result = subprocess.run(
        [*command, "--train-args", "--scale 0.5 --width 4"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    (row,) = json.loads(rows.read_text())
    assert row["plan"]["scale"] == 0.5 and row["plan"]["width"] == 4  # the options reached unetseg train
    assert row["train_args"] == "--scale 0.5 --width 4" and row["naive_epochs"] == 0 and row["naive"] != row["naive"]
    assert "mean ratio" not in result.stdout and "unetseg train with --scale 0.5 --width 4" in result.stdout


def test_models_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_models.py"), "--smoke", "--accuracy", "smoke", "--minutes", "0.05"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "| model |" not in line]
    speed, trained = rows[:3], rows[3:]
    assert [row.split(" | ")[0] for row in speed] == ["| unet", "| resunet", "| unet-resnet18"]
    assert [row.split(" | ")[:2] for row in trained] == [
        ["| unet", "smoke"],
        ["| resunet", "smoke"],
        ["| unet-resnet18", "smoke"],
    ]
    for row in trained:  # a held-out score in [0, 1] and the steps the run took, both read from its own files
        cells = row.split(" | ")
        assert 0.0 <= float(cells[4]) <= 1.0 and int(cells[5]) > 0

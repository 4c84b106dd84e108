"""``unetseg evaluate`` end to end: the same numbers as training's validation, report files, JSON, errors."""

from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import make_dataset
from unetseg.cli import main

TINY = [
    "--width",
    "4",
    "-e",
    "4",
    "-b",
    "2",
    "-l",
    "0.01",
    "--warmup-steps",
    "2",
    "--val-rounds",
    "1",
    "--workers",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-class model trained briefly with an explicit validation set."""
    root = tmp_path_factory.mktemp("evaluate")
    data = make_dataset(root / "data", count=8, size=(40, 32), values=(0, 128, 255))
    val = make_dataset(root / "val", count=5, size=(40, 32), values=(0, 128, 255), seed=5)
    run = root / "run"
    assert main(["train", "--data", str(data), "--val-data", str(val), "--out", str(run), *TINY]) == 0
    return val, run


def test_scores_equal_the_logged_validation_scores(trained, tmp_path):
    val, run = trained
    with open(run / "metrics.csv") as handle:
        row = max(csv.DictReader(handle), key=lambda r: float(r["dice_fg"]))  # the row that wrote best.pt
    out = tmp_path / "scores.json"
    assert main(["evaluate", "-m", str(run / "checkpoints" / "best.pt"), "--data", str(val), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    logged = {k: float(v) for k, v in row.items() if k.startswith(("dice_", "iou_")) and v}
    computed = {"dice_fg": report["dice_fg"], "iou_fg": report["iou_fg"]}
    for c in report["classes"]:
        computed |= {f"dice_{c['name']}": c["dice"], f"iou_{c['name']}": c["iou"]}
    assert set(logged) <= set(computed) and len(logged) >= 6
    for key, value in logged.items():
        assert math.isclose(computed[key], value, rel_tol=5e-6), key  # metrics.csv keeps 6 significant digits


def test_report_files_worst_images_and_boundary(trained, tmp_path, capsys):
    val, run = trained
    out = tmp_path / "eval"
    args = ["evaluate", "-m", str(run / "checkpoints" / "best.pt"), "--data", str(val), "--out", str(out)]
    assert main([*args, "--boundary", "--worst", "2", "--json", str(out / "r.json"), "-b", "2"]) == 0
    printed = capsys.readouterr().out
    assert "worst 2 image(s)" in printed and "hd95" in printed and "class2" in printed
    for name in ("per_image.csv", "confusion.csv", "confusion.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "r.json").read_text())
    assert len(report["worst"]) == 2 and len(report["per_image"]) == 5
    assert report["classes"][1]["images_present"] <= 5 and "asd" in report["macro"]
    with open(out / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == [f"img{i:03d}" for i in range(5)]
    assert {"hd95_class1", "asd_class2", "precision_background", "pixels_pred_class1"} <= set(rows[0])


def test_bad_evaluate_options_exit_2(trained, tmp_path, capsys):
    val, run = trained
    ckpt = str(run / "checkpoints" / "best.pt")
    assert main(["evaluate", "-m", ckpt, "--data", str(val), "--worst", "-1"]) == 2
    assert "--worst" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(val)]) == 2
    assert "-m/--model is required" in capsys.readouterr().err

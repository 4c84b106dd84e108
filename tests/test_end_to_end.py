"""Train a tiny model -> evaluate -> predict, through the command line, checking files and values."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_dataset, slow_after
from unetseg.cli import main


def read_rows(run):
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


TINY = [*("--width", "4", "-e", "2", "-b", "4", "--val-rounds", "2", "--val-every", "1", "--save-epochs")]
TINY += ["--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_dataset(root / "data", count=12, size=(40, 36), mask_suffix="_mask")
    val = make_dataset(root / "val", count=4, size=(40, 36), seed=7)
    run = root / "run"
    assert main(["train", "--data", str(data), "--val-data", str(val), "--out", str(run), *TINY]) == 0
    return data, val, run


def test_run_directory_holds_config_metrics_log_and_checkpoints(trained):
    _, _, run = trained
    for name in (
        "config.yaml",
        "metrics.csv",
        "train.log",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "checkpoints/epoch_001.pt",
        "checkpoints/epoch_002.pt",
    ):
        assert (run / name).is_file(), name
    rows = read_rows(run)
    assert len(rows) == 4  # 2 rounds x 2 epochs
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["class_map"]["values"] == [0, 255] and ckpt["channels"] == 1
    assert "train_state" in torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_evaluate_agrees_with_the_validation_score(trained, tmp_path):
    _, val, run = trained
    rows = read_rows(run)
    best = max(float(r["dice_fg"]) for r in rows)
    out = tmp_path / "scores.json"
    assert main(["evaluate", "-m", str(run / "checkpoints" / "best.pt"), "--data", str(val), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 4 and len(report["per_image"]) == 4
    assert abs(report["dice_fg"] - best) < 1e-5


def test_predict_writes_masks_in_training_values_at_input_size(trained, tmp_path):
    data, _, run = trained
    inputs = sorted((data / "imgs").iterdir())[:3]
    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            "-m",
            str(run / "checkpoints" / "best.pt"),
            "-i",
            *map(str, inputs),
            "-o",
            str(out),
            "--overlay",
            "--quiet",
        ]
    )
    assert code == 0
    for source in inputs:
        mask = np.asarray(Image.open(out / f"{source.stem}.png"))
        assert mask.shape == (36, 40)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert Image.open(out / f"{source.stem}_overlay.png").size == (40, 36)


def test_predict_accepts_folders_and_globs(trained, tmp_path):
    data, _, run = trained
    ckpt = str(run / "checkpoints" / "best.pt")
    assert main(["predict", "-m", ckpt, "-i", str(data / "imgs"), "-o", str(tmp_path / "a"), "--quiet"]) == 0
    assert len(list((tmp_path / "a").glob("*.png"))) == 12 and (tmp_path / "a" / "predictions.csv").is_file()
    assert (
        main(["predict", "-m", ckpt, "-i", str(data / "imgs" / "img00[12].png"), "-o", str(tmp_path / "b"), "--quiet"])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "b").glob("*.png")) == ["img001.png", "img002.png"]


def test_python_api_predicts_from_path_pil_and_array(trained):
    import unetseg

    data, _, run = trained
    model = unetseg.load(run / "checkpoints" / "best.pt", device="cpu")
    path = sorted((data / "imgs").iterdir())[0]
    from_path = model.predict(path)
    assert np.array_equal(from_path, model.predict(Image.open(path)))
    assert np.array_equal(from_path, model.predict(np.asarray(Image.open(path))))
    assert model.predict_proba(path).shape == (2, 36, 40)


def test_load_initialises_from_a_checkpoint_and_existing_run_is_protected(trained, tmp_path, capsys):
    data, _, run = trained
    code = main(["train", "--data", str(data), "--out", str(run), *TINY])
    assert code == 2 and "--resume" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--data",
            str(data),
            "-f",
            str(run / "checkpoints" / "best.pt"),
            "--out",
            str(tmp_path / "r2"),
            *TINY[:-3],
            "-e",
            "1",
            "--quiet",
        ]
    )
    assert code == 0


def test_tiny_training_set_still_validates_every_epoch(tmp_path):
    data = make_dataset(tmp_path / "d", count=3, size=(32, 32))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "-v",
                "34",
                "-b",
                "8",
                "-c",
                "1",
                *TINY[:2],
                "-e",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    rows = read_rows(run)
    assert len(rows) == 2  # one round per epoch even with one batch per epoch
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]["n_classes"] == 1


@pytest.mark.parametrize(
    "args, needle",
    slow_after(  # a fresh process each (about 2.5 s); test_options keeps one subprocess case in the quick run
        [
            (["train", "--data", "/nonexistent/folder"], "does not exist"),
            (["train", "--data", "{empty}"], "no image folder"),
            (["train", "--data", "{data}", "-c", "1", "--width", "4"], None),
            (["predict", "-m", "/nonexistent.pt", "-i", "x.png"], "does not exist"),
            (["train", "--data", "{data}", "--time-budget", "soon"], "--time-budget"),
        ],
        quick=0,
    ),
)
def test_bad_input_exits_2_with_one_message(tmp_path, args, needle):
    data = make_dataset(tmp_path / "d", count=3, values=(0, 1, 2))
    (tmp_path / "empty").mkdir()
    args = [a.format(data=data, empty=tmp_path / "empty") for a in args]
    result = (
        subprocess.run(
            [sys.executable, "-m", "unetseg", *args, "--out", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if args[0] == "train"
        else subprocess.run([sys.executable, "-m", "unetseg", *args], capture_output=True, text=True, timeout=120)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (needle or "pass -c 3") in result.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "doctor", "plan"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage: unetseg" in capsys.readouterr().out

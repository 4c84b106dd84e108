"""The engine never loses work: exact resume after SIGKILL, SIGINT, non-finite steps, stopping rules."""

from __future__ import annotations

import csv
import hashlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_dataset
from unetseg.cli import main
from unetseg.training import loop as trainer

BASE = ["--width", "4", "-b", "2", "--workers", "1", "--val-rounds", "2", "--quiet", "--no-save-epochs"]


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]


def dice_column(run: Path) -> list[tuple[str, str]]:
    with open(run / "metrics.csv") as handle:
        return [(r["step"], r["dice_fg"]) for r in csv.DictReader(handle)]


def wait_for_step(path: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> int:
    """Poll last.pt (replaced atomically, so always whole) until it holds ``step`` or later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("training finished before it could be interrupted")
        if path.exists():
            saved = torch.load(path, weights_only=True)["train_state"]["state"]["step"]
            if saved >= step:
                return saved
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "unetseg", "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize(
    "extra",
    [[], ["--scheduler", "plateau", "--optimizer", "sgd", "--ema", "0.9", "--accumulate", "2"]],
    ids=["cosine-adamw", "plateau-sgd-ema-accumulate"],
)
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, extra):
    data = make_dataset(tmp_path / "d", count=16, size=(32, 32))
    args = ["--data", str(data), "-e", "6", "--save-every", "1", *BASE, *extra]
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    process = start([*args, "--out", str(tmp_path / "killed")])
    saved = wait_for_step(tmp_path / "killed" / "checkpoints" / "last.pt", 5, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert resumed["state"]["step"] == whole["state"]["step"] > saved
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["schedule"] == whole["schedule"]
    assert dice_column(tmp_path / "killed") == dice_column(tmp_path / "whole")


def test_sigint_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    data = make_dataset(tmp_path / "d", count=16, size=(32, 32))
    run = tmp_path / "run"
    process = start(["--data", str(data), "-e", "50", "--out", str(run), *BASE])
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert f"unetseg train --resume {run}" in err
    step = weights(run)["state"]["step"]
    assert step > 0
    assert main(["train", "--resume", str(run), "-e", "1", "--quiet"]) == 0  # already past epoch 1: stops at once


def test_corrupt_checkpoint_exits_2_everywhere(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    bad = tmp_path / "cut.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    for args in (
        ["train", "--resume", str(bad)],
        ["train", "--data", str(data), "-f", str(bad), "--out", str(tmp_path / "r")],
        ["predict", "-m", str(bad), "-i", str(data / "imgs")],
        ["evaluate", "-m", str(bad), "--data", str(data)],
    ):
        assert main(args) == 2
        assert "cut.pt" in capsys.readouterr().err


def inject_nan(monkeypatch, steps):
    """Make the normalised input NaN at the given optimizer steps."""
    original = trainer.to_unit
    state = {}

    def poisoned(images, norm, device):
        x = original(images, norm, device)
        run = state.get("run")
        return x * math.nan if run is not None and steps(run.state.step) else x

    real_build = trainer.build_run

    def build(cfg, resume):
        state["run"] = real_build(cfg, resume)
        return state["run"]

    monkeypatch.setattr(trainer, "to_unit", poisoned)
    monkeypatch.setattr(trainer, "build_run", build)
    return state


def test_nan_batches_are_skipped_and_counted(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", count=8, size=(32, 32))
    state = inject_nan(monkeypatch, lambda step: step in (2, 3))
    assert main(["train", "--data", str(data), "-e", "2", "--out", str(tmp_path / "r"), *BASE]) == 0
    run = state["run"]
    assert run.state.skipped_steps == 2 and run.state.step == 6  # 7 training images, batch 2, 2 epochs
    assert all(torch.isfinite(p).all() for p in run.learner.model.parameters())
    assert all(torch.isfinite(b).all() for b in run.learner.model.buffers() if b.is_floating_point())  # BatchNorm's too
    assert torch.load(tmp_path / "r" / "checkpoints" / "best.pt", weights_only=True)["score"]["step"] > 0


def test_consecutive_bad_steps_stop_the_run_and_keep_best(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "d", count=8, size=(32, 32))
    inject_nan(monkeypatch, lambda step: step >= 4)
    run = tmp_path / "r"
    code = main(["train", "--data", str(data), "-e", "9", "--out", str(run), "--max-bad-steps", "3", *BASE])
    assert code == 2
    assert "diverged" in capsys.readouterr().err
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["score"]["step"] <= 4 and all(
        torch.isfinite(v).all() for v in best["state_dict"].values() if v.is_floating_point()
    )


def test_absurd_learning_rate_is_stopped_with_advice(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", count=8, size=(32, 32))
    code = main(
        [
            "train",
            "--data",
            str(data),
            "-e",
            "20",
            "-l",
            "1e30",
            "--warmup-steps",
            "0",
            "--max-bad-steps",
            "3",
            "--out",
            str(tmp_path / "r"),
            *BASE,
        ]
    )
    assert code == 2
    assert "learning-rate" in capsys.readouterr().err


def test_time_budget_ends_the_run_when_the_clock_says_so(tmp_path, monkeypatch):
    """A clock that advances one second per training step, nothing else: an 8 s budget is 8 steps, on any machine."""
    from unetseg.training import loop

    data = make_dataset(tmp_path / "d", count=8, size=(32, 32))
    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    step = loop.train_step

    def one_second_step(*args, **kwargs):
        clock["now"] += 1.0
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", one_second_step)
    out = tmp_path / "r"
    assert main(["train", "--data", str(data), "-e", "100000", "--time-budget", "8s", "--out", str(out), *BASE]) == 0
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["train_state"]["state"]
    assert state["step"] == 8
    assert "reached --time-budget 8s" in (out / "train.log").read_text()


def test_early_stopping_after_patience_rounds(tmp_path):
    data = make_dataset(tmp_path / "d", count=8, size=(32, 32))
    run = tmp_path / "r"
    assert (
        main(["train", "--data", str(data), "-e", "50", "-l", "1e-12", "--patience", "2", "--out", str(run), *BASE])
        == 0
    )
    assert len(dice_column(run)) == 3  # the first round sets the best, two more without improvement stop it


def test_repeatable_with_a_seed(tmp_path):
    data = make_dataset(tmp_path / "d", count=8, size=(32, 32))
    for name in ("a", "b"):
        assert main(["train", "--data", str(data), "-e", "2", "--seed", "5", "--out", str(tmp_path / name), *BASE]) == 0
    digest = [
        hashlib.sha256(b"".join(v.numpy().tobytes() for v in weights(tmp_path / n)["model"].values())).digest()
        for n in ("a", "b")
    ]
    assert digest[0] == digest[1]


def test_failed_compilation_falls_back_to_eager(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "d", count=6, size=(32, 32))

    class Broken(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, x):
            raise RuntimeError("backend compiler failed")

    monkeypatch.setattr(torch, "compile", Broken)
    run = tmp_path / "r"
    assert main(["train", "--data", str(data), "-e", "1", "--compile", "--out", str(run), *BASE]) == 0
    assert "continuing without it" in (run / "train.log").read_text()  # a warning: kept in the log under --quiet
    assert weights(run)["state"]["step"] == 2

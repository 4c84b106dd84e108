"""Training loses nothing and explains itself: divergence, full disks, out of memory, locks, leftovers, resumes."""

from __future__ import annotations

import csv
import errno
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_dataset, slow_after
from unetseg.cli import main
from unetseg.config import TrainConfig, build
from unetseg.core import atomic
from unetseg.core.atomic import TEMP_PATTERN, write_atomic
from unetseg.data.prepare import prepare_for
from unetseg.errors import UserError
from unetseg.training import build as builder
from unetseg.training import loop as trainer
from unetseg.training.optim import Schedule
from unetseg.training.plan import make_plan
from unetseg.training.rundir import RunLock

FAST = ["--width", "8", "--patch-size", "32", "--no-plan", "-b", "2", "--workers", "1", "--quiet"]
FAST += ["--warmup-steps", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults") / "d", count=12, size=(32, 32))


def train(data: Path, run: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(run), *FAST, *extra])


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def finite(path: Path, key: str = "state_dict") -> bool:
    ckpt = torch.load(path, weights_only=True)
    tensors = ckpt[key] if key == "state_dict" else ckpt["train_state"]["model"]
    return all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def last_log_line(run: Path) -> str:
    return (run / "train.log").read_text().rstrip("\n").splitlines()[-1]


# --- faults that end a run: (what breaks, options, what the message and train.log's last line must say) ---


def infinite_rate_from(step: int):
    """A learning rate that becomes infinite at optimizer step ``step`` (weights go non-finite, gradients don't)."""
    real = Schedule.lr_at

    def lr_at(self, at, time_progress=0.0):
        return math.inf if at >= step else real(self, at, time_progress)

    return lr_at


def disk_full_on(suffix: str):
    """write_atomic that fails with ENOSPC (as a full disk does, at fsync) for files ending in ``suffix``."""
    real = atomic._write

    def write(path, content):
        if str(path).endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, content)

    return write


def out_of_memory_at(step: int):
    real = trainer.to_unit
    state = {"calls": 0}

    def to_unit(images, norm, device):
        state["calls"] += 1
        if state["calls"] > step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, norm, device)

    return to_unit


FAULTS = {
    "infinite-lr-from-the-start": (
        lambda mp: mp.setattr(Schedule, "lr_at", infinite_rate_from(0)),
        ["-e", "2"],
        ["diverged", "non-finite", "no best.pt was written"],
    ),
    "infinite-lr-after-a-good-round": (
        lambda mp: mp.setattr(Schedule, "lr_at", infinite_rate_from(5)),
        ["-e", "3", "--val-rounds", "1"],
        ["diverged", "non-finite", "best.pt from step 5", "is intact"],
    ),
    "disk-full-writing-a-checkpoint": (
        lambda mp: mp.setattr(atomic, "_write", disk_full_on("last.pt")),
        ["-e", "3"],
        ["last.pt: cannot write", "disk is full"],
    ),
    "disk-full-writing-metrics": (
        lambda mp: mp.setattr(atomic, "_write", disk_full_on("metrics.csv")),
        ["-e", "2"],
        ["metrics.csv: cannot write", "disk is full"],
    ),
    "out-of-memory": (
        lambda mp: mp.setattr(trainer, "to_unit", out_of_memory_at(3)),
        ["-e", "2"],
        ["out of memory", "-b/--batch-size", "--patch-size", "--checkpointing", "--amp"],
    ),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_fault_ends_the_run_with_exit_2_and_says_why_last(data, tmp_path, monkeypatch, capsys, fault):
    inject, options, needles = FAULTS[fault]
    inject(monkeypatch)
    run = tmp_path / "run"
    assert train(data, run, *options) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = last_log_line(run)
    for needle in needles:
        assert needle in err, (needle, err)
        assert needle in line, (needle, line)
    for name in ("best.pt", "last.pt"):  # whatever is on disk is a whole, finite model
        path = run / "checkpoints" / name
        if path.exists():
            assert finite(path)
    assert not [p for p in run.rglob("*") if TEMP_PATTERN.match(p.name)]


def test_divergence_keeps_the_good_best_and_last(data, tmp_path, monkeypatch):
    monkeypatch.setattr(Schedule, "lr_at", infinite_rate_from(5))
    run = tmp_path / "run"
    assert train(data, run, "-e", "3", "--val-rounds", "1") == 2
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["score"]["step"] == 5 and finite(run / "checkpoints" / "best.pt")
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["train_state"]["state"]["step"] == 5 and finite(run / "checkpoints" / "last.pt", "train")
    assert [int(r["step"]) for r in metric_rows(run)] == [5]  # the round on non-finite weights was not recorded


def test_out_of_memory_in_the_compiled_first_step_is_not_a_compile_failure(data, tmp_path, monkeypatch, capsys):
    class Compiled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "compile", Compiled)
    run = tmp_path / "run"
    assert train(data, run, "-e", "1", "--compile") == 2
    log = (run / "train.log").read_text()
    assert "torch.compile failed" not in log
    assert "out of memory" in last_log_line(run) and "--checkpointing" in capsys.readouterr().err


def test_background_checkpoint_failure_surfaces_on_the_training_thread(data, tmp_path, monkeypatch):
    """The write fails on the writer's thread; the run ends at the next step, not at the next checkpoint."""
    monkeypatch.setattr(atomic, "_write", disk_full_on("last.pt"))
    run = tmp_path / "run"
    assert train(data, run, "-e", "20", "--save-every", "1", "--val-rounds", "1") == 2
    # The first write (step 1) failed: the run stopped before the first round (step 5), not at the end of 20 epochs.
    assert not (run / "metrics.csv").exists()
    assert "last.pt: cannot write" in last_log_line(run)


# --- the run directory ---


def test_read_only_out_is_refused_before_training(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "locked" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "locked")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(builder, "prepare_for", lambda *a, **k: pytest.fail("data read before --out was checked"))
    assert train(data, out, "-e", "1") == 2
    err = capsys.readouterr().err
    assert str(out) in err and "read-only" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_out_folder_exits_2(data, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert train(data, parent / "run", "-e", "1") == 2
    finally:
        parent.chmod(0o755)
    assert str(parent / "run") in capsys.readouterr().err


def test_a_run_directory_in_use_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(data, run, "-e", "1") == 0
    before = (run / "metrics.csv").read_bytes()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from unetseg.training.rundir import RunLock; "
            "lock = RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        in_use = f"run directory {run} is in use by another unetseg train (pid {holder.pid})"
        assert train(data, run, "-e", "1", "--overwrite") == 2
        assert in_use in capsys.readouterr().err
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        assert in_use in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert (run / "metrics.csv").read_bytes() == before  # the refused runs wrote nothing
    assert train(data, run, "-e", "1", "--overwrite") == 0  # the lock went with its process


def test_lock_is_released_when_a_run_ends_in_process(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "-e", "1", "--max-steps", "1") == 0
    RunLock(run).release()  # would raise if the finished run still held it
    assert train(data, run, "-e", "1", "--max-steps", "1", "--overwrite") == 0


def test_overwrite_starts_a_fresh_run(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "-e", "2", "--save-epochs") == 0
    assert (run / "checkpoints" / "epoch_002.pt").exists()
    assert train(data, run, "-e", "1", "--save-epochs", "--val-rounds", "2", "--overwrite") == 0
    assert [int(r["step"]) for r in metric_rows(run)] == [2, 5]  # only the new run's rounds
    log = (run / "train.log").read_text()
    assert log.count("unetseg train ->") == 1 and "deleted the previous run's" in log
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "epoch_001.pt", "last.pt"]


def killed_mid_write(path: Path) -> None:
    """A process that dies (like kill -9) while write_atomic is writing ``path``: its temporary file stays."""
    code = (
        "import os, sys; from unetseg.core.atomic import write_atomic; "
        "write_atomic(sys.argv[1], lambda handle: (handle.write(b'partial'), handle.flush(), os._exit(9)))"
    )
    assert subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 9


def test_stale_temporaries_are_removed_on_resume_and_only_ours(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "-e", "1", "--val-rounds", "1") == 0
    killed_mid_write(run / "checkpoints" / "last.pt")
    killed_mid_write(run / "metrics.csv")
    stale = [p for p in run.rglob("*.tmp")]
    assert len(stale) == 2 and all(TEMP_PATTERN.match(p.name) for p in stale)
    foreign = [
        run / "checkpoints" / ".last.pt.tmp",  # no random part
        run / "checkpoints" / ".last.pt.abc.tmp",  # too short
        run / "checkpoints" / "last.pt.abcdefgh.tmp",  # no leading dot
        run / "notes.tmp",
        run / ".notes.ABCDEFGH.tmp",  # mkstemp never uses capitals
    ]
    for path in foreign:
        path.write_text("mine")
    assert main(["train", "--resume", str(run), "-e", "2", "--quiet"]) == 0
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in foreign)
    assert "temporary file(s) left by an interrupted write" in (run / "train.log").read_text()


# --- resuming from a damaged run ---


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_unreadable_last_pt_suggests_a_command_that_works(data, tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert train(data, run, "-e", "1", "--val-rounds", "1") == 0
    last = run / "checkpoints" / "last.pt"
    if damage == "corrupt":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        last.unlink()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "Traceback" not in err
    command = err.split("with: ", 1)[1].strip()
    assert command.startswith("unetseg train ")
    assert main(shlex.split(command)[1:]) == 0  # the advice, run as written
    fresh = Path(shlex.split(command)[shlex.split(command).index("--out") + 1])
    loaded = torch.load(fresh / "checkpoints" / "last.pt", weights_only=True)
    assert loaded["config"]["load"] == str(run / "checkpoints" / "best.pt")


def test_resume_from_weights_only_best_pt_says_what_works(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(data, run, "-e", "1", "--val-rounds", "1") == 0
    assert main(["train", "--resume", str(run / "checkpoints" / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/last.pt" in err and "-f/--load" in err


# --- the schedule of validation rounds ---


ROUND_CASES = [(3, 5, 4), (20, 3, 1), (3, 3, 3), (1, 5, 5), (4, 2, 2)]  # accumulate, rounds per epoch, rounds run


@pytest.mark.parametrize("accumulate, rounds, expected", slow_after(ROUND_CASES, 2))
def test_validation_rounds_fall_on_optimizer_steps(tmp_path, accumulate, rounds, expected):
    train_set = make_dataset(tmp_path / "train", count=20, size=(32, 32))
    val_set = make_dataset(tmp_path / "val", count=2, size=(32, 32), seed=1)
    run = tmp_path / "run"
    options = ["-e", "1", "--accumulate", str(accumulate), "--val-rounds", str(rounds), "--val-data", str(val_set)]
    assert train(train_set, run, *options) == 0
    assert len(metric_rows(run)) == expected  # 10 batches per epoch


def test_validation_points_end_accumulation_groups():
    for batches in range(1, 30):
        for accumulate in range(1, 6):
            for rounds in range(1, 8):
                points = trainer.validation_points(batches, rounds, accumulate)
                steps = -(-batches // accumulate)
                assert len(points) == min(rounds, steps) and batches - 1 in points
                assert all((p + 1) % accumulate == 0 or p == batches - 1 for p in points)


def test_plan_validates_every_epoch_when_epochs_are_given(tmp_path):
    train_set = make_dataset(tmp_path / "train", count=8, size=(32, 32))
    val_set = make_dataset(tmp_path / "val", count=8, size=(32, 32), seed=1)
    cfg = build(TrainConfig, {"data": str(train_set), "val_data": str(val_set), "workers": 1})
    dataset = prepare_for(cfg)
    cpu = torch.device("cpu")

    def every(**kwargs) -> int:
        return next(v for n, v, _ in make_plan(dataset, cpu, **kwargs) if n == "val_every")

    assert every() > 1  # validation is dear on this set: the plan alone spaces the rounds out
    assert every(fixed={"epochs": 2}) == 1
    assert every(fixed={"epochs": 2, "val_every": 3}) == every()  # --val-every given: the plan's own choice
    assert every(time_budget_s=600, fixed={"epochs": 2}) == every(time_budget_s=600)


def test_time_budget_is_parsed_once(data, tmp_path, monkeypatch):
    calls = []
    real = builder.parse_duration
    monkeypatch.setattr(builder, "parse_duration", lambda text: calls.append(text) or real(text))
    assert train(data, tmp_path / "run", "-e", "2", "--time-budget", "1h") == 0
    assert calls == ["1h"]


# --- the single place that maps storage errors ---


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_atomic_turns_storage_errors_into_user_errors(tmp_path, monkeypatch, code):
    target = tmp_path / "out" / "file.bin"
    target.parent.mkdir()
    target.write_bytes(b"old")

    def replace(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(UserError, match=str(target)):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and list(target.parent.iterdir()) == [target]


def test_write_atomic_keeps_other_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as raised:
        write_atomic(tmp_path / "f", b"x")
    assert not isinstance(raised.value, UserError)


def test_lock_file_names_its_owner(tmp_path):
    lock = RunLock(tmp_path)
    try:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path)
    finally:
        lock.release()
    RunLock(tmp_path).release()

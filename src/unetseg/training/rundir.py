"""The run directory: created writable before any training, locked for the run's lifetime, tidied on start.

One ``unetseg train`` owns a run directory at a time: an exclusive ``flock`` on ``RUN/.lock`` (held by rank 0
until the run ends, released by the kernel if the process dies) keeps a second one from interleaving
metrics.csv, train.log and checkpoints. ``--overwrite`` starts a fresh run: the previous run's files are deleted
(only the files unetseg writes; anything else in the folder stays).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from datetime import datetime
from pathlib import Path

from unetseg.core.atomic import remove_stale_temporaries, storage_error
from unetseg.errors import UserError

LOCK_NAME = ".lock"
PILOTS_DIR = "pilots"  # the run's pilot runs (training/pilot.py), made before the main run starts
# What a run writes at the top of its directory (--overwrite deletes these, and checkpoints/*.pt).
RUN_FILES = ("config.yaml", "metrics.csv", "train.log", "report.html")
RUN_FOLDERS = ("plots", "tensorboard", "wandb", PILOTS_DIR)
TEMP_FOLDERS = (".", "checkpoints", "plots")  # where atomic writes happen


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``RUN/.lock``; the file holds the owner's pid."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run's lifetime, closed in release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(
                f"run directory {run_dir} is in use by another unetseg train (pid {owner}); wait for it to finish, "
                "stop it, or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle: object | None = handle

    def release(self) -> None:
        """Unlock (idempotent); the file stays, so that a waiting process never locks a deleted inode."""
        if self.handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def unusable(path: Path, err: OSError) -> UserError:
    """--out cannot be created or written: the storage's reason, or the system's."""
    mapped = storage_error(err, path)
    reason = str(mapped).split(": ", 1)[1] if mapped else f"{err.strerror}; choose another --out"
    return UserError(f"--out {path}: cannot use it as the run directory ({reason})")


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def open_run_dir(path: Path, resuming: bool, overwrite: bool) -> tuple[RunLock, list[str]]:
    """Check, create and lock ``path``; returns the lock and notes for the log (what was removed).

    An existing, non-empty directory is used only when resuming or with ``--overwrite``.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path}: this is a file, not a directory; choose another --out")
    if path.exists() and not (resuming or overwrite) and any(not empty_start(p) for p in path.iterdir()):
        raise UserError(
            f"--out {path}: run directory exists and is not empty; pass --resume {path} to continue it, "
            "--overwrite to start a fresh run in it (the old run's checkpoints, metrics and logs are deleted), "
            "or another --out"
        )
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock = RunLock(path)
    except OSError as err:
        raise unusable(path, err) from None
    try:
        notes = clear_previous_run(path) if overwrite and not resuming else []
        stale = [p for folder in TEMP_FOLDERS for p in remove_stale_temporaries(path / folder)]
    except OSError as err:
        lock.release()
        raise unusable(path, err) from None
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) left by an interrupted write: {stale[0].name}, ...")
    return lock, notes


def empty_start(entry: Path) -> bool:
    """What a start that trained nothing yet leaves: the lock, an empty checkpoints/, this run's own pilots/."""
    if entry.name == "checkpoints" and entry.is_dir():
        return not any(entry.iterdir())
    return entry.name in (LOCK_NAME, PILOTS_DIR)


def clear_previous_run(path: Path) -> list[str]:
    """--overwrite: delete the previous run's files (config, metrics, log, plots, trackers, checkpoints)."""
    removed = [name for name in RUN_FILES if (path / name).is_file()]
    for name in removed:
        (path / name).unlink()
    for name in RUN_FOLDERS:
        if (path / name).is_dir():
            shutil.rmtree(path / name)
            removed.append(f"{name}/")
    checkpoints = sorted((path / "checkpoints").glob("*.pt"))
    for file in checkpoints:
        file.unlink()
    if checkpoints:
        removed.append(f"{len(checkpoints)} checkpoint(s)")
    return [f"--overwrite: deleted the previous run's {', '.join(removed)}"] if removed else []

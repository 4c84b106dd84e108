"""Crash-safe file writes (no torch import: the ONNX path and the data cache use it too)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from unetseg.errors import UserError

# The temporary files write_atomic makes: ".<name>.<8 random characters>.tmp", mkstemp's alphabet. A crash
# (kill -9, power loss) between creating one and renaming it leaves it behind; only names of this exact shape
# are ever cleaned up (remove_stale_temporaries).
TEMP_SUFFIX = ".tmp"
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")

# Errors of the storage, not of the program: the user can fix them (free space, choose a writable folder).
STORAGE_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
}


def storage_error(err: OSError, path: str | Path) -> UserError | None:
    """The UserError for a full, read-only or forbidden location (naming ``path``); None for other errors."""
    advice = STORAGE_ERRORS.get(err.errno)
    return UserError(f"{path}: cannot write ({os.strerror(err.errno)}): {advice}") if advice else None


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object] | bytes | memoryview) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync, then rename over it.

    ``write`` is the bytes to write or a function that writes to the open handle. A crash at any moment leaves
    either the old file or the new one, never a partial file. A full disk, a read-only file system or a
    forbidden folder is a UserError that names ``path``.
    """
    path = Path(path)
    try:
        _write(path, write)
    except OSError as err:
        mapped = storage_error(err, path)
        if mapped is None:
            raise
        raise mapped from None


def _write(path: Path, write: Callable[[BinaryIO], object] | bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are as readable as a plain write makes them
        with os.fdopen(fd, "wb") as handle:
            handle.write(write) if isinstance(write, (bytes, memoryview)) else write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed write_atomic left in ``folder`` (not recursive); returns them.

    Only names of write_atomic's own shape go; call it only where no other process writes (e.g. under a lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if TEMP_PATTERN.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return sorted(removed)

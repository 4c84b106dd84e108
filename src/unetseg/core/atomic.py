"""Crash-safe file writes (no torch import: the ONNX path and the data cache use it too)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object] | bytes | memoryview) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync, then rename over it.

    ``write`` is the bytes to write or a function that writes to the open handle. A crash at any moment leaves
    either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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

"""The decoded cache: every pair decoded once at training resolution into memory-mapped arrays.

``<cache folder>/decoded-<key>/`` holds ``images.bin`` and ``masks.bin`` (the pixels of every sample back to back,
64-byte aligned; images uint8, or uint16 for 16-bit data) and ``meta.json`` (offsets, shapes, dtypes and
per-sample statistics). The key hashes everything that changes the pixels: each file's path, size and mtime, the
scale, the channel count, the class map and --resize-to-mask, so any change builds a new cache. Samples are
read-only views into the mapped files: the OS pages them in and out, so datasets larger than RAM work, and no
epoch decodes a file again.

The arrays are written with ordinary file writes into space reserved up front, never through a writable map: a
full disk is then an error the user is told about (a page the filesystem cannot back would kill the process with
SIGBUS). A cache that does not check out when opened (sizes, offsets, shapes, JSON) is deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from unetseg.core.atomic import write_atomic
from unetseg.data.checks import FolderCheck
from unetseg.data.classmap import ClassMap
from unetseg.data.folder import Pair
from unetseg.data.index import cache_lock, digest
from unetseg.data.samples import Sample, image_stats, load_sample, load_samples, scaled_size
from unetseg.errors import DataError, UserError

CACHE_VERSION = 1
ALIGN = 64  # byte alignment of every array: uint16 views and vector loads stay aligned
KEEP_CACHES = 3  # decoded caches kept per dataset (other scales, channels or class maps); older ones are deleted
PARTS = ("images.bin", "masks.bin", "meta.json")
FULL = (errno.ENOSPC, errno.EDQUOT)  # no room left, or over the user's quota: the same fix


class Damaged(Exception):
    """A decoded cache whose files do not agree with each other; the message says how."""


def decoded_samples(
    check: FolderCheck,
    class_map: ClassMap,
    channels: int,
    scale: float,
    resize_to_mask: bool = False,
    workers: int = 4,
) -> list[Sample]:
    """The samples of ``check.pairs`` at training resolution, from the cache (built first if needed).

    Without a cache folder (``--no-cache``, or nowhere writable) they are decoded into memory instead.
    """
    if check.home is None:
        return load_samples(check.pairs, class_map, channels, scale, workers, resize_to_mask)
    folder = check.home / f"decoded-{cache_key(check, class_map, channels, scale, resize_to_mask)}"
    layout = _layout(check, channels, scale, resize_to_mask)
    with cache_lock(check.home, "decoded"):  # one process builds, the others (DDP ranks) wait and reuse it
        samples, damage = _open_or_discard(folder, check, layout)
        if samples is None:
            _build_or_explain(folder, check, layout, (class_map, channels, scale, resize_to_mask), workers)
            _prune(check.home, folder)
            try:
                samples = _open(folder, check, layout)
            except Damaged as err:  # the files just written do not read back: the disk is failing
                raise UserError(f"the data cache at {folder} does not read back ({err}); pass --no-cache") from None
            if damage:
                print(f"warning: data cache at {folder} was damaged ({damage}); rebuilt", file=sys.stderr, flush=True)
    return samples


def cache_key(check: FolderCheck, class_map: ClassMap, channels: int, scale: float, resize_to_mask: bool) -> str:
    """A hash of every input that changes the decoded pixels."""
    files = [
        [str(p.image), i.size, i.mtime_ns, str(p.mask), m.size, m.mtime_ns]
        for p, i, m in zip(check.pairs, check.scan.images, check.scan.masks)
    ]
    settings = [CACHE_VERSION, scale, channels, class_map.to_dict(), resize_to_mask]
    return digest(json.dumps([settings, files]), size=12)


def _layout(check: FolderCheck, channels: int, scale: float, resize_to_mask: bool) -> tuple[list[dict], int, int]:
    """Where each sample goes: shapes from the scan, so threads can write their slices in any order."""
    entries, image_end, mask_end, problems = [], 0, 0, []
    for pair, image, mask in zip(check.pairs, check.scan.images, check.scan.masks):
        base = mask.shape if resize_to_mask else image.shape
        try:
            height, width = scaled_size(base[0], base[1], scale, pair.image)
        except UserError as err:
            problems.append(str(err))
            continue
        itemsize = 2 if image.dtype == "uint16" else 1
        entries.append(
            {
                "name": pair.image.stem,
                "image": [image_end, height, width, channels, image.dtype],
                "mask": [mask_end, height, width],
            }
        )
        image_end += -(-height * width * channels * itemsize // ALIGN) * ALIGN
        mask_end += -(-height * width // ALIGN) * ALIGN
    if problems:
        raise DataError(problems)
    return entries, image_end, mask_end


def _build_or_explain(folder: Path, check: FolderCheck, layout: tuple, settings: tuple, workers: int) -> None:
    """``_build``; a write that fails leaves no cache behind and becomes a message with the fix."""
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        _build(folder, tmp, check, layout, settings, workers)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)  # half-written: nothing a later run could trust
        if err.errno in FULL:
            needed = -(-(layout[1] + layout[2]) // 2**20)
            raise UserError(
                f"no space left on the device for the data cache at {folder} (needs {needed} MB): free some space "
                "or pass --no-cache (or --cache-dir DIR on a disk with room)"
            ) from None
        raise UserError(
            f"cannot write the data cache at {folder} ({err}); free some space, pass --cache-dir DIR on a disk "
            "with room, or --no-cache to decode into memory"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build(folder: Path, tmp: Path, check: FolderCheck, layout: tuple, settings: tuple, workers: int) -> None:
    """Decode every pair in threads into files reserved in a temp folder, then rename the folder into place."""
    entries, image_bytes, mask_bytes = layout
    shutil.rmtree(tmp, ignore_errors=True)  # left by a build that crashed (builders hold the lock)
    tmp.mkdir(parents=True)
    with _Reserved(tmp / "images.bin", image_bytes) as images, _Reserved(tmp / "masks.bin", mask_bytes) as masks:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            work = lambda i: _write(entries[i], check.pairs[i], images, masks, *settings)  # noqa: E731
            problems = [p for p in pool.map(work, range(len(entries))) if p]
        if problems:
            raise DataError(problems)
        images.sync()
        masks.sync()
    meta = {"version": CACHE_VERSION, "samples": entries}
    write_atomic(tmp / "meta.json", json.dumps(meta, separators=(",", ":")).encode())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class _Reserved:
    """A file of ``size`` bytes (at least 1), its blocks reserved up front, written at offsets from any thread."""

    def __init__(self, path: Path, size: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
        self.lock = threading.Lock()  # only where os.pwrite is missing (Windows): seek + write must not interleave
        try:
            _reserve(self.fd, max(size, 1))
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, offset: int, data: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        while len(view):
            if hasattr(os, "pwrite"):
                written = os.pwrite(self.fd, view, offset)
            else:
                with self.lock:
                    os.lseek(self.fd, offset, os.SEEK_SET)
                    written = os.write(self.fd, view)
            view, offset = view[written:], offset + written

    def sync(self) -> None:
        os.fsync(self.fd)  # a full disk can still surface here (delayed allocation), as an OSError

    def __enter__(self) -> _Reserved:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes now, so a full disk fails here (ENOSPC) and not while the cache is read."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # not on this platform (macOS, Windows)
        pass
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # unsupported by this filesystem
            raise
    chunk = bytes(min(size, 2**22))
    for offset in range(0, size, len(chunk)):  # zeros written for real take the blocks the cache needs
        os.lseek(fd, offset, os.SEEK_SET)
        os.write(fd, chunk[: size - offset])


def _write(
    entry: dict,
    pair: Pair,
    images: _Reserved,
    masks: _Reserved,
    class_map: ClassMap,
    channels: int,
    scale: float,
    resize_to_mask: bool,
) -> str | None:
    """Decode one pair into its slices of the cache files and note its statistics; returns a problem or None."""
    try:
        sample = load_sample(pair, class_map, channels, scale, resize_to_mask)
    except UserError as err:
        return str(err)
    offset, height, width, _, dtype = entry["image"]
    if sample.image.shape != (height, width, channels) or sample.image.dtype != np.dtype(dtype):
        return f"{pair.image}: changed while the dataset was being read; run again"
    images.write(offset, sample.image)
    masks.write(entry["mask"][0], sample.mask.astype(np.uint8, copy=False))
    entry["stats"] = image_stats(sample.image)
    entry["class_counts"] = np.bincount(sample.mask.ravel(), minlength=256)[: class_map.num_classes].tolist()
    return None


def _open_or_discard(folder: Path, check: FolderCheck, layout: tuple) -> tuple[list[Sample] | None, str]:
    """The cached samples; or None, and why when a damaged cache was deleted (it is rebuilt)."""
    try:
        return _open(folder, check, layout), ""
    except Damaged as err:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        else:  # a file or a link where the cache folder belongs
            folder.unlink(missing_ok=True)
        return None, str(err)


def _open(folder: Path, check: FolderCheck, layout: tuple) -> list[Sample] | None:
    """Samples as views into the mapped files; None when there is no cache. ``Damaged`` when its parts disagree."""
    if not os.path.lexists(folder):
        return None
    entries = _entries(folder, check, layout)
    arrays = []
    for name, end in (("images.bin", layout[1]), ("masks.bin", layout[2])):
        try:
            arrays.append(np.memmap(folder / name, dtype=np.uint8, mode="r", shape=(max(end, 1),)))
        except (OSError, ValueError) as err:
            raise Damaged(f"{name} cannot be read: {err}") from None
    images, masks = arrays
    samples = []
    for entry in entries:
        offset, height, width, channels, dtype = entry["image"]
        size = height * width * channels * np.dtype(dtype).itemsize
        image = images[offset : offset + size].view(dtype).reshape(height, width, channels)
        mask = masks[entry["mask"][0] : entry["mask"][0] + height * width].reshape(height, width)
        samples.append(Sample(entry["name"], image, mask, entry["stats"], np.array(entry["class_counts"])))
    with contextlib.suppress(OSError):  # a read-only cache is still a good one
        os.utime(folder / "meta.json")  # last use: pruning keeps the most recently used caches
    return samples


def _entries(folder: Path, check: FolderCheck, layout: tuple) -> list[dict]:
    """The entries of ``meta.json``, checked against the layout these pairs need and the files' lengths."""
    for part in PARTS:
        if not (folder / part).is_file():
            raise Damaged(f"{part} is missing")
    try:
        meta = json.loads((folder / "meta.json").read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise Damaged(f"meta.json is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or not isinstance(meta.get("samples"), list):
        raise Damaged("meta.json does not describe a decoded cache of this version")
    entries, expected = meta["samples"], layout[0]
    if len(entries) != len(expected):
        raise Damaged(f"meta.json lists {len(entries)} samples, the dataset has {len(expected)}")
    for entry, want in zip(entries, expected):
        if not isinstance(entry, dict) or any(entry.get(k) != want[k] for k in ("name", "image", "mask")):
            raise Damaged(f"the offsets or shapes in meta.json do not match sample {want['name']}")
        if not (_good_stats(entry.get("stats"), want["image"][3]) and _counts(entry.get("class_counts"))):
            raise Damaged(f"the statistics in meta.json of sample {want['name']} are not numbers")
    for part, end in (("images.bin", layout[1]), ("masks.bin", layout[2])):
        size = (folder / part).stat().st_size
        if size < max(end, 1):
            raise Damaged(f"{part} is {size} bytes, {max(end, 1)} expected (truncated)")
    return entries


def _good_stats(stats: object, channels: int) -> bool:
    """``image_stats`` as JSON gives it back: per-channel sums, a pixel count, the top value, a bit depth."""
    if not isinstance(stats, dict) or not isinstance(stats.get("eight_bit"), bool):
        return False
    sums = [stats.get("sum"), stats.get("sumsq")]
    if not all(isinstance(v, list) and len(v) == channels and all(_number(x) for x in v) for v in sums):
        return False
    return _counts([stats.get("count"), stats.get("top")]) and stats["count"] > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _counts(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _prune(home: Path, current: Path) -> None:
    """Keep the ``KEEP_CACHES`` most recently used decoded caches of this dataset."""
    caches = [p for p in home.glob("decoded-*") if p.is_dir() and p != current and (p / "meta.json").is_file()]
    caches.sort(key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)
    for old in caches[KEEP_CACHES - 1 :]:
        shutil.rmtree(old, ignore_errors=True)  # a process still mapping these files keeps reading them

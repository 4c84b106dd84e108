"""The scan index: what each file holds (size, channels, mask values, content hash), cached by file size and mtime.

A second start re-reads only the files whose size or modification time changed. The index is one JSON file per
pair of folders, written atomically (temp file, fsync, rename) into the cache folder of the dataset (see
``cache_home``). Scanning runs in threads: decoders and hashing release the GIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unetseg.core.atomic import write_atomic
from unetseg.data.folder import Pair, color_keys, image_channels
from unetseg.data.io import describe, probe_jpeg, read_bytes, read_image, read_mask
from unetseg.errors import DataError, UserError

INDEX_VERSION = 1
CACHE_DIR_NAME = ".unetseg"  # inside the dataset folder; hidden, so pairing ignores it


@dataclass
class FileInfo:
    """One scanned file. Images fill the image fields, masks the mask fields."""

    size: int
    mtime_ns: int
    hash: str  # content hash (blake2b of the bytes): finds duplicates
    kind: str  # format and mode from the header, e.g. "PNG P", "JPEG RGB", "TIFF", "NPY"
    shape: list[int]  # (H, W)
    dtype: str
    channels: int = 1  # as stored, alpha included; 3 for a colour mask
    info_channels: int = 1  # images: channels that carry information (a constant alpha does not)
    values: list[int] = field(default_factory=list)  # masks: sorted distinct values (r << 16 | g << 8 | b for colour)
    counts: list[int] = field(default_factory=list)  # masks: pixels holding each value

    @property
    def is_color(self) -> bool:
        return self.channels == 3 and bool(self.values)


@dataclass
class ScanResult:
    """What one pass over a folder found: per-pair sizes, channels, bit depth and mask values."""

    pairs: list[Pair]
    sizes: list[tuple[int, int]]  # (H, W) of each image
    channels: list[int]  # channels of each image, constant alpha already dropped
    dtypes: list[str]
    mask_values: list[np.ndarray] = field(default_factory=list)  # sorted unique values (ints, or RGB keys)
    mask_is_color: list[bool] = field(default_factory=list)
    raw_channels: list[int] = field(default_factory=list)  # channels as stored, alpha included
    notes: list[str] = field(default_factory=list)
    mask_counts: list[np.ndarray] = field(default_factory=list)  # pixels per value, aligned with mask_values
    images: list[FileInfo] = field(default_factory=list)
    masks: list[FileInfo] = field(default_factory=list)

    @classmethod
    def from_infos(cls, pairs: list[Pair], images: list[FileInfo], masks: list[FileInfo]) -> ScanResult:
        return cls(
            pairs=pairs,
            sizes=[(i.shape[0], i.shape[1]) for i in images],
            channels=[i.info_channels for i in images],
            dtypes=[i.dtype for i in images],
            mask_values=[np.array(m.values, dtype=np.int64) for m in masks],
            mask_is_color=[m.is_color for m in masks],
            raw_channels=[i.channels for i in images],
            mask_counts=[np.array(m.counts, dtype=np.int64) for m in masks],
            images=images,
            masks=masks,
        )

    def __add__(self, other: ScanResult) -> ScanResult:
        return ScanResult.from_infos(self.pairs + other.pairs, self.images + other.images, self.masks + other.masks)


def digest(text: str, size: int = 8) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=size).hexdigest()


def cache_home(root: Path, cache_dir: str | Path | None) -> Path | None:
    """The folder for a dataset's index and decoded cache, created; None when nowhere is writable.

    ``<dataset>/.unetseg`` keeps the cache next to the data (it moves and is deleted with it); a read-only dataset
    folder falls back to ``$XDG_CACHE_HOME/unetseg/<hash of its path>`` (``~/.cache`` by default). ``--cache-dir``
    puts it under that folder instead.
    """
    key = f"{root.name or 'data'}-{digest(str(root.resolve()))}"
    candidates = [Path(cache_dir) / key] if cache_dir else [root / CACHE_DIR_NAME, *_user_cache(key)]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                return folder
        except OSError:
            continue
    if cache_dir:
        raise UserError(f"--cache-dir {cache_dir}: cannot write there; pass a writable folder")
    return None


def _user_cache(key: str) -> list[Path]:
    """``$XDG_CACHE_HOME/unetseg/<key>`` (``~/.cache`` by default); none when there is no home folder either."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative path is to be ignored
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no HOME and no user entry (some containers)
            return []
    return [Path(base) / "unetseg" / key]


class FileIndex:
    """Scanned files by role ("image" or "mask") and path; an entry counts only while size and mtime agree."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.changed = path, False
        self.entries: dict[str, dict[str, FileInfo]] = {"image": {}, "mask": {}}
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("version") != INDEX_VERSION:
                return
            for role in self.entries:
                infos = {k: FileInfo(**v) for k, v in data[role].items()}
                self.entries[role] = {k: i for k, i in infos.items() if _sane(i)}  # others are read again
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            self.entries = {"image": {}, "mask": {}}  # a damaged index is rebuilt, never trusted

    def get(self, role: str, path: Path, stat: os.stat_result) -> FileInfo | None:
        info = self.entries[role].get(str(path))
        if info is not None and info.size == stat.st_size and info.mtime_ns == stat.st_mtime_ns:
            return info
        return None

    def put(self, role: str, path: Path, info: FileInfo) -> None:
        self.entries[role][str(path)] = info
        self.changed = True

    def save(self, keep: set[tuple[str, str]]) -> None:
        """Drop entries of files no longer in the folders, and write the index if anything changed."""
        for role, entries in self.entries.items():
            for name in [n for n in entries if (role, n) not in keep]:
                del entries[name]
                self.changed = True
        if self.path is None or not self.changed:
            return
        data = {"version": INDEX_VERSION} | {
            role: {k: asdict(v) for k, v in entries.items()} for role, entries in self.entries.items()
        }
        with contextlib.suppress(OSError):  # the index only saves time; the next start scans again
            write_atomic(self.path, json.dumps(data, separators=(",", ":")).encode())
        self.changed = False


def _sane(info: FileInfo) -> bool:
    """An index entry with the types and ranges ``scan_file`` writes (a damaged one is scanned again)."""
    ints = (info.size, info.mtime_ns, info.channels, info.info_channels)
    return (
        all(type(v) is int for v in ints)
        and all(isinstance(v, str) for v in (info.hash, info.kind, info.dtype))
        and isinstance(info.shape, list)
        and len(info.shape) == 2
        and all(type(v) is int and v > 0 for v in info.shape)
        and 1 <= info.info_channels <= info.channels
        and isinstance(info.values, list)
        and isinstance(info.counts, list)
        and len(info.values) == len(info.counts)
        and all(type(v) is int and v >= 0 for v in info.values + info.counts)
    )


@contextlib.contextmanager
def cache_lock(home: Path | None, name: str = "lock") -> Iterator[None]:
    """Hold ``home/<name>.lock`` so that concurrent starts (DDP ranks) do work once; the others wait, then reuse it."""
    if home is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent writers each write a temp file, one wins
        yield
        return
    try:
        handle = open(home / f"{name}.lock", "a")  # noqa: SIM115 - closed below
    except OSError:  # a full or read-only disk: no lock file, and nothing here will be written either
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_index(home: Path | None, image_dir: Path, mask_dir: Path) -> FileIndex:
    """The index of this pair of folders in ``home`` (an index that never saves when ``home`` is None)."""
    if home is None:
        return FileIndex(None)
    return FileIndex(home / f"index-{digest(f'{image_dir.resolve()}|{mask_dir.resolve()}')}.json")


def value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a mask (RGB keys for colour masks) and the pixels holding each."""
    raw = color_keys(mask) if mask.ndim == 3 else mask
    if raw.dtype in (np.uint8, np.uint16):
        counts = np.bincount(raw.ravel(), minlength=256)  # much faster than np.unique's sort
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(raw, return_counts=True)


def scan_file(role: str, path: Path) -> FileInfo:
    """Read one file completely (a truncated file fails here) and describe it."""
    stat = os.stat(path)
    data = read_bytes(path)
    common = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "kind": describe(path, data)}
    common["hash"] = hashlib.blake2b(data, digest_size=16).hexdigest()
    probe = probe_jpeg(path, data) if role == "image" and path.suffix.lower() in (".jpg", ".jpeg") else None
    if probe is not None:  # the scan needs no pixels of a JPEG image: its stream was checked at 1/8 scale
        return FileInfo(**common, shape=probe[0], dtype="uint8", channels=probe[1], info_channels=probe[1])
    if role == "image":
        image = read_image(path, data)
        return FileInfo(
            **common,
            shape=list(image.shape[:2]),
            dtype=str(image.dtype),
            channels=image.shape[2],
            info_channels=image_channels(image),
        )
    mask = read_mask(path, data)
    values, counts = value_counts(mask)
    channels = 3 if mask.ndim == 3 else 1
    return FileInfo(
        **common,
        shape=list(mask.shape[:2]),
        dtype=str(mask.dtype),
        channels=channels,
        values=values.tolist(),
        counts=counts.tolist(),
    )


def scan_files(
    files: list[tuple[str, Path]], index: FileIndex, workers: int | None = None
) -> tuple[dict[tuple[str, Path], FileInfo], dict[tuple[str, Path], str]]:
    """Info for every (role, path), from the index where size and mtime agree, else read in threads.

    Returns the infos and the problems (one message per unreadable file); the index is updated and saved.
    """
    infos: dict[tuple[str, Path], FileInfo] = {}
    todo = []
    for role, path in files:
        try:
            info = index.get(role, path, os.stat(path))
        except OSError:
            info = None  # scan_file reports it
        if info is None:
            todo.append((role, path))
        else:
            infos[(role, path)] = info
    problems: dict[tuple[str, Path], str] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(8, 2 * (os.cpu_count() or 1))) as pool:
            futures = {key: pool.submit(scan_file, *key) for key in todo}
            for key, future in futures.items():
                try:
                    infos[key] = future.result()
                    index.put(key[0], key[1], infos[key])
                except UserError as err:
                    problems[key] = str(err)
                except OSError as err:
                    problems[key] = f"{key[1]}: cannot read this file ({err}); replace or remove it"
    index.save({(role, str(path)) for role, path in files})
    return infos, problems


def scan_pairs(pairs: list[Pair], workers: int | None = None, index: FileIndex | None = None) -> ScanResult:
    """Scan every pair (through ``index`` when given); any unreadable file raises one ``DataError`` for all."""
    files = [("image", p.image) for p in pairs] + [("mask", p.mask) for p in pairs]
    infos, problems = scan_files(files, index or FileIndex(None), workers)
    if problems:
        raise DataError(list(problems.values()))
    images = [infos[("image", p.image)] for p in pairs]
    return ScanResult.from_infos(pairs, images, [infos[("mask", p.mask)] for p in pairs])

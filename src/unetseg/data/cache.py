"""The decoded cache: every pair decoded once at training resolution into memory-mapped arrays.

``<cache folder>/decoded-<key>/`` holds ``images.bin`` and ``masks.bin`` (the pixels of every sample back to back,
64-byte aligned; images uint8, or uint16 for 16-bit data) and ``meta.json`` (offsets, shapes, dtypes and
per-sample statistics). The key hashes everything that changes the pixels: each file's path, size and mtime, the
scale, the channel count, the class map and --resize-to-mask, so any change builds a new cache. Samples are
read-only views into the mapped files: the OS pages them in and out, so datasets larger than RAM work, and no
epoch decodes a file again.
"""

from __future__ import annotations

import json
import os
import shutil
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
    with cache_lock(check.home, "decoded"):  # one process builds, the others (DDP ranks) wait and reuse it
        samples = _open(folder, check)
        if samples is None:
            try:
                _build(folder, check, class_map, channels, scale, resize_to_mask, workers)
            except OSError as err:
                raise UserError(
                    f"cannot write the decoded cache in {check.home} ({err}); free some space, "
                    "pass --cache-dir DIR on a disk with room, or --no-cache to decode into memory"
                ) from err
            _prune(check.home, folder)
            samples = _open(folder, check)
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


def _build(
    folder: Path,
    check: FolderCheck,
    class_map: ClassMap,
    channels: int,
    scale: float,
    resize_to_mask: bool,
    workers: int,
) -> None:
    """Decode every pair in threads straight into the mapped files of a temp folder, then rename it into place."""
    entries, image_bytes, mask_bytes = _layout(check, channels, scale, resize_to_mask)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a build that crashed (builders hold the lock)
    tmp.mkdir(parents=True)
    images = np.memmap(tmp / "images.bin", dtype=np.uint8, mode="w+", shape=(max(image_bytes, 1),))
    masks = np.memmap(tmp / "masks.bin", dtype=np.uint8, mode="w+", shape=(max(mask_bytes, 1),))
    settings = (class_map, channels, scale, resize_to_mask)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda i: _write(entries[i], check.pairs[i], images, masks, *settings), range(len(entries)))
        problems = [p for p in results if p]
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(problems)
    images.flush()
    masks.flush()
    meta = {"version": CACHE_VERSION, "samples": entries}
    write_atomic(tmp / "meta.json", json.dumps(meta, separators=(",", ":")).encode())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _write(
    entry: dict,
    pair: Pair,
    images: np.memmap,
    masks: np.memmap,
    class_map: ClassMap,
    channels: int,
    scale: float,
    resize_to_mask: bool,
) -> str | None:
    """Decode one pair into its slices of the mapped files and note its statistics; returns a problem or None."""
    try:
        sample = load_sample(pair, class_map, channels, scale, resize_to_mask)
    except UserError as err:
        return str(err)
    offset, height, width, _, dtype = entry["image"]
    if sample.image.shape != (height, width, channels) or sample.image.dtype != np.dtype(dtype):
        return f"{pair.image}: changed while the dataset was being read; run again"
    flat = np.ascontiguousarray(sample.image).reshape(-1).view(np.uint8)
    images[offset : offset + flat.size] = flat
    masks[entry["mask"][0] : entry["mask"][0] + height * width] = sample.mask.reshape(-1)
    entry["stats"] = image_stats(sample.image)
    entry["class_counts"] = np.bincount(sample.mask.ravel(), minlength=256)[: class_map.num_classes].tolist()
    return None


def _open(folder: Path, check: FolderCheck) -> list[Sample] | None:
    """Samples as views into the mapped files, or None when the cache is missing or does not fit these pairs."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    entries = meta.get("samples", [])
    if meta.get("version") != CACHE_VERSION or [e["name"] for e in entries] != [p.image.stem for p in check.pairs]:
        return None
    images = np.memmap(folder / "images.bin", dtype=np.uint8, mode="r")
    masks = np.memmap(folder / "masks.bin", dtype=np.uint8, mode="r")
    samples = []
    for entry in entries:
        offset, height, width, channels, dtype = entry["image"]
        size = height * width * channels * np.dtype(dtype).itemsize
        image = images[offset : offset + size].view(dtype).reshape(height, width, channels)
        mask = masks[entry["mask"][0] : entry["mask"][0] + height * width].reshape(height, width)
        samples.append(Sample(entry["name"], image, mask, entry["stats"], np.array(entry["class_counts"])))
    os.utime(folder / "meta.json")  # last use: pruning keeps the most recently used caches
    return samples


def _prune(home: Path, current: Path) -> None:
    """Keep the ``KEEP_CACHES`` most recently used decoded caches of this dataset."""
    caches = [p for p in home.glob("decoded-*") if p.is_dir() and p != current and (p / "meta.json").is_file()]
    caches.sort(key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)
    for old in caches[KEEP_CACHES - 1 :]:
        shutil.rmtree(old, ignore_errors=True)  # a process still mapping these files keeps reading them

"""Folders of images and masks: finding the two folders, pairing files by stem, and scanning them once."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetseg.data.io import LOSSY_SUFFIXES, is_image_file, read_image, read_mask
from unetseg.errors import DataError, UserError

IMAGE_DIR_NAMES = ("imgs", "images", "image", "img")
MASK_DIR_NAMES = ("masks", "labels", "label", "mask", "annotations")
# Suffixes that mask files often carry beyond the image's stem (Carvana: "<id>_mask.gif").
MASK_STEM_SUFFIXES = ("_mask", "_masks", "-mask", "_label", "_labels", "-label", "_seg", "_gt", "_segmentation")


@dataclass
class Pair:
    """One image and its mask."""

    image: Path
    mask: Path | None


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


def find_folders(data: str | Path | None, images: str | Path | None, masks: str | Path | None) -> tuple[Path, Path]:
    """The image and mask folders, from ``--data DIR`` or ``--images``/``--masks``."""
    if images or masks:
        if not (images and masks):
            raise UserError("--images and --masks go together: pass both folders, or --data DIR instead")
        image_dir, mask_dir = Path(images), Path(masks)
    else:
        if data is None:
            raise UserError("no dataset given: pass --data DIR (holding imgs/ and masks/) or --images DIR --masks DIR")
        root = Path(data)
        if not root.exists():
            raise UserError(f"--data {root}: folder does not exist; check the path")
        if not root.is_dir():
            raise UserError(f"--data {root}: not a folder; pass the folder that holds imgs/ and masks/")
        image_dir = next((root / n for n in IMAGE_DIR_NAMES if (root / n).is_dir()), None)
        mask_dir = next((root / n for n in MASK_DIR_NAMES if (root / n).is_dir()), None)
        if image_dir is None or mask_dir is None:
            missing = "image folder (imgs/ or images/)" if image_dir is None else "mask folder (masks/ or labels/)"
            raise UserError(
                f"--data {root}: no {missing} inside; put images in {root}/imgs and masks in {root}/masks, "
                "or name them with --images DIR --masks DIR"
            )
    for option, folder in (("--images", image_dir), ("--masks", mask_dir)):
        if not folder.is_dir():
            raise UserError(f"{option} {folder}: folder does not exist; check the path")
    return image_dir, mask_dir


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Readable image files in a folder (sorted), and notes on what was skipped."""
    files, skipped = [], []
    try:
        entries = sorted(folder.iterdir())
    except PermissionError as err:
        raise UserError(f"{folder}: cannot list this folder ({err}); fix its permissions") from err
    for path in entries:
        if is_image_file(path):
            files.append(path)
        elif not path.name.startswith("."):
            skipped.append(path.name)
    notes = (
        [
            f"{folder}: ignored {len(skipped)} entries that are not image files ({', '.join(skipped[:5])}"
            f"{', ...' if len(skipped) > 5 else ''})"
        ]
        if skipped
        else []
    )
    return files, notes


def _mask_key(stem: str, image_stems: set[str]) -> str:
    if stem in image_stems:
        return stem
    for suffix in MASK_STEM_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in image_stems:
            return stem[: -len(suffix)]
    match = re.match(r"^(.*?)[_\-.](mask|label|seg|gt)s?$", stem, flags=re.IGNORECASE)
    return match.group(1) if match else stem


def pair_files(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[str]]:
    """Pair images with masks by stem (a mask may carry a suffix such as ``_mask``). Every mismatch is reported."""
    images, notes = list_images(image_dir)
    masks, mask_notes = list_images(mask_dir)
    notes += mask_notes
    if not images:
        raise DataError(
            f"{image_dir}: no image files found (looked for .png, .jpg, .tif, .bmp, .gif, .npy); "
            "put the training images there"
        )
    by_stem: dict[str, Path] = {}
    problems = []
    for path in images:
        if path.stem in by_stem:
            problems.append(f"{path}: two images share the stem '{path.stem}' ({by_stem[path.stem].name}); rename one")
        by_stem[path.stem] = path
    mask_by_stem: dict[str, Path] = {}
    for path in masks:
        key = _mask_key(path.stem, set(by_stem))
        if key in mask_by_stem:
            problems.append(f"{path}: two masks pair with image '{key}' ({mask_by_stem[key].name}); keep one")
        mask_by_stem[key] = path
    for stem, path in by_stem.items():
        if stem not in mask_by_stem:
            problems.append(
                f"{path}: no mask for this image in {mask_dir} (expected {stem}.png or {stem}_mask.*); "
                "add the mask or remove the image"
            )
    for key, path in mask_by_stem.items():
        if key not in by_stem:
            problems.append(f"{path}: no image for this mask in {image_dir}; add the image or remove the mask")
    if problems:
        raise DataError(problems)
    return [Pair(by_stem[s], mask_by_stem[s]) for s in sorted(by_stem)], notes


def image_channels(image: np.ndarray) -> int:
    """Channels that carry information: a constant alpha channel does not count."""
    channels = image.shape[2]
    if channels in (2, 4) and image[:, :, -1].min() == image[:, :, -1].max():
        channels -= 1
    return channels


def _scan_one(pair: Pair) -> tuple:
    image = read_image(pair.image)
    mask = read_mask(pair.mask) if pair.mask is not None else None
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise UserError(
            f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {pair.image.name} is "
            f"{image.shape[1]}x{image.shape[0]} (W x H); save the mask at the image's size"
        )
    values, is_color = (None, False)
    if mask is not None:
        is_color = mask.ndim == 3
        values = np.unique(color_keys(mask) if is_color else mask)
    return image.shape[:2], image_channels(image), str(image.dtype), values, is_color, image.shape[2]


def color_keys(mask: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours -> ``(H, W)`` int64 keys ``r << 16 | g << 8 | b``."""
    mask = mask.astype(np.int64)
    return (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]


def scan_pairs(pairs: list[Pair], workers: int | None = None) -> ScanResult:
    """Read every pair once, in parallel threads (decoders release the GIL), collecting all problems."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    results, problems = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_scan_one, p) for p in pairs]
        for future in futures:
            try:
                results.append(future.result())
            except UserError as err:
                problems.append(str(err))
                results.append(None)
    if problems:
        raise DataError(problems)
    scan = ScanResult(
        pairs=pairs, sizes=[r[0] for r in results], channels=[r[1] for r in results], dtypes=[r[2] for r in results]
    )
    scan.mask_values = [r[3] for r in results]
    scan.mask_is_color = [r[4] for r in results]
    scan.raw_channels = [r[5] for r in results]
    if any(scan.mask_is_color) and not all(scan.mask_is_color):
        grey = [str(p.mask) for p, c in zip(pairs, scan.mask_is_color) if not c][:3]
        raise DataError(
            f"some masks are colour (RGB) and others single-channel (e.g. {', '.join(grey)}); "
            "save all masks in one encoding"
        )
    return scan


def lossy_masks(pairs: list[Pair]) -> bool:
    """True when masks are stored in a lossy format (JPEG), whose values carry compression noise."""
    return any(p.mask is not None and p.mask.suffix.lower() in LOSSY_SUFFIXES for p in pairs)

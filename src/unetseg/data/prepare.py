"""From options to decoded training and validation samples, class map and normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetseg.data.classmap import ClassMap, discover
from unetseg.data.dataset import Sample, compute_norm, fold_indices, load_samples, split_indices
from unetseg.data.folder import Pair, ScanResult, find_folders, lossy_masks, pair_files, scan_pairs
from unetseg.errors import UserError


def sample_dataset_dir() -> Path:
    """The bundled nuclei sample (65 microscopy images with nucleus masks, CC0)."""
    return Path(__file__).resolve().parent.parent / "sample" / "nuclei-dsb2018"


@dataclass
class Dataset:
    """Everything training needs from the data, decoded once."""

    train: list[Sample]
    val: list[Sample]
    class_map: ClassMap
    norm: dict
    channels: int
    root: str
    notes: list[str] = field(default_factory=list)


def collect(data: str | None, images: str | None, masks: str | None) -> tuple[list[Pair], ScanResult, str, list[str]]:
    """Find, pair and scan one folder (every problem reported at once)."""
    image_dir, mask_dir = find_folders(data, images, masks)
    pairs, notes = pair_files(image_dir, mask_dir)
    return pairs, scan_pairs(pairs), str(data or image_dir.parent), notes


def default_channels(channels: list[int]) -> int:
    """Grey when every image is grey, RGBA when some alpha carries data, otherwise RGB."""
    if all(c == 1 for c in channels):
        return 1
    return 4 if any(c >= 4 for c in channels) else 3


def _merge(a: ScanResult, b: ScanResult) -> ScanResult:
    merged = ScanResult(a.pairs + b.pairs, a.sizes + b.sizes, a.channels + b.channels, a.dtypes + b.dtypes)
    merged.mask_values = a.mask_values + b.mask_values
    merged.mask_is_color = a.mask_is_color + b.mask_is_color
    merged.raw_channels = a.raw_channels + b.raw_channels
    return merged


def prepare(
    data: str | None,
    images: str | None,
    masks: str | None,
    val_data: str | None,
    classes: int | None,
    channels: int | None,
    scale: float,
    validation: float,
    seed: int,
    workers: int = 4,
    fold: tuple[int, int] | None = None,
) -> Dataset:
    """Scan, build the class map, decode at training resolution, split, and compute normalisation.

    ``fold`` = (i, k) validates on fold i of a deterministic k-fold split instead of a random percentage.
    """
    pairs, scan, root, notes = collect(data, images, masks)
    all_scan = scan
    val_pairs: list[Pair] = []
    if val_data:
        val_pairs, val_scan, _, val_notes = collect(val_data, None, None)
        notes += val_notes
        all_scan = _merge(scan, val_scan)
    class_map, map_notes = discover(all_scan, classes, lossy_masks(pairs + val_pairs))
    notes += map_notes
    channels = channels or default_channels(all_scan.channels)
    dropped = sum(1 for c, raw in zip(all_scan.channels, all_scan.raw_channels) if c < raw)
    if dropped:
        notes.append(f"{dropped} images carry a constant alpha channel; it was dropped")
    samples = load_samples(pairs, class_map, channels, scale, workers)
    if val_data:
        train, val = samples, load_samples(val_pairs, class_map, channels, scale, workers)
    else:
        train_idx, val_idx = (
            fold_indices(len(samples), fold[1], fold[0], seed)
            if fold
            else split_indices(len(samples), validation, seed)
        )
        train, val = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    if not train:
        raise UserError("no training images left after the validation split; lower -v/--validation")
    return Dataset(train, val, class_map, compute_norm(train), channels, root, notes)


def class_frequencies(samples: list[Sample], num_classes: int) -> np.ndarray:
    """Share of labelled pixels per class."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample in samples:
        counts += np.bincount(sample.mask.ravel(), minlength=256)[:num_classes]
    return counts / max(counts.sum(), 1)

"""From options to decoded training and validation samples, class map and normalisation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetseg.core.meta import Norm
from unetseg.data.cache import decoded_samples
from unetseg.data.checks import channel_notes, check_folder, default_channels, inspect_dataset, unknown_values
from unetseg.data.classmap import ClassMap
from unetseg.data.folder import Pair
from unetseg.data.index import ScanResult
from unetseg.data.samples import Sample, compute_norm, fold_indices, split_indices
from unetseg.errors import DataError, UserError


def sample_dataset_dir() -> Path:
    """The bundled nuclei sample (65 microscopy images with nucleus masks, CC0)."""
    return Path(__file__).resolve().parent.parent / "sample" / "nuclei-dsb2018"


@dataclass
class Dataset:
    """Everything training needs from the data, decoded once."""

    train: list[Sample]
    val: list[Sample]
    class_map: ClassMap
    norm: Norm
    channels: int
    root: str
    notes: list[str] = field(default_factory=list)


def data_options(cfg: object) -> dict:
    """``prepare``'s keyword options for reading the data, from a config holding the ``DataConfig`` fields."""
    names = ("classes_file", "resize_to_mask", "cache", "cache_dir")
    return {name: getattr(cfg, name) for name in names}


def prepare_for(cfg: object, validation: float | None = None, fold: tuple[int, int] | None = None) -> Dataset:
    """:func:`prepare` with every data option taken from a training config (``validation`` overrides its split)."""
    return prepare(
        cfg.data,
        cfg.images,
        cfg.masks,
        cfg.val_data,
        cfg.classes,
        cfg.channels,
        cfg.scale,
        cfg.validation if validation is None else validation,
        cfg.seed,
        cfg.workers,
        fold=fold,
        **data_options(cfg),
    )


def doctor_hint(data: str | None) -> str:
    return f"`unetseg doctor --data {data or 'DIR'}` reports on the whole dataset"


def collect(
    data: str | None,
    images: str | None,
    masks: str | None,
    resize_to_mask: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
) -> tuple[list[Pair], ScanResult, str, list[str]]:
    """Find, pair and scan one folder (every problem reported at once)."""
    check = check_folder(data, images, masks, resize_to_mask, cache, cache_dir)
    if check.problems:
        raise DataError(check.problems, hint=doctor_hint(data))
    return check.pairs, check.scan, str(check.root), check.notes


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
    classes_file: str | None = None,
    resize_to_mask: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
) -> Dataset:
    """Check the data (all problems at once, as ``unetseg doctor``), build the class map, decode at training
    resolution through the decoded cache, split, and compute normalisation.

    ``fold`` = (i, k) validates on fold i of a deterministic k-fold split instead of a random percentage.
    """
    report = inspect_dataset(
        data, images, masks, val_data, classes, classes_file, resize_to_mask, cache, cache_dir, workers
    )
    if report.problems:
        raise DataError(report.problems, hint=doctor_hint(data))
    class_map, scan = report.class_map, report.scan
    channels = channels or default_channels(scan.channels)
    notes = report.notes + report.warnings + channel_notes(scan.channels, channels)
    samples = decoded_samples(report.folders[0], class_map, channels, scale, resize_to_mask, workers)
    if len(report.folders) > 1:  # --val-data, or the validation split of an annotation format
        train = samples
        val = decoded_samples(report.folders[1], class_map, channels, scale, resize_to_mask, workers)
    else:
        train_idx, val_idx = (
            fold_indices(len(samples), fold[1], fold[0], seed)
            if fold
            else split_indices(len(samples), validation, seed)
        )
        train, val = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    if not train:
        raise UserError("no training images left after the validation split; lower -v/--validation")
    first = report.folders[0]
    root = str(first.generated.origin if first.generated else first.root)
    return Dataset(train, val, class_map, compute_norm(train), channels, root, notes)


def evaluation_samples(
    data: str | None,
    images: str | None,
    masks: str | None,
    class_map: ClassMap,
    channels: int,
    scale: float,
    resize_to_mask: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
) -> tuple[list[Sample], str]:
    """Samples to score a trained model on, with its class map: every unknown mask value reported at once.

    An annotation format with a validation split (VOC val.txt, Cityscapes val/) is scored on that split.
    """
    check = check_folder(data, images, masks, resize_to_mask, cache, cache_dir, split="val")
    problems = check.problems + unknown_values(check.scan, class_map)
    if problems:
        raise DataError(problems, hint=doctor_hint(data))
    samples = decoded_samples(check, class_map, channels, scale, resize_to_mask)
    if scale != 1.0:  # score at the images' own size, as predict writes masks: the model's input alone is scaled
        full = decoded_samples(check, class_map, channels, 1.0, resize_to_mask)
        samples = [dataclasses.replace(s, mask=f.mask, class_counts=f.class_counts) for s, f in zip(samples, full)]
    root = check.generated.origin if check.generated else check.root
    return samples, str(root)


def _counts(sample: Sample, num_classes: int) -> np.ndarray:
    """Pixels per class of one sample (from the decoded cache's counts when it kept them)."""
    if sample.class_counts is not None:
        return np.asarray(sample.class_counts[:num_classes])
    return np.bincount(sample.mask.ravel(), minlength=256)[:num_classes]


def class_frequencies(samples: list[Sample], num_classes: int) -> np.ndarray:
    """Share of labelled pixels per class."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample in samples:
        counts += _counts(sample, num_classes)
    return counts / max(counts.sum(), 1)


def class_presence(samples: list[Sample], num_classes: int) -> np.ndarray:
    """Which classes each sample holds: bool (samples, classes)."""
    present = np.zeros((len(samples), num_classes), dtype=bool)
    for i, sample in enumerate(samples):
        present[i] = _counts(sample, num_classes) > 0
    return present


def repeat_factors(samples: list[Sample], num_classes: int, share: float) -> np.ndarray:
    """How often to draw each sample, relative to the others: repeat-factor sampling (LVIS, Gupta et al. 2019).

    A class held by a fraction f of the images gets max(1, sqrt(share / f)); an image takes the largest factor
    of the classes it holds. Images with a class that few images hold are seen more often, the pixels' loss is
    left as it is.
    """
    present = class_presence(samples, num_classes)
    held = present.mean(axis=0)
    factor = np.sqrt(share / np.maximum(held, 1e-12)).clip(min=1.0)
    return np.where(present, factor, 1.0).max(axis=1, initial=1.0)

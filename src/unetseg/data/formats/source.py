"""What every annotation reader returns: the classes with their names and the items to rasterise, with problems.

A reader parses its annotation files once; :mod:`unetseg.data.formats.build` then rasterises every item into a
plain folder dataset (``imgs/``, ``masks/``, ``classes.yaml``) inside the cache folder, which the folder code reads
unchanged. Masks hold class indices 0..K-1 and :data:`IGNORE` for pixels that losses and metrics skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE = 255  # the ignore value of every generated mask (the tensor contract's ignore index)
SPLITS = ("train", "val")


@dataclass
class Item:
    """One image and the function that draws its mask ((H, W) uint8 class indices, IGNORE for void)."""

    stem: str  # unique name of the generated image and mask files
    image: Path | bytes  # the image file, or its encoded bytes (LabelMe's imageData)
    suffix: str  # the image's file suffix (".jpg"), used for embedded bytes
    split: str  # "train" or "val"
    draw: Callable[[], np.ndarray]
    where: str = ""  # the file the mask comes from, for messages


@dataclass
class Source:
    """A parsed annotation source: its format, classes and items, and everything found wrong with it."""

    format: str  # the format's name as doctor shows it ("COCO instances", "Pascal VOC", ...)
    origin: Path  # the file or folder the user named
    names: list[str]  # class names in index order (index 0 first)
    items: list[Item]
    files: list[Path]  # the annotation files read (their sizes and mtimes key the generated folder)
    colors: list[list[int] | None] = field(default_factory=list)
    score: str | None = None  # "all" where class 0 is a real class or benchmarks report mIoU over all classes
    objects: dict[str, int] | None = None  # objects drawn per class name (None for formats that store masks)
    problems: list[str] = field(default_factory=list)  # stop training
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(i.split == s for i in self.items)]


def safe_stem(relative: str) -> str:
    """A file stem from a relative image name: folders joined with ``__``, the suffix dropped, odd characters out."""
    path = Path(relative.replace("\\", "/"))
    parts = [p for p in path.with_suffix("").parts if p not in ("", ".", "..", "/")]
    return re.sub(r"[^\w.\-]+", "_", "__".join(parts)) or "image"


def file_stats(paths: list[Path]) -> list[list]:
    """Each path with its size and mtime (-1 when missing): what keys a generated folder."""
    rows = []
    for path in paths:
        try:
            stat = os.stat(path)
            rows.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            rows.append([str(path), -1, -1])
    return rows


def paint(mask: np.ndarray, region: np.ndarray, value: int) -> None:
    """Draw ``region`` (a boolean or 0/1 array of the mask's shape) over what is there: later on top."""
    mask[region.astype(bool)] = value


def unused_classes(source: Source, counts: dict[str, int], where: str) -> None:
    """One warning naming every class that no object uses."""
    unused = [n for n in source.names[1:] if not counts.get(n)]
    if unused:
        source.warnings.append(
            f"{where}: {len(unused)} classes have no object ({', '.join(unused[:10])}"
            f"{', ...' if len(unused) > 10 else ''}); they are kept, so class indices match the annotation file"
        )

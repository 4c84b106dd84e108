"""Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

Label ids become the official 19 train ids (cityscapesScripts ``labels.py``); every other id is 255, ignored. The
``train`` and ``val`` split folders are the split; ``test`` (whose labels are all void) is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.data.formats.source import IGNORE, Item, Source

# (name, label id, colour) of the 19 evaluated classes, in train-id order.
CLASSES = [
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
]  # fmt: skip
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds"


def label_to_train() -> np.ndarray:
    """A 256-entry lookup table: label id -> train id, 255 for the ids not evaluated."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    for train_id, (_, label_id, _) in enumerate(CLASSES):
        table[label_id] = train_id
    return table


def cityscapes_root(folder: Path) -> Path | None:
    return folder if (folder / "leftImg8bit").is_dir() and (folder / "gtFine").is_dir() else None


def read_cityscapes(root: Path, origin: Path) -> Source:
    names = [c[0] for c in CLASSES]
    source = Source("Cityscapes", origin, names, [], [], colors=[list(c[2]) for c in CLASSES], score="all")
    table = label_to_train()
    for split in ("train", "val"):
        for image in sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}.png")):
            base = image.name[: -len(f"{IMAGE_SUFFIX}.png")]
            label = root / "gtFine" / split / image.parent.name / f"{base}{LABEL_SUFFIX}.png"
            if not label.is_file():
                source.problems.append(f"{image}: no label file {label}; add it or remove the image")
                continue
            source.files.append(label)
            source.items.append(Item(base, image, ".png", split, _reader(label, table), str(label)))
    if not source.items:
        source.problems.append(f"{root}: no leftImg8bit/train/<city>/*_leftImg8bit.png images with gtFine labels")
    return source


def _reader(label: Path, table: np.ndarray):
    def draw() -> np.ndarray:
        with Image.open(label) as image:
            ids = np.array(image)
        if ids.ndim != 2:
            raise ValueError("a labelIds file holds one channel of label ids; pass the *_labelIds.png files")
        return table[ids.astype(np.uint8)]

    return draw

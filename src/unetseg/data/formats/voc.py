"""Pascal VOC (and CVAT's "Segmentation mask 1.1" export, which is VOC-like with ``labelmap.txt`` colours).

``JPEGImages/<id>.jpg`` pairs with ``SegmentationClass/<id>.png``. A palette PNG holds class indices (VOC: 0
background, 1..20, 255 void -> ignored); an RGB PNG is read through ``labelmap.txt`` (``name:r,g,b:...`` per
line, in class order). ``ImageSets/Segmentation/train.txt`` and ``val.txt`` give the split; without them every
mask is for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.data.folder import color_keys
from unetseg.data.formats.source import IGNORE, Item, Source
from unetseg.data.io import IMAGE_SUFFIXES
from unetseg.errors import UserError

VOC_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def voc_root(folder: Path) -> Path | None:
    """The folder holding JPEGImages/ and SegmentationClass/ (the one given, or VOCdevkit/VOC20xx inside it)."""
    candidates = [folder, *sorted(folder.glob("VOC*")), *sorted(folder.glob("VOCdevkit/VOC*"))]
    # CVAT's export without images has no JPEGImages/: the images then come from --images
    return next(
        (
            c
            for c in candidates
            if (c / "SegmentationClass").is_dir() and ((c / "JPEGImages").is_dir() or (c / "labelmap.txt").is_file())
        ),
        None,
    )


def voc_palette(count: int = 256) -> list[list[int]]:
    """The VOC colour map (bit-interleaved), which VOC's palette PNGs carry."""
    colors = []
    for index in range(count):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colors.append([r, g, b])
    return colors


def read_labelmap(path: Path) -> tuple[list[str], list[list[int]]]:
    """CVAT's ``labelmap.txt``: ``# label:color_rgb:parts:actions`` then ``name:r,g,b::`` per class."""
    names, colors = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        try:
            color = [int(v) for v in fields[1].split(",")]
            assert len(color) == 3 and all(0 <= v <= 255 for v in color)
        except (IndexError, ValueError, AssertionError):
            raise UserError(f"{path}: line {number} is not 'name:r,g,b::' ({line.strip()!r}); fix it") from None
        names.append(fields[0].strip())
        colors.append(color)
    return names, colors


def read_voc(root: Path, origin: Path, image_dir: Path | None = None) -> Source:
    """A VOC-layout source; masks are read (and checked) when drawn."""
    labelmap = root / "labelmap.txt"
    if labelmap.is_file():
        names, colors = read_labelmap(labelmap)
        fmt = "CVAT Segmentation mask 1.1"
    else:
        names, colors, fmt = list(VOC_NAMES), voc_palette(len(VOC_NAMES)), "Pascal VOC"
    source = Source(fmt, origin, names, [], [], colors=list(colors), score="all")
    masks = sorted(p for p in (root / "SegmentationClass").iterdir() if p.suffix.lower() == ".png")
    image_dir = image_dir or root / "JPEGImages"
    if not image_dir.is_dir():
        raise UserError(f"--data {origin}: masks but no JPEGImages/ folder; pass the images with --images DIR")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    split = _splits(root, source)
    source.files = [*masks, *(root / "ImageSets" / "Segmentation" / f"{s}.txt" for s in ("train", "val")), labelmap]
    by_mask = {m.stem: m for m in masks}
    for stem, where in split.items():
        if stem not in by_mask:
            source.problems.append(f"{where}: lists {stem}, which has no SegmentationClass/{stem}.png; add it")
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int64)
    for mask in masks:
        if split and mask.stem not in split:
            continue  # VOC ships masks of the test set's neighbours; only listed ids are used
        image = images.get(mask.stem)
        if image is None:
            source.problems.append(f"{mask}: no image {mask.stem}.* in {image_dir} for this mask; add it or remove it")
            continue
        part = split.get(mask.stem)
        which = "val" if part is not None and part.stem == "val" else "train"
        source.items.append(Item(mask.stem, image, image.suffix, which, _reader(mask, keys, len(names)), str(mask)))
    return source


def _splits(root: Path, source: Source) -> dict[str, Path]:
    """Image id -> the split file listing it (train.txt or val.txt); empty when there are none."""
    folder = root / "ImageSets" / "Segmentation"
    listed: dict[str, Path] = {}
    for name in ("train", "val"):
        path = folder / f"{name}.txt"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").split():
            if line in listed and listed[line] != path:
                source.warnings.append(f"{path}: {line} is also in {listed[line].name}; it is used for validation")
            listed[line] = path
    return listed


def _reader(mask: Path, keys: np.ndarray, count: int):
    def draw() -> np.ndarray:
        with Image.open(mask) as image:
            if image.mode in ("P", "L"):
                values = np.array(image)
                colour = False
            else:
                values = color_keys(np.array(image.convert("RGB")))
                colour = True
        if colour:
            out = np.full(values.shape, IGNORE, dtype=np.uint8)
            known = np.zeros(values.shape, dtype=bool)
            for index, key in enumerate(keys):
                hit = values == key
                out[hit], known = index, known | hit
            if not known.all():
                bad = sorted({f"#{v:06x}" for v in np.unique(values[~known])[:5]})
                raise ValueError(f"colours {', '.join(bad)} are not in labelmap.txt; add them there")
            return out
        bad = np.unique(values[(values >= count) & (values != IGNORE)])
        if bad.size:
            raise ValueError(f"values {bad[:5].tolist()} name no class (0..{count - 1}, 255 = void)")
        return values.astype(np.uint8)

    return draw

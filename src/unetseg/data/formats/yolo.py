"""YOLO segmentation: ``images/<split>/x.jpg`` with ``labels/<split>/x.txt`` (``class x1 y1 x2 y2 ...``, normalised).

``data.yaml`` gives the class names (``names``: a list or an index -> name mapping) and the ``train``/``val``
image folders; without it the classes are numbered. YOLO class k becomes class k + 1 (0 is background). Polygons
are drawn with Pillow at image scale in file order, later on top; a 5-number line (a detection box ``cx cy w h``)
is drawn as its box, with a warning. An image without a label file is all background.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from unetseg.data.formats.source import Item, Source, safe_stem, unused_classes
from unetseg.data.io import IMAGE_SUFFIXES
from unetseg.errors import UserError


def yolo_root(path: Path) -> Path | None:
    """The dataset folder: the one holding data.yaml (or the yaml file's folder), or images/ + labels/ of .txt."""
    if path.is_file():
        return path.parent
    if (path / "data.yaml").is_file():
        return path
    labels = path / "labels"
    if (path / "images").is_dir() and labels.is_dir() and next(labels.rglob("*.txt"), None) is not None:
        return path
    return None


def read_yolo(root: Path, origin: Path) -> Source:
    config_file = origin if origin.is_file() else root / "data.yaml"
    config = _config(config_file) if config_file.is_file() else {}
    base = Path(config.get("path") or root)
    base = base if base.is_absolute() else root / base
    names = _names(config, config_file)
    folders = _image_folders(base, config)
    source = Source("YOLO segmentation", origin, ["background", *names], [], [], objects={})
    if config_file.is_file():
        source.files.append(config_file)
    counts: Counter = Counter()
    for split, folder in folders:
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            label = _label_path(image)
            shapes = _shapes(label, source, counts) if label.is_file() else []
            if label.is_file():
                source.files.append(label)
            stem = safe_stem(f"{split}/{image.relative_to(folder)}")
            source.items.append(Item(stem, image, image.suffix, split, _drawer(image, shapes), str(label)))
    if not source.items:
        source.problems.append(f"{root}: no images found under images/ (or the train/val folders of data.yaml)")
    source.objects = {n: counts[n] for n in source.names[1:]}
    unused_classes(source, counts, str(config_file if config_file.is_file() else root))
    return source


def _config(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable data.yaml ({' '.join(str(err).split())}); fix it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with names, train and val; fix it")
    return data


def _names(config: dict, path: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise UserError(f"{path}: 'names' must map class numbers to names; fix it") from None
    if isinstance(names, list):
        return [str(n) for n in names]
    count = int(config.get("nc", 0) or 0)
    return [f"class{i}" for i in range(count)]


def _image_folders(base: Path, config: dict) -> list[tuple[str, Path]]:
    found = []
    for split in ("train", "val"):
        entry = config.get(split)
        if not isinstance(entry, str):
            continue
        # Roboflow writes "../train/images" next to the train/ folder: try the path as written, then without "../"
        guesses = [base / entry, base / entry.replace("\\", "/").lstrip("./").removeprefix("../")]
        folder = next((g for g in guesses if g.is_dir()), None)
        if folder is not None:
            found.append((split, folder))
    if found:
        return found
    for split in ("train", "val"):
        for folder in (base / "images" / split, base / split / "images", base / "valid" / "images"):
            if folder.is_dir() and (split, folder) not in found and not (split == "train" and "valid" in str(folder)):
                found.append((split, folder))
                break
    return found or [("train", base / "images")]


def _label_path(image: Path) -> Path:
    """YOLO's rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    where = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if where is None:
        return image.with_suffix(".txt")
    parts[where] = "labels"
    return Path(*parts).with_suffix(".txt")


def _shapes(label: Path, source: Source, counts: Counter) -> list[tuple[int, list[float]]]:
    shapes = []
    for number, line in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            source.problems.append(f"{label}: line {number} is not 'class x1 y1 x2 y2 ...'; fix it")
            continue
        if not 0 <= cls < len(source.names) - 1:
            source.problems.append(f"{label}: line {number} has class {cls}; data.yaml names {len(source.names) - 1}")
            continue
        if len(coords) == 4:
            cx, cy, w, h = coords
            coords = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]
            source.warnings.append(f"{label}: line {number} is a box, not a polygon; drawn as the box")
        elif len(coords) < 6 or len(coords) % 2:
            source.warnings.append(f"{label}: line {number}: a polygon with fewer than 3 points was skipped")
            continue
        if min(coords) < 0 or max(coords) > 1:
            source.warnings.append(f"{label}: line {number}: coordinates outside 0..1 were clipped to the image")
        counts[source.names[cls + 1]] += 1
        shapes.append((cls + 1, coords))
    return shapes


def _drawer(image: Path, shapes: list):
    def draw() -> np.ndarray:
        with Image.open(image) as opened:
            width, height = opened.size
        canvas = Image.new("L", (width, height), 0)
        pen = ImageDraw.Draw(canvas)
        for value, coords in shapes:  # later on top
            xy = [(x * width, y * height) for x, y in zip(coords[0::2], coords[1::2])]
            pen.polygon(xy, outline=value, fill=value)
        return np.array(canvas)

    return draw

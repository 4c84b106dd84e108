"""LabelMe: one JSON file per image (``shapes`` of polygons, rectangles, circles, lines), next to the image.

Shapes are drawn as LabelMe's own ``shape_to_mask`` draws them (Pillow), in file order, later on top: polygon,
rectangle (two corners), circle (centre and a point on the rim), line and linestrip ``LINE_WIDTH`` pixels wide,
mask (a base64 PNG whose top-left corner is the first point);
points mark no area and are skipped with a note. Classes: ``labels.txt`` (LabelMe's labelme2voc convention:
``__ignore__`` -> 255, ``_background_`` -> 0, then one class per line) when present, else background plus the
labels found, sorted. Shapes sharing a ``group_id`` and label count as one object.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unetseg.data.formats.source import IGNORE, Item, Source, safe_stem, unused_classes
from unetseg.data.io import IMAGE_SUFFIXES
from unetseg.errors import UserError

LINE_WIDTH = 10  # pixels: LabelMe's default for line and linestrip shapes
BACKGROUND = ("_background_", "background")
IGNORED = ("__ignore__",)


def labelme_files(folder: Path) -> list[Path]:
    """JSON files in the folder (and one level down) that hold LabelMe ``shapes``."""
    found = []
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        try:
            with open(path, "rb") as handle:
                head = handle.read(1 << 16).decode("utf-8", "ignore")
        except OSError:
            continue
        if '"shapes"' in head and ('"imagePath"' in head or '"imageData"' in head):
            found.append(path)
    return found


def read_labelme(folder: Path, files: list[Path]) -> Source:
    shapes_by_file = {path: _load(path) for path in files}
    labels_file = folder / "labels.txt"
    if labels_file.is_file():
        names = [n.strip() for n in labels_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        names = [n for n in names if n not in IGNORED]
        names = ["background"] + [n for n in names if n not in BACKGROUND]
    else:
        found = {s.get("label", "") for data in shapes_by_file.values() for s in data.get("shapes", [])}
        names = ["background"] + sorted(n for n in found if n not in BACKGROUND + IGNORED)
    index = {n: i for i, n in enumerate(names)} | dict.fromkeys(BACKGROUND, 0) | dict.fromkeys(IGNORED, IGNORE)
    source = Source("LabelMe", folder, names, [], files + ([labels_file] if labels_file.is_file() else []))
    counts: Counter = Counter()
    points = 0
    for path, data in shapes_by_file.items():
        image, suffix = _image(path, data, source)
        if image is None:
            continue
        size = (data.get("imageHeight"), data.get("imageWidth"))
        if not all(isinstance(v, int) and v > 0 for v in size):
            with Image.open(image if isinstance(image, Path) else _bytes_io(image)) as opened:
                size = (opened.height, opened.width)
        shapes = []
        for number, shape in enumerate(data.get("shapes", []), 1):
            label, kind = shape.get("label", ""), shape.get("shape_type") or "polygon"
            if label not in index:
                source.problems.append(f"{path}: shape {number} has label {label!r}, which labels.txt does not list")
            elif kind == "point":
                points += 1
            elif kind == "mask" and isinstance(shape.get("mask"), str) and _enough_points(shape, "rectangle"):
                shapes.append((index[label], kind, [tuple(map(float, p)) for p in shape["points"]], shape["mask"]))
            elif kind not in ("polygon", "rectangle", "circle", "line", "linestrip"):
                source.warnings.append(f"{path}: shape {number} is a {kind}, which has no area here; skipped")
            elif _enough_points(shape, kind):
                shapes.append((index[label], kind, [tuple(map(float, p)) for p in shape["points"]], None))
            else:
                source.warnings.append(f"{path}: shape {number} ({kind}) has too few points; skipped")
        groups = {
            (s.get("label"), s.get("group_id") if s.get("group_id") is not None else id(s))
            for s in data.get("shapes", [])
            if s.get("label") in index and (s.get("shape_type") or "polygon") != "point"
        }
        counts.update(g[0] for g in groups)
        stem = safe_stem(str(path.relative_to(folder).with_suffix("")))
        source.items.append(Item(stem, image, suffix, "train", _drawer(size, shapes), str(path)))
    if points:
        source.notes.append(f"{points} point shapes mark no area and were skipped")
    source.objects = {n: counts[n] for n in names[1:]}
    unused_classes(source, counts, str(folder))
    return source


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: not a readable LabelMe JSON file ({err}); fix it or move it away") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UserError(f"{path}: no 'shapes' list; not a LabelMe file")
    return data


def _image(path: Path, data: dict, source: Source) -> tuple[Path | bytes | None, str]:
    """The image next to the JSON (``imagePath``), else the embedded ``imageData``."""
    name = str(data.get("imagePath") or "").replace("\\", "/")  # LabelMe on Windows writes ..\\images\\a.jpg
    suffix = Path(name).suffix.lower() or ".png"
    candidate = (path.parent / name) if name else None
    if candidate is not None and candidate.is_file() and candidate.suffix.lower() in IMAGE_SUFFIXES:
        return candidate, candidate.suffix
    if data.get("imageData"):
        try:
            return base64.b64decode(data["imageData"], validate=False), suffix if suffix in IMAGE_SUFFIXES else ".png"
        except (binascii.Error, ValueError):
            source.problems.append(f"{path}: imageData is not base64; save the file again in LabelMe")
            return None, ""
    source.problems.append(f"{path}: image {name or '(no imagePath)'} is missing and no imageData is embedded")
    return None, ""


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def _enough_points(shape: dict, kind: str) -> bool:
    points = shape.get("points")
    if not isinstance(points, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
        return False
    return len(points) >= {"polygon": 3, "rectangle": 2, "circle": 2, "line": 2, "linestrip": 2}[kind]


def _drawer(size: tuple[int, int], shapes: list):
    def draw() -> np.ndarray:
        canvas = Image.new("L", (size[1], size[0]), 0)
        pen = ImageDraw.Draw(canvas)
        for value, kind, xy, encoded in shapes:  # later shapes on top
            if kind == "mask":  # LabelMe 5.3+: a base64 PNG of the box between the two points
                _paste(canvas, xy, encoded, value)
            elif kind == "rectangle":
                (x0, y0), (x1, y1) = xy[:2]
                pen.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value)
            elif kind == "circle":
                (cx, cy), (px, py) = xy[:2]
                r = math.hypot(cx - px, cy - py)
                pen.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
            elif kind in ("line", "linestrip"):
                pen.line(xy, fill=value, width=LINE_WIDTH)
            else:
                pen.polygon(xy, outline=value, fill=value)
        return np.array(canvas)

    return draw


def _paste(canvas: Image.Image, xy: list, encoded: str, value: int) -> None:
    """A LabelMe mask shape: its boolean PNG placed with its top-left corner at the first point."""
    import io

    with Image.open(io.BytesIO(base64.b64decode(encoded))) as opened:
        region = np.array(opened.convert("L")) > 0
    x0, y0 = (round(min(p[i] for p in xy[:2])) for i in (0, 1))
    array = np.array(canvas)
    target = array[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]]
    target[region[: target.shape[0], : target.shape[1]]] = value
    canvas.paste(Image.fromarray(array))

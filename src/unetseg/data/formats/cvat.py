"""CVAT for images 1.1: one ``annotations.xml`` with an ``<image>`` element per image and its shapes.

Classes: the task's (or project's) ``<labels>`` in order, after background (a label named ``background`` is class
0). Shapes are drawn with Pillow in ``z_order``, file order among equal ``z_order``, later on top: ``polygon``,
``box`` (xtl..xbr, ytl..ybr, turned by its ``rotation``), ``ellipse``, ``polyline`` (``LINE_WIDTH`` pixels wide, as
LabelMe's lines) and ``mask`` (CVAT's row-major run lengths inside its ``left``/``top``/``width``/``height`` box,
starting with a run of zeros); ``points`` mark no area and are skipped with a note; ``occluded`` shapes are drawn
like the others (counted).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unetseg.data.formats.labelme import LINE_WIDTH
from unetseg.data.formats.source import Item, Source, safe_stem, unused_classes
from unetseg.errors import UserError

SHAPES = ("polygon", "box", "polyline", "mask", "ellipse")


def is_cvat(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "ignore")
    except OSError:
        return False
    return "<annotations" in head


def read_cvat(path: Path, images: Path | None, origin: Path) -> Source:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise UserError(f"{path}: not readable CVAT XML ({err}); export 'CVAT for images 1.1' again") from None
    labels = [e.findtext("name", "").strip() for e in root.iter("label") if e.findtext("name")]
    names = ["background"] + [n for n in dict.fromkeys(labels) if n != "background"]
    index = {n: i for i, n in enumerate(names)}
    source = Source("CVAT for images 1.1", origin, names, [], [path], objects={})
    folders = [f for f in (images, path.parent / "images", path.parent) if f is not None and f.is_dir()]
    counts: Counter = Counter()
    points = occluded = 0
    for element in root.iter("image"):
        name = element.get("name", "")
        file = next((f / name for f in folders if (f / name).is_file()), None)
        where = f"{path}: image {element.get('id')} ({name})"
        if file is None:
            source.problems.append(f"{where}: file missing (looked in {', '.join(map(str, folders))}); add it")
            continue
        shapes = []
        for order, shape in enumerate(element):
            label = shape.get("label", "")
            if shape.tag == "points":
                points += 1
                continue
            if shape.tag not in SHAPES:
                continue
            if label not in index:
                source.problems.append(f"{where}: a {shape.tag} has label {label!r}, which <labels> does not list")
                continue
            occluded += shape.get("occluded") == "1"
            counts[label] += 1
            shapes.append((float(shape.get("z_order", 0) or 0), order, index[label], shape.tag, dict(shape.attrib)))
        shapes.sort(key=lambda s: (s[0], s[1]))
        size = (int(element.get("height", 0)), int(element.get("width", 0)))
        source.items.append(Item(safe_stem(name), file, file.suffix, "train", _drawer(size, shapes), where))
    if points:
        source.notes.append(f"{points} points shapes mark no area and were skipped")
    if occluded:
        source.notes.append(f"{occluded} shapes are marked occluded; they are drawn as annotated")
    source.objects = {n: counts[n] for n in names[1:]}
    unused_classes(source, counts, str(path))
    return source


def _points(text: str) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(",")[:2]) for pair in text.split(";") if pair.strip()]


def _drawer(size: tuple[int, int], shapes: list):
    def draw() -> np.ndarray:
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError("the <image> element has no width and height")
        canvas = Image.new("L", (size[1], size[0]), 0)
        pen = ImageDraw.Draw(canvas)
        for _, _, value, kind, attrs in shapes:
            if kind == "box":
                box = [float(attrs[k]) for k in ("xtl", "ytl", "xbr", "ybr")]
                angle = float(attrs.get("rotation", 0) or 0)
                if angle:
                    pen.polygon(_rotated(box, angle), outline=value, fill=value)
                else:
                    pen.rectangle(box, outline=value, fill=value)
            elif kind == "ellipse":
                cx, cy, rx, ry = (float(attrs[k]) for k in ("cx", "cy", "rx", "ry"))
                pen.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=value, fill=value)
            elif kind == "polygon":
                pen.polygon(_points(attrs["points"]), outline=value, fill=value)
            elif kind == "polyline":
                pen.line(_points(attrs["points"]), fill=value, width=LINE_WIDTH)
            else:
                _paste_mask(canvas, attrs, value)
        return np.array(canvas)

    return draw


def _paste_mask(canvas: Image.Image, attrs: dict, value: int) -> None:
    """CVAT's mask: run lengths over its box, row by row, alternating 0 and 1 (a run of zeros first)."""
    left, top, width, height = (int(float(attrs[k])) for k in ("left", "top", "width", "height"))
    runs = [int(v) for v in attrs["rle"].replace(" ", "").split(",") if v]
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
    if flat.size != width * height:
        raise ValueError(f"mask run lengths add up to {flat.size}, its box holds {width}x{height} pixels")
    array = np.array(canvas)
    region = array[top : top + height, left : left + width]
    region[flat.reshape(height, width)[: region.shape[0], : region.shape[1]]] = value
    canvas.paste(Image.fromarray(array))


def _rotated(box: list[float], degrees: float) -> list[tuple[float, float]]:
    """The corners of a CVAT box turned by ``rotation`` degrees (clockwise on screen) about its centre."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    turn = np.deg2rad(degrees)
    cos, sin = float(np.cos(turn)), float(np.sin(turn))
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in corners]

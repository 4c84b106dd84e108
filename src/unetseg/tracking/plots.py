"""Pictures of a run, drawn with Pillow (no matplotlib): learning curves and prediction galleries.

``save_gallery`` is shared by training (``plots/gallery.png``, refreshed when ``best.pt`` improves) and
``unetseg evaluate`` (its worst images); ``save_curves`` draws ``plots/curves.png`` from metrics.csv rows.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unetseg.data.classmap import IGNORE_INDEX, PALETTE

CURVES_SIZE = (1500, 420)  # px: three charts (loss, Dice per class, lr) side by side
TILE = 192  # px: each gallery tile fits a TILE x TILE box, so small and large images read the same
GAP = 8  # px between tiles
IGNORE_COLOR = (128, 128, 128)  # ignore pixels (255) in truth and prediction
COLUMNS = ("image", "truth", "prediction", "overlay")
PNG_LEVEL = 1  # zlib level: these files are rewritten every round; level 1 encodes 2x faster than the default 6


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (a scalable one where FreeType is built in)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError):  # Pillow < 10.1, or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def clean_label(text: object, font: object = None) -> str:
    """``text`` as one drawable line: control characters and line breaks become spaces.

    Class and file names come from users' files; Pillow refuses to measure multi-line text, and its bitmap
    fallback font only draws Latin-1. A label must never fail a plot (and so a finished run).
    """
    line = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in str(text))
    if font is not None and not isinstance(font, ImageFont.FreeTypeFont):
        line = line.encode("latin-1", "replace").decode("latin-1")
    return line


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: object, font: object, fill: object) -> float:
    """Draw one cleaned line of text at ``xy``; returns its width in pixels."""
    line = clean_label(text, font)
    draw.text(xy, line, fill=fill, font=font)
    return draw.textlength(line, font=font)


def class_colors(class_map: object | None, count: int = 0) -> list[tuple[int, int, int]]:
    """RGB colour of each class: the class map's, else the default palette."""
    colors = getattr(class_map, "colors", None) or [PALETTE[i % len(PALETTE)] for i in range(max(count, 2))]
    return [tuple(int(c) for c in color[:3]) for color in colors]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, C)`` uint8/uint16 image -> ``(H, W, 3)`` uint8 for display."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        scaled = image.astype(np.float32)
        scaled = scaled / max(float(scaled.max()), 1.0) * 255  # 16-bit data rarely fills its range: stretch
        image = scaled.clip(0, 255).astype(np.uint8)
    return np.repeat(image[:, :, :1], 3, axis=2) if image.shape[2] < 3 else np.ascontiguousarray(image[:, :, :3])


def colorize(index: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Class indices ``(H, W)`` -> ``(H, W, 3)`` uint8 in the class colours; 255 (ignore) is grey."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = IGNORE_COLOR
    for i, color in enumerate(colors[:IGNORE_INDEX]):
        table[i] = color[:3]
    return table[np.asarray(index, dtype=np.uint8)]


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, colors, alpha: float = 0.45) -> np.ndarray:
    """The image with each predicted foreground class blended in its colour, and the true outlines in white."""
    base = to_rgb(image).astype(np.float32)
    fill = colorize(pred, colors).astype(np.float32)
    shown = np.where(((pred > 0) & (pred != IGNORE_INDEX))[:, :, None], (1 - alpha) * base + alpha * fill, base)
    if truth is not None:
        shown[_edges(truth)] = 255
    return shown.astype(np.uint8)


def _edges(index: np.ndarray) -> np.ndarray:
    """Pixels of a foreground region whose right or lower neighbour is in another class."""
    index = np.asarray(index)
    edge = np.zeros(index.shape, dtype=bool)
    right = index[:, 1:] != index[:, :-1]
    down = index[1:, :] != index[:-1, :]
    edge[:, :-1] |= right
    edge[:, 1:] |= right
    edge[:-1, :] |= down
    edge[1:, :] |= down
    return edge & (index > 0) & (index != IGNORE_INDEX)


def panel_views(panels: list[dict], colors: Sequence[Sequence[int]]) -> list[dict]:
    """What trackers show of each panel: RGB image, coloured truth and prediction, and the four-tile strip."""
    views = []
    for panel in panels:
        rgb = to_rgb(panel["image"])
        truth, pred = np.asarray(panel["truth"], np.uint8), np.asarray(panel["pred"], np.uint8)
        tiles = [rgb, colorize(truth, colors), colorize(pred, colors), overlay(rgb, pred, truth, colors)]
        gap = np.full((rgb.shape[0], 2, 3), 255, dtype=np.uint8)
        strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)  # (H, 4W + 6, 3)
        views.append(
            {"name": str(panel["name"]), "rgb": rgb, "truth": truth, "pred": pred}
            | {"truth_rgb": tiles[1], "pred_rgb": tiles[2], "strip": strip}
        )
    return views


def _fit(tile: np.ndarray, size: tuple[int, int], nearest: bool) -> Image.Image:
    """Scale a tile to ``size`` (nearest for masks: no blended classes)."""
    return Image.fromarray(tile).resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)


def _tile_size(shape: tuple[int, ...], tile: int) -> tuple[int, int]:
    """(width, height) of an ``(H, W, ...)`` image scaled so its longer side is ``tile``."""
    height, width = shape[:2]
    factor = tile / max(height, width)
    return max(1, round(width * factor)), max(1, round(height * factor))


_HEADER = 56  # px: title and class legend
_CAPTION = 18  # px: the image name (and score) under each row


def gallery_size(panels: list[dict], tile: int = TILE) -> tuple[int, int]:
    """Width and height in pixels of ``save_gallery(panels, tile=tile)``: rows are as tall as their images."""
    rows = sum(_tile_size(np.shape(p["truth"]), tile)[1] + _CAPTION + GAP for p in panels)
    return 4 * tile + 5 * GAP, _HEADER + rows + GAP


def save_gallery(
    path: str | Path, panels: list[dict], class_map: object | None = None, title: str = "", tile: int = TILE
) -> Path:
    """Write a PNG with one row per panel: image | truth | prediction | overlay (size: ``gallery_size``).

    ``panels`` are dicts with ``name``, ``image`` ``(H, W, C)`` uint8/uint16, ``truth`` and ``pred`` ``(H, W)``
    uint8 class indices (255 = ignore), and optionally ``score`` (e.g. the image's Dice, shown in the caption).
    ``class_map`` gives the colours and names (a ``ClassMap``; None uses the default palette). Each image is
    scaled so its longer side is ``tile`` pixels.
    """
    path = Path(path)
    colors = class_colors(class_map, 1 + max((int(np.max(p["pred"], initial=0)) for p in panels), default=1))
    names = list(getattr(class_map, "names", None) or [f"class {i}" for i in range(len(colors))])
    picture = Image.new("RGB", gallery_size(panels, tile), "white")
    draw = ImageDraw.Draw(picture)
    font, small = _font(14), _font(12)
    _text(draw, (GAP, 6), title or f"{len(panels)} image(s): {' | '.join(COLUMNS)}", font, "black")
    x = GAP
    for name, color in zip(names, colors):
        draw.rectangle([x, 30, x + 12, 42], fill=color, outline="black")
        x += 28 + int(_text(draw, (x + 16, 29), name, small, "black"))
    for column, label in enumerate(COLUMNS):
        draw.text((GAP + column * (tile + GAP), _HEADER - 14), label, fill="gray", font=small)
    top = _HEADER
    for row, panel in enumerate(panels):
        image, truth, pred = panel["image"], panel["truth"], panel["pred"]
        size = _tile_size(np.shape(truth), tile)
        tiles = [
            (to_rgb(image), False),
            (colorize(truth, colors), True),
            (colorize(pred, colors), True),
            (overlay(image, pred, truth, colors), True),
        ]
        for column, (array, nearest) in enumerate(tiles):
            picture.paste(_fit(array, size, nearest), (GAP + column * (tile + GAP), top))
        score = panel.get("score")
        caption = str(panel.get("name", f"image {row}")) + (f"   {score:.4f}" if isinstance(score, float) else "")
        _text(draw, (GAP, top + size[1] + 2), caption, small, "black")
        top += size[1] + _CAPTION + GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, compress_level=PNG_LEVEL)
    return path


@dataclass
class Series:
    """One line of a chart: ``ys[i]`` at ``xs[i]``; NaN leaves a gap."""

    label: str
    color: tuple[int, int, int]
    xs: list[float]
    ys: list[float]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step - 1e-9)) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}"  # 3 digits tell 1-2-5 ticks apart and hide float noise such as 0.30000000000000004


@dataclass
class Frame:
    """A chart's plot area in pixels and the data range it shows."""

    left: float
    top: float
    right: float
    bottom: float
    x_ticks: list[float]
    y_ticks: list[float]

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Data coordinates -> pixel coordinates."""
        (x0, x1), (y0, y1) = (self.x_ticks[0], self.x_ticks[-1]), (self.y_ticks[0], self.y_ticks[-1])
        return (
            self.left + (x - x0) / (x1 - x0) * (self.right - self.left),
            self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top),
        )


def draw_chart(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, series: list[Series]) -> None:
    """A line chart in ``box`` (left, top, right, bottom): title, axes with tick labels, "step" axis, legend."""
    left, top, right, bottom = box[0] + 62, box[1] + 34, box[2] - 12, box[3] - 40
    _text(draw, (box[0] + 8, box[1] + 4), title, _font(14), "black")
    draw.text(((left + right) // 2 - 12, bottom + 22), "step", fill="black", font=_font(11))
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
    if not points:
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left + 10, top + 10), "no data yet", fill="gray", font=_font(11))
        return
    frame = Frame(
        left,
        top,
        right,
        bottom,
        nice_ticks(min(p[0] for p in points), max(p[0] for p in points)),
        nice_ticks(min(p[1] for p in points), max(p[1] for p in points)),
    )
    _draw_axes(draw, frame)
    for index, line in enumerate(series):
        _draw_series(draw, frame, line)
        if len(series) > 1:  # legend, top right
            y = top + 6 + 15 * index
            draw.line([(right - 120, y + 6), (right - 100, y + 6)], fill=_readable(line.color), width=3)
            _text(draw, (right - 95, y), clean_label(line.label)[:14], _font(11), "black")


def _draw_axes(draw: ImageDraw.ImageDraw, frame: Frame) -> None:
    """Grid lines, tick labels and the frame."""
    small = _font(11)
    for tick in frame.x_ticks:
        x, label = frame.at(tick, frame.y_ticks[0])[0], _label(tick)
        draw.line([(x, frame.top), (x, frame.bottom)], fill=(230, 230, 230))
        draw.text((x - draw.textlength(label, font=small) / 2, frame.bottom + 5), label, fill="black", font=small)
    for tick in frame.y_ticks:
        y, label = frame.at(frame.x_ticks[0], tick)[1], _label(tick)
        draw.line([(frame.left, y), (frame.right, y)], fill=(230, 230, 230))
        draw.text((frame.left - 4 - draw.textlength(label, font=small), y - 6), label, fill="black", font=small)
    draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline="black")


def _draw_series(draw: ImageDraw.ImageDraw, frame: Frame, line: Series) -> None:
    """A polyline broken at NaN values, with a dot per point while points are few (each is a round)."""
    color = _readable(line.color)
    segment: list[tuple[float, float]] = []
    for x, y in [*zip(line.xs, line.ys), (math.nan, math.nan)]:  # the NaN sentinel ends the last segment
        if math.isfinite(x) and math.isfinite(y):
            segment.append(frame.at(x, y))
            continue
        if len(segment) > 1:
            draw.line(segment, fill=color, width=2)
        for px, py in segment if len(segment) < 40 else ():
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        segment = []


def _readable(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Class colours are chosen for masks; darken the light ones (and black background stays black) for lines."""
    light = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return tuple(int(c * 160 / light) for c in color) if light > 160 else color


def _column(rows: list[dict], key: str) -> list[float]:
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key, math.nan)))
        except (TypeError, ValueError):  # an empty CSV cell: no score that round
            values.append(math.nan)
    return values


def save_curves(path: str | Path, rows: list[dict], class_map: object | None = None) -> Path:
    """Write ``plots/curves.png``: train loss, validation Dice per foreground class, and learning rate.

    ``rows`` are metrics.csv rows (dicts of strings or numbers) with ``step``, ``train_loss``, ``lr`` and
    ``dice_<class>`` columns.
    """
    path = Path(path)
    names = list(getattr(class_map, "names", None) or [k[5:] for k in (rows[0] if rows else {}) if k[:5] == "dice_"])
    names = [n for n in names if n not in ("fg",)]
    colors = class_colors(class_map, len(names))
    steps = _column(rows, "step")
    dice = [Series(n, colors[i % len(colors)], steps, _column(rows, f"dice_{n}")) for i, n in enumerate(names)][1:]
    if len(dice) > 1:
        dice.append(Series("mean", (0, 0, 0), steps, _column(rows, "dice_fg")))
    charts = [
        ("train loss", [Series("train loss", (31, 119, 180), steps, _column(rows, "train_loss"))]),
        ("validation Dice", dice),
        ("learning rate", [Series("lr", (214, 39, 40), steps, _column(rows, "lr"))]),
    ]
    picture = Image.new("RGB", CURVES_SIZE, "white")
    draw = ImageDraw.Draw(picture)
    width = CURVES_SIZE[0] // len(charts)
    for i, (title, series) in enumerate(charts):
        draw_chart(draw, (i * width, 0, (i + 1) * width, CURVES_SIZE[1]), title, series)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, compress_level=PNG_LEVEL)
    return path

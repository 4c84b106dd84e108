"""Pictures of predictions, drawn with Pillow: class colours, overlays, error maps and prediction galleries.

``save_gallery`` draws ``plots/gallery.png`` (refreshed when ``best.pt`` improves); the HTML reports embed the same
tiles. The charts (learning curves, confusion matrix) are matplotlib's: :mod:`unetseg.tracking.charts`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unetseg.data.classmap import IGNORE_INDEX, PALETTE

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


FALSE_POSITIVE = (255, 140, 0)  # orange: predicted as a foreground class that the truth does not have there
FALSE_NEGATIVE = (0, 150, 255)  # blue: true foreground predicted as background


def error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The image with false positives in orange and false negatives in blue (ignore pixels left as they are)."""
    base = to_rgb(image).astype(np.float32)
    pred, truth = np.asarray(pred), np.asarray(truth)
    scored = truth != IGNORE_INDEX
    wrong_fg = scored & (pred > 0) & (pred != truth)  # includes a foreground pixel given the wrong class
    missed = scored & (truth > 0) & (pred == 0)
    for mask, color in ((wrong_fg, FALSE_POSITIVE), (missed, FALSE_NEGATIVE)):
        base[mask] = (1 - alpha) * base[mask] + alpha * np.asarray(color, np.float32)
    return base.astype(np.uint8)


def fit_tile(tile: np.ndarray, longest: int, nearest: bool) -> Image.Image:
    """A tile scaled so its longer side is ``longest`` px (nearest for masks: no blended classes)."""
    return _fit(tile, _tile_size(np.shape(tile), longest), nearest)

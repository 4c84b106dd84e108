"""Charts of a run and an evaluation, drawn with matplotlib (Agg, no display): learning curves and the confusion
matrix, as PNG bytes for ``plots/`` and for the self-contained HTML reports.

matplotlib picks tick positions and label precision itself, so three validation points near 0.199 get three
distinct labels (or one), never "0.199" five times; the learning rate is drawn on a log axis, where warm-up and
decay are both visible. Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so the logging
thread can draw them while training goes on.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from unetseg.core.atomic import write_atomic
from unetseg.tracking.plots import PNG_LEVEL, class_colors, clean_label

DPI = 100
CHART_SIZE = (5.0, 3.4)  # inches: one chart; the HTML lays them out side by side or stacked, by screen width
DOTS_UNTIL = 40  # points: a marker per round while rounds are few (each is a validation round)
# "tight" fits tick labels and titles inside the figure (nothing clipped) at half the cost of "constrained"
LAYOUT = "tight"
MARGINS = {"left": 0.16, "right": 0.97, "bottom": 0.15, "top": 0.9}  # of each chart: room for 8-character ticks
LOSS_COLORS = {"train_loss": "#1f77b4", "val_loss": "#ff7f0e"}


def column(rows: list[dict], key: str) -> np.ndarray:
    """One metrics.csv column as floats; empty or missing cells are NaN (a gap in the line)."""
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key, math.nan)))
        except (TypeError, ValueError):
            values.append(math.nan)
    return np.asarray(values, dtype=np.float64)


def readable(color: Sequence[int]) -> tuple[float, float, float]:
    """A class colour as a matplotlib line colour: light ones darkened so they show on white."""
    light = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    scale = 160 / light if light > 160 else 1.0
    return tuple(min(1.0, c * scale / 255) for c in color[:3])


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes (no file: the caller writes atomically or embeds them)."""
    buffer = io.BytesIO()
    with _quiet_glyphs():
        FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def svg(figure: Figure) -> bytes:
    """The figure as SVG bytes: sharp at any zoom, and faster to make than a PNG (no rasterising)."""
    buffer = io.BytesIO()
    with _quiet_glyphs():
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_glyphs() -> Iterator[None]:
    """A class name in a script the font lacks draws as boxes; that is no reason to warn on the training console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        yield


def _style(ax: object, title: str) -> None:
    ax.set_title(clean_label(title), fontsize=11, loc="left")
    ax.set_xlabel("step")
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.ticklabel_format(axis="y", useOffset=False)  # 0.1990, 0.1995: the values, not "+1.99e-1" and offsets


def _line(ax: object, steps: np.ndarray, values: np.ndarray, label: str, color: object) -> bool:
    """One series, broken at NaN; returns whether it had any finite point."""
    finite = np.isfinite(steps) & np.isfinite(values)
    if not finite.any():
        return False
    marker = "o" if finite.sum() <= DOTS_UNTIL else None
    ax.plot(steps, values, label=clean_label(label), color=color, marker=marker, markersize=3.5, linewidth=1.6)
    return True


def _finish(ax: object, drawn: int) -> None:
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center", color="gray")
    elif drawn > 1:
        ax.legend(fontsize=8, loc="best", framealpha=0.8)


def draw_loss(ax: object, rows: list[dict], class_map: object | None = None, all_classes: bool = False) -> None:
    """Training loss (and validation loss where metrics.csv has it) against the step."""
    _style(ax, "loss")
    steps = column(rows, "step")
    drawn = sum(_line(ax, steps, column(rows, key), key.replace("_", " "), color) for key, color in LOSS_COLORS.items())
    _finish(ax, drawn)


def score_names(rows: list[dict], class_map: object | None) -> list[str]:
    """Class names that have ``dice_<name>`` columns, in class order."""
    header = rows[0] if rows else {}
    names = list(getattr(class_map, "names", None) or [k[5:] for k in header if k.startswith("dice_")])
    return [n for n in names if n not in ("fg", "mean")]


def draw_score(ax: object, rows: list[dict], class_map: object | None = None, all_classes: bool = False) -> None:
    """Validation Dice per class (foreground classes, or every class for mIoU-ranked runs) and their mean."""
    _style(ax, "validation Dice per class")
    steps = column(rows, "step")
    names = score_names(rows, class_map)
    colors = class_colors(class_map, len(names))
    shown = list(enumerate(names))[0 if all_classes else 1 :]
    drawn = sum(_line(ax, steps, column(rows, f"dice_{n}"), n, readable(colors[i % len(colors)])) for i, n in shown)
    if len(shown) > 1:
        drawn += _line(ax, steps, column(rows, "dice_mean" if all_classes else "dice_fg"), "mean", "black")
    _finish(ax, drawn)


def draw_lr(ax: object, rows: list[dict], class_map: object | None = None, all_classes: bool = False) -> None:
    """The learning rate on a log axis (warm-up, then the decay, both readable)."""
    _style(ax, "learning rate")
    lr = column(rows, "lr")
    drawn = _line(ax, column(rows, "step"), np.where(lr > 0, lr, np.nan), "lr", "#d62728")
    if drawn:
        ax.set_yscale("log")
    _finish(ax, drawn)


def save_curves(path: str | Path, rows: list[dict], class_map: object | None = None, all_classes: bool = False) -> Path:
    """Write ``plots/curves.png`` (atomically) from metrics.csv rows: loss, validation Dice per class, lr."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, strip(curves(rows, class_map, all_classes)))
    return path


CHARTS = {"loss": draw_loss, "score": draw_score, "lr": draw_lr}


def curves(rows: list[dict], class_map: object | None, all_classes: bool = False) -> dict[str, bytes]:
    """The three learning-curve charts, each as its own PNG: ``loss``, ``score`` and ``lr``.

    Drawn as one figure of three equal panels with fixed margins and cut apart: one draw instead of three, and
    no layout engine (which draws everything once more to measure it). Tick labels fit the margins: matplotlib
    shows at most 6 significant digits, with an offset or a power of ten beyond that.
    """
    figure = Figure(figsize=(len(CHARTS) * CHART_SIZE[0], CHART_SIZE[1]), dpi=DPI)
    for panel, draw in zip(figure.subfigures(1, len(CHARTS)), CHARTS.values()):
        draw(panel.add_subplot(), rows, class_map, all_classes)
        panel.subplots_adjust(**MARGINS)
    whole = Image.open(io.BytesIO(png(figure)))
    width = whole.width // len(CHARTS)
    return {name: _encode(whole.crop((i * width, 0, (i + 1) * width, whole.height))) for i, name in enumerate(CHARTS)}


def _encode(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def strip(pictures: dict[str, bytes]) -> bytes:
    """Charts side by side in one PNG (``plots/curves.png``), pasted with Pillow: nothing drawn twice."""
    tiles = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures.values()]
    picture = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    left = 0
    for tile in tiles:
        picture.paste(tile, (left, 0))
        left += tile.width
    return _encode(picture)


def confusion_chart(matrix: Sequence[Sequence[int]], names: Sequence[str], kind: str = "png") -> bytes:
    """The confusion matrix: rows truth, columns prediction, shaded by the share of the true class, with
    the count and the percentage in each cell; labels are never cut off (the layout makes room for them)."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    k = len(names)
    side = min(12.0, 2.5 + 0.9 * k)
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout=LAYOUT)
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")  # auto: the layout sees the labels
    labels = [clean_label(n) for n in names]
    ax.set_xticks(range(k), labels, rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("share of each true class", fontsize=11, loc="left")
    font = max(6, 11 - k // 3)
    for i in range(k):
        for j in range(k):
            ink = "white" if shares[i, j] > 0.5 else "black"
            text = f"{int(counts[i, j])}\n{100 * shares[i, j]:.1f}%" if totals[i, 0] else "-"
            ax.text(j, i, text, ha="center", va="center", color=ink, fontsize=font)
    figure.colorbar(image, ax=ax, shrink=0.8, format=lambda v, _: f"{100 * v:.0f}%")
    return svg(figure) if kind == "svg" else png(figure)

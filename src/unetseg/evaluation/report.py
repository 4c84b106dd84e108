"""Evaluation reports for people and machines: console table, per-image CSV, confusion matrix CSV and PNG
(the HTML page: :mod:`unetseg.tracking.report_html`).

Empty scores (class absent from truth and prediction) are shown as "empty" on the console, an empty field in
CSV files and ``null`` in JSON; never as 1.0.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from unetseg.core.atomic import write_atomic
from unetseg.evaluation.boundary import DISTANCES
from unetseg.evaluation.metrics import SCORES


def show(value: float, digits: int = 4) -> str:
    """A score for the console: 4 decimals, or "empty"."""
    return "empty" if math.isnan(value) else f"{value:.{digits}f}"


def worst_images(report: dict, k: int) -> list[dict]:
    """The ``k`` images with the lowest headline score (foreground Dice or mIoU; images without one are skipped)."""
    key = report.get("headline", {}).get("name", "dice_fg")
    scored = [row for row in report["per_image"] if not math.isnan(row[key])]
    return sorted(scored, key=lambda row: (row[key], row["image"]))[:k]


def print_report(report: dict, worst: int = 5) -> None:
    """A readable per-class table, the headline score and why, both means, and the worst images."""
    distances = [d for d in DISTANCES if d in report["classes"][0]]
    print(f"{report['checkpoint']} on {report['data']} ({report['images']} images, scale {report['scale']})")
    columns = [("dice", 8), ("iou", 8), ("precision", 10), ("recall", 8), ("image_dice", 11)]
    columns += [(d, 9) for d in distances]
    header = f"  {'class':<16}{'value':>10}" + "".join(f"{n.replace('_', ' '):>{w}}" for n, w in columns)
    print(header + f"{'true px':>12}{'pred px':>12}{'images':>8}")
    for row in report["classes"]:
        cells = "".join(f"{show(row[n]):>{w}}" for n, w in columns)
        print(
            f"  {row['name'][:15]:<16}{str(row['value']):>10}{cells}"
            f"{row['pixels_true']:>12}{row['pixels_pred']:>12}{row['images_present']:>8}"
        )
    _print_headline(report)
    print(
        f"  all classes, pooled over images: miou {show(report['miou'])}  dice {show(report['dice_mean'])}  "
        "(mean over every class)"
    )
    print(
        f"  foreground, pooled over images: dice {show(report['dice_fg'])}  iou {show(report['iou_fg'])}  "
        "(mean over classes 1..K-1)"
    )
    for label, key in (("mean over images", "macro"), ("pooled over images and classes", "micro")):
        scores = report[key]
        text = "  ".join(f"{n} {show(scores[n])}" for n in (*SCORES, *distances) if n in scores)
        print(f"  foreground, {label}: {text}")
    _print_worst(report, worst)


def _print_headline(report: dict) -> None:
    headline = report.get("headline")
    if headline:
        other = "foreground" if headline["kind"] == "all" else "all"
        print(
            f"  headline: {headline['label']} {show(headline['value'])} ({headline['name']}; {headline['reason']}; "
            f"--score {other} for the other)"
        )


def _print_worst(report: dict, worst: int) -> None:
    rows = worst_images(report, worst)
    if not rows:
        return
    key = report.get("headline", {}).get("name", "dice_fg")
    print(f"  worst {len(rows)} image(s) by {'mIoU' if key == 'miou' else 'foreground dice'}:")
    names = [c["name"] for c in report["classes"]]
    first = 0 if key == "miou" else 1
    for row in rows:
        per_class = " ".join(f"{n}={show(d, 3)}" for n, d in zip(names[first:], row["dice"][first:]))
        means = f"miou {show(row['miou'])}  dice_fg" if key == "miou" else "dice"
        print(f"    {row['image']:<32} {means} {show(row['dice_fg'])}  iou {show(row['iou_fg'])}  ({per_class})")


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def write_per_image_csv(path: Path, report: dict) -> None:
    """One row per image: foreground means, then per class scores, pixel counts (and distances)."""
    names = [c["name"] for c in report["classes"]]
    keys = [*SCORES, "pixels_true", "pixels_pred", *(d for d in DISTANCES if d in report["classes"][0])]
    means = ["dice_fg", "iou_fg", *(f"{d}_fg" for d in DISTANCES if d in report["classes"][0])]
    means += [m for m in ("miou", "dice_mean") if report["per_image"] and m in report["per_image"][0]]
    rows = [["image", *means, *(f"{key}_{name}" for name in names for key in keys)]]
    for row in report["per_image"]:
        cells = [row[m] for m in means] + [row[key][k] for k in range(len(names)) for key in keys]
        rows.append([row["image"], *map(_cell, cells)])
    write_csv(path, rows)


def write_confusion_csv(path: Path, report: dict) -> None:
    """Pixel counts: rows are the true class, columns the predicted class."""
    names = [c["name"] for c in report["classes"]]
    write_csv(path, [["truth \\ prediction", *names], *([name, *row] for name, row in zip(names, report["confusion"]))])


def write_csv(path: Path, rows: list[list]) -> None:
    """Rows to a CSV file, written atomically."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    write_atomic(path, text.getvalue().encode())


def write_confusion_png(path: Path, report: dict) -> None:
    """The confusion matrix as a picture (matplotlib): each cell shaded by its share of the true class."""
    from unetseg.tracking.charts import confusion_chart  # matplotlib loads only when a picture is asked for

    write_atomic(path, confusion_chart(report["confusion"], [c["name"] for c in report["classes"]]))


def json_safe(value: object) -> object:
    """NaN -> None (JSON null), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value

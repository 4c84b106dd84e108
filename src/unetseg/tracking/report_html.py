"""``report.html``: one self-contained page per training run and per ``unetseg evaluate --report``.

A run's page is rewritten (atomically) after every validation round and once more when the run ends: status, best
round, the settings and why they were chosen, the data, learning curves, per-class scores at the best round, the
confusion matrix of the best round, the validation gallery worst first, every metrics.csv row, and the resolved
config. An evaluation's page holds per-class and per-image tables (sortable), the confusion matrix and the
worst-k images with false positives and negatives coloured.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from html import escape

import numpy as np
import yaml

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.tracking import charts
from unetseg.tracking.html import fmt, gallery, image, page, section, table

# Validation rounds with more rows than this show the table folded; charts always show them all.
OPEN_ROWS = 30


def image_dice(truth: np.ndarray, pred: np.ndarray, first: int = 1) -> float:
    """Mean Dice over the classes ``first..`` present in truth or prediction (NaN when none is): for ordering a
    gallery worst first, the same empty-mask rule as the metrics."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    scored = truth != IGNORE_INDEX
    scores = []
    for k in range(first, int(max(truth[scored].max(initial=0), pred[scored].max(initial=0))) + 1):
        t, p = (truth == k) & scored, (pred == k) & scored
        total = int(t.sum() + p.sum())
        if total:
            scores.append(2 * int((t & p).sum()) / total)
    return float(np.mean(scores)) if scores else math.nan


def worst_first(panels: Sequence[dict], first: int = 1) -> list[dict]:
    """Panels ordered by their Dice, lowest first (no score last), each captioned with its name and score."""
    scored = [(image_dice(p["truth"], p["pred"], first), p) for p in panels]
    scored.sort(key=lambda item: (math.isnan(item[0]), item[0]))
    return [p | {"caption": f"{p['name']}   Dice {fmt(s)}"} for s, p in scored]


@functools.lru_cache(maxsize=2)
def confusion_svg(matrix: tuple, names: tuple) -> bytes:
    """The best round's confusion chart, drawn again only when the best round changes."""
    return charts.confusion_chart(matrix, names, "svg")


def best_index(rows: list[dict], key: str) -> int | None:
    """The row with the highest ``key`` (the score best.pt is chosen by); None when no round has one."""
    values = charts.column(rows, key)
    if not np.isfinite(values).any():
        return None
    return int(np.nanargmax(values))


def _settings(start: dict, plan: Sequence[Sequence] | None, done: dict | None) -> str:
    """The start-up summary as a table, the plan's choices with their reasons, and how the run ended."""
    keep = ("data", "train_images", "val_images", "channels", "parameters", "model_mb", "device", "hardware")
    keep += ("processes", "precision", "epochs", "batches_per_epoch", "global_batch", "start_step")
    rows = [(k.replace("_", " "), start[k]) for k in keep if k in start]
    score = start.get("score") or {}
    if score:
        rows.append(("best.pt chosen by", f"{score.get('name')} ({score.get('reason')})"))
    rows += [("note", note) for note in start.get("notes", [])]
    body = table(["setting", "value"], rows, sortable=False)
    if plan:
        body += "<h3>plan</h3>" + table(["option", "value", "why"], [list(map(str, p)) for p in plan], sortable=False)
    if done:
        ended = [(k.replace("_", " "), v) for k, v in done.items() if not isinstance(v, (dict, list))]
        body += "<h3>end</h3>" + table(["how the run ended", "value"], ended, sortable=False)
    return body


def _data(start: dict) -> str:
    """Class shares of the training pixels and the image counts."""
    rows = [(c["name"], c["value"], fmt(100 * float(c["share"]), 2)) for c in start.get("classes", [])]
    text = f"<p>{escape(str(start.get('data', '')))}: {start.get('train_images', '?')} training, "
    text += f"{start.get('val_images', '?')} validation images, {start.get('channels', '?')} channel(s).</p>"
    return text + table(["class", "mask value", "pixels %"], rows)


def _per_class(row: dict, names: Sequence[str]) -> str:
    cells = [(n, _float(row.get(f"dice_{n}")), _float(row.get(f"iou_{n}"))) for n in names]
    return table(["class", "Dice", "IoU"], cells)


def _float(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metrics_table(rows: list[dict], best: int | None) -> str:
    if not rows:
        return "<p>No validation round yet.</p>"
    headers = list(rows[0])
    body = table(headers, [[_cell(r.get(h, "")) for h in headers] for r in rows], marked=best)
    if len(rows) <= OPEN_ROWS:
        return body
    return f"<details><summary>{len(rows)} rounds (click to show)</summary>{body}</details>"


def _cell(value: object) -> object:
    """A metrics.csv string as a number where it is one (sorted and formatted as such)."""
    number = _float(value)
    return value if value == "" or math.isnan(number) else number


def _charts(pictures: dict[str, bytes]) -> str:
    return "<div class=charts>" + "".join(image(png, name) for name, png in pictures.items()) + "</div>"


def _config(config: dict) -> str:
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"<details><summary>config.yaml (resolved)</summary><pre>{escape(text)}</pre></details>"


def run_page(
    name: str,
    rows: list[dict],
    class_map: object | None,
    start: dict,
    config: dict,
    confusion: Sequence[Sequence[int]] | None = None,
    panels: Sequence[dict] | None = None,
    plan: Sequence[Sequence] | None = None,
    done: dict | None = None,
    pictures: dict[str, bytes] | None = None,
) -> str:
    """The report of a training run from what the run log holds (metrics.csv rows, the start-up summary, the best
    round's confusion matrix and gallery, and the end of the run when it has ended). ``pictures``: the learning
    curves already drawn (``charts.curves``), else drawn here."""
    score = (start.get("score") or {}).get("name") or ("miou" if rows and "miou" in rows[0] else "dice_fg")
    all_classes = score == "miou"
    names = charts.score_names(rows, class_map)
    best = best_index(rows, score)
    progress = f"in progress: {len(rows)} validation round(s) so far"
    summary = (f"finished: {done.get('reason', '')}" if done else progress) + ". "
    if best is not None:
        summary += f"Best {score} {fmt(_float(rows[best][score]))} at step {rows[best].get('step')}."
    sections = [
        section("settings", _settings(start, plan, done), "settings"),
        section("data", _data(start), "data"),
        section("learning curves", _charts(pictures or charts.curves(rows, class_map, all_classes)), "curves"),
    ]
    if best is not None:
        title = f"per class at the best round (step {rows[best].get('step')})"
        sections.append(section(title, _per_class(rows[best], names), "classes"))
    if confusion is not None:
        labels = tuple(names or getattr(class_map, "names", []))
        chart = image(confusion_svg(tuple(map(tuple, confusion)), labels), "confusion")
        sections.append(section("confusion matrix (best round, pixels)", f"<div class=wide>{chart}</div>", "cm"))
    ordered = worst_first(panels or [], 0 if all_classes else 1)
    sections.append(section("validation images, worst first (best round)", gallery(ordered, class_map), "gallery"))
    sections.append(section("every validation round", _metrics_table(rows, best), "rounds"))
    sections.append(section("config", _config(config), "config"))
    return page(f"unetseg run {name}", summary, sections)


def evaluation_page(report: dict, panels: Sequence[dict], class_map: object | None) -> str:
    """The report of ``unetseg evaluate``: headline, per-class and per-image tables, confusion, worst images."""
    headline = report.get("headline", {})
    names = [c["name"] for c in report["classes"]]
    distances = [d for d in ("hd95", "asd") if d in report["classes"][0]]
    subtitle = (
        f"{report['checkpoint']} on {report['data']}: {report['images']} images, scale {report['scale']}. "
        f"{headline.get('label', '')} {fmt(headline.get('value', math.nan))} ({headline.get('reason', '')})."
    )
    class_cols = ["dice", "iou", "precision", "recall", "image_dice", *distances]
    class_rows = [
        [c["name"], c["value"], *(c[k] for k in class_cols), c["pixels_true"], c["pixels_pred"], c["images_present"]]
        for c in report["classes"]
    ]
    class_head = ["class", "value", *(k.replace("_", " ") for k in class_cols), "true px", "pred px", "images"]
    means = [
        ("all classes, pooled: mIoU", report["miou"]),
        ("all classes, pooled: mean Dice", report["dice_mean"]),
        ("foreground, pooled: Dice", report["dice_fg"]),
        ("foreground, pooled: IoU", report["iou_fg"]),
        *((f"foreground, mean over images: {k}", v) for k, v in report["macro"].items()),
    ]
    image_keys = ["dice_fg", "iou_fg", "miou", *(f"{d}_fg" for d in distances)]
    first = 0 if headline.get("kind") == "all" else 1
    image_head = ["image", *image_keys, *(f"dice {n}" for n in names[first:])]
    image_rows = [[r["image"], *(r[k] for k in image_keys), *r["dice"][first:]] for r in report["per_image"]]
    confusion = image(charts.confusion_chart(report["confusion"], names, "svg"), "confusion matrix")
    captioned = []
    key = headline.get("name", "dice_fg")
    by_name = {r["image"]: r for r in report["per_image"]}
    for panel in panels:
        row = by_name.get(panel["name"], {})
        captioned.append(panel | {"caption": f"{panel['name']}   {key} {fmt(row.get(key, math.nan))}"})
    sections = [
        section("per class", table(class_head, class_rows), "classes"),
        section("means", table(["score", "value"], means, sortable=False), "means"),
        section("confusion matrix (pixels)", f"<div class=wide>{confusion}</div>", "cm"),
        section(f"worst {len(panels)} image(s)", gallery(captioned, class_map, errors=True), "worst"),
        section("per image (click a header to sort)", table(image_head, image_rows), "images"),
    ]
    return page("unetseg evaluate", subtitle, sections)

"""report.html of a training run and of ``unetseg evaluate --report``; the charts behind them."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from conftest import make_dataset
from unetseg.cli import main
from unetseg.data.classmap import ClassMap
from unetseg.tracking import charts, plots
from unetseg.tracking.html import table
from unetseg.tracking.report_html import image_dice, run_page, worst_first
from unetseg.tracking.runlog import FIRST_DRAWING_S, REPORT_SHARE, RunLog

TINY = ["--width", "4", "-b", "4", "--workers", "1", "--val-rounds", "2", "--quiet"]


class Page(HTMLParser):
    """What a report holds: section ids, embedded images, gallery figures, table rows, external references."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.images, self.figures, self.rows, self.external = [], [], 0, 0, []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "figure":
            self.figures += 1
        elif tag == "tr" and self.sections:
            self.rows += 1
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])


def decode(uri: str) -> Image.Image | ElementTree.Element:
    """An embedded PNG as a Pillow image, an embedded SVG as its parsed root element."""
    kind, data = uri.split(",", 1)
    raw = base64.b64decode(data)
    if kind == "data:image/svg+xml;base64":
        return ElementTree.fromstring(raw)
    assert kind == "data:image/png;base64", kind
    return Image.open(io.BytesIO(raw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on 12 images of 3 classes (2 validation rounds), then its evaluation report."""
    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", count=12, size=(32, 32), values=(0, 128, 255))
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "-v", "25", "-e", "1", *TINY]) == 0
    best = run / "checkpoints" / "best.pt"
    args = ["evaluate", "-m", str(best), "--data", str(data), "--report", str(root / "eval"), "--worst", "3"]
    assert main(args) == 0
    return run, root / "eval" / "report.html"


def test_run_report_is_one_self_contained_page(trained):
    run, _ = trained
    text = (run / "report.html").read_text()
    page = Page(text)
    assert page.external == []  # nothing fetched: charts and tiles are data: URIs
    assert {"settings", "data", "curves", "classes", "cm", "gallery", "rounds", "config"} <= set(page.sections)
    assert "finished: finished all epochs" in text and "Best dice_fg" in text
    pictures = [decode(uri) for uri in page.images]
    svgs = [p for p in pictures if isinstance(p, ElementTree.Element)]
    assert len(svgs) == 1 and svgs[0].tag.endswith("svg")  # the confusion matrix
    assert all(p.format == "PNG" and p.width > 0 for p in pictures if p not in svgs)
    assert page.figures == 3  # the 3 validation images, each a row of image / truth / prediction / overlay
    assert len(pictures) == 3 + 1 + 3 * 4  # loss, score, lr; the confusion matrix; the gallery tiles
    assert "learning_rate:" in text  # the resolved config
    data = text[text.index('id="data"') : text.index('id="curves"')]
    shares = re.findall(r'<td data-v="[^"]+">(\d+\.\d+)</td></tr>', data)  # the last column: pixels %
    assert len(shares) == 3 and all(len(s.split(".")[1]) == 2 for s in shares), shares
    assert "<h3>plan</h3>" in text and "given (the plan would choose" in text  # the plan's reasons (width given)


def test_run_report_gallery_is_worst_first(trained):
    run, _ = trained
    scores = [
        float(s)
        for s in re.findall(r"<figcaption>[^<]*Dice (\d\.\d+|empty)</figcaption>", (run / "report.html").read_text())
        if s != "empty"
    ]
    assert scores == sorted(scores) and scores


def test_evaluation_report_tables_confusion_and_worst_images(trained):
    _, report = trained
    text = report.read_text()
    page = Page(text)
    assert page.external == [] and {"classes", "means", "images", "cm", "worst"} <= set(page.sections)
    assert page.figures == 3  # --worst 3
    assert "false positive" in text and "false negative" in text
    assert len(re.findall(r'<table class="sortable">', text)) == 2  # per class and per image
    per_image = text[text.index('id="images"') :]
    assert per_image.count("<tr>") == 1 + 12  # header and every image
    assert len(page.images) == 1 + 3 * 5  # confusion; five tiles per worst image (with the error map)


def test_error_map_colours_false_positives_and_negatives_apart():
    truth = np.array([[0, 1], [1, 255]], np.uint8)
    pred = np.array([[1, 1], [0, 0]], np.uint8)
    shown = plots.error_overlay(np.zeros((2, 2, 1), np.uint8), pred, truth, alpha=1.0)
    assert tuple(shown[0, 0]) == plots.FALSE_POSITIVE and tuple(shown[1, 0]) == plots.FALSE_NEGATIVE
    assert tuple(shown[0, 1]) == (0, 0, 0) and tuple(shown[1, 1]) == (0, 0, 0)  # right, and ignored


def test_image_dice_and_worst_first_by_hand():
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1  # 4 true pixels
    half = truth.copy()
    half[0, :2] = 0  # 2 of them predicted: Dice 2*2/(4+2) = 2/3
    assert image_dice(truth, truth) == 1.0 and image_dice(truth, half) == pytest.approx(2 / 3)
    assert np.isnan(image_dice(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)))  # nothing to score
    panels = [{"name": n, "truth": truth, "pred": p} for n, p in (("good", truth), ("half", half), ("none", 0 * truth))]
    assert [p["name"] for p in worst_first(panels)] == ["none", "half", "good"]


def tick_labels(draw, rows) -> list[str]:
    figure = Figure()
    ax = figure.add_subplot()
    draw(ax, rows, ClassMap(values=[0, 255]))
    FigureCanvasAgg(figure).draw()
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text()], ax


def test_three_rounds_never_repeat_an_axis_label_and_lr_is_log():
    rows = [{"step": s, "train_loss": 0.199 + 1e-4 * s, "lr": lr} for s, lr in ((2, 1e-4), (5, 1e-3), (7, 2e-5))]
    labels, _ = tick_labels(charts.draw_loss, rows)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    _, ax = tick_labels(charts.draw_lr, rows)
    assert ax.get_yscale() == "log"
    many = [{"step": s, "train_loss": 1 / s, "val_loss": 1.2 / s, "lr": 1e-3} for s in range(1, 301)]
    labels, ax = tick_labels(charts.draw_loss, many)
    assert len(set(labels)) == len(labels) and len(ax.get_lines()) == 2  # train and validation loss


def started_log(run_dir, clock):
    run_dir.mkdir(exist_ok=True)
    log = RunLog(run_dir, quiet=True)
    log.clock = clock
    log.start([], {"score": {"name": "dice_fg"}, "classes": []}, ClassMap(values=[0, 255]), {"lr": 0.1})
    return log


ROW = {"step": 1, "epoch": 1, "train_loss": 0.5, "lr": 0.1, "dice_fg": 0.4, "dice_class1": 0.4}


def test_report_refreshes_within_its_share_of_the_time_and_always_at_the_end(tmp_path):
    now = [0.0]
    log = started_log(tmp_path, lambda: now[0])
    report = tmp_path / "report.html"
    log.validation(1, ROW, torch.nn.Linear(1, 1), None, True, confusion=[[5, 1], [2, 3]])
    log._collect(wait=True)
    assert not report.exists()  # at once after the start: no time yet that would pay for a drawing
    now[0] = 2 * FIRST_DRAWING_S / REPORT_SHARE  # this refresh and the final one are REPORT_SHARE of the time now
    log.validation(2, ROW | {"step": 2, "dice_fg": 0.5}, torch.nn.Linear(1, 1), None, True)
    log._collect(wait=True)
    assert "in progress: 2 validation round(s)" in report.read_text()
    assert len(log.costs) == 1 and log.costs[0] > 0
    log.costs[0] = 1e6  # a drawing that slow: the next rounds skip their refresh
    now[0] += 100
    log.validation(3, ROW | {"step": 3, "dice_fg": 0.6}, torch.nn.Linear(1, 1), None, True)
    log._collect(wait=True)
    assert "in progress: 2 validation round(s)" in report.read_text()
    log.event("done", ["done"], {"reason": "finished all epochs"})
    log.close()
    text = report.read_text()
    assert "finished: finished all epochs" in text and "Best dice_fg 0.6000 at step 3" in text
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left


def late():
    """A clock that reads 0 at the start and a day later at every round: every round may refresh."""
    times = iter([0.0])
    return lambda: next(times, 86400.0)


def test_the_final_report_reuses_the_charts_of_rows_drawn_already(tmp_path, monkeypatch):
    drawn = []
    curves = charts.curves
    monkeypatch.setattr(charts, "curves", lambda *args: drawn.append(len(args[0])) or curves(*args))
    log = started_log(tmp_path, late())  # every round may refresh
    log.validation(1, ROW, torch.nn.Linear(1, 1), None, True)
    log._collect(wait=True)
    log.event("done", ["done"], {"reason": "finished all epochs"})
    log.close()
    assert drawn == [1] and log.queued == 1  # one set of charts, drawn after the round, reused at the end
    assert "finished: finished all epochs" in (tmp_path / "report.html").read_text()  # the page itself is new
    log = started_log(tmp_path / "second", late())
    log.validation(1, ROW, torch.nn.Linear(1, 1), None, True)
    log.metrics(ROW | {"step": 2})  # a row after the last refresh: the final page draws the curves again
    log.close()
    assert drawn == [1, 1, 2]


def test_gallery_png_shows_the_best_round_even_when_its_refresh_was_skipped(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "save_gallery", lambda path, panels, class_map, title: saved.append((title, panels)))
    log = started_log(tmp_path, lambda: 0.0)  # no time passes: every refresh is skipped

    def panels(name):
        mask = np.zeros((4, 4), np.uint8)
        return [{"name": name, "image": np.zeros((4, 4, 1), np.uint8), "truth": mask, "pred": mask}]

    log.validation(1, ROW, torch.nn.Linear(1, 1), panels("a"), True)
    log.validation(2, ROW | {"step": 2, "dice_fg": 0.6}, torch.nn.Linear(1, 1), panels("b"), True)
    log.validation(3, ROW | {"step": 3, "dice_fg": 0.5}, torch.nn.Linear(1, 1), panels("c"), False)
    assert saved == [] and log.queued == 0
    log.close()
    assert [(title, [p["name"] for p in shown]) for title, shown in saved] == [
        ("step 2: best validation dice_fg 0.6000", ["b"])
    ]


def test_tables_escape_names_and_sort_numbers():
    html = table(["class", "Dice"], [["<script>x</script>", 0.5], ["b", float("nan")], ["c", ""]])
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert 'data-v="0.5">0.5000<' in html and 'data-v="">empty<' in html and 'class="sortable"' in html


def test_page_of_three_hundred_rounds_folds_the_table():
    rows = [{"step": str(s), "train_loss": str(1 / s), "lr": "1e-3", "dice_fg": "0.5"} for s in range(1, 301)]
    text = run_page("r", rows, None, {"score": {"name": "dice_fg"}}, {})
    rounds = text[text.index('id="rounds"') : text.index('id="config"')]
    assert "<details><summary>300 rounds" in rounds and rounds.count("<tr") == 1 + 300

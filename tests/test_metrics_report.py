"""Evaluation metrics on hand-computed masks: the empty-mask rule, reductions, boundary distances, reports."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.data.classmap import IGNORE_INDEX, ClassMap
from unetseg.data.samples import Sample
from unetseg.evaluation.api import build_report
from unetseg.evaluation.boundary import boundary_scores, surface_distances
from unetseg.evaluation.metrics import class_scores, confusion_matrix, per_image_counts, summarize
from unetseg.evaluation.report import worst_images, write_confusion_csv, write_confusion_png, write_per_image_csv
from unetseg.evaluation.scoring import evaluate

I = IGNORE_INDEX  # noqa: E741 - reads as a mask value below

TRUTH = torch.tensor([[[0, 1, 1], [0, 0, 2]], [[I, 0, 0], [0, 0, 0]]])
PRED = torch.tensor([[[0, 1, 0], [0, 1, 0]], [[1, 0, 0], [0, 0, 2]]])


def summary_of(pred: torch.Tensor, truth: torch.Tensor, k: int = 3) -> dict:
    return summarize(confusion_matrix(pred, truth, k), per_image_counts(pred, truth, k))


def test_per_image_scores_follow_the_empty_mask_rule():
    s = summary_of(PRED, TRUTH)
    dice, iou = s["image_scores"]["dice"], s["image_scores"]["iou"]
    assert dice[0] == [4 / 7, 0.5, 0.0]  # class 2 is in the truth but never predicted: 0
    assert iou[0][1] == 1 / 3 and s["image_scores"]["precision"][0][2] == 0.0
    assert math.isnan(dice[1][1])  # class 1 predicted only on an ignored pixel: absent from both, empty
    assert dice[1][2] == 0.0  # class 2 predicted but absent from the truth: 0
    assert s["image_fg"]["dice"] == [0.25, 0.0]  # image 1's mean leaves the empty class out
    assert s["macro"]["dice"] == 0.125


def test_pooled_micro_and_pixel_counts():
    s = summary_of(PRED, TRUTH)
    scores = class_scores(confusion_matrix(PRED, TRUTH, 3))
    assert scores["dice"][1:] == [0.5, 0.0]
    assert math.isclose(s["micro"]["dice"], 2 * 1 / (2 * 1 + 2 + 2))  # tp 1, fp 2, fn 2 over both classes
    assert s["pixels_true"] == [8, 2, 1] and s["pixels_pred"] == [8, 2, 1]  # the ignored pixel is not counted
    assert s["images_present"] == [2, 1, 1]
    assert s["image_pixels_true"][1] == [5, 0, 0] and s["image_pixels_pred"][1] == [4, 0, 1]
    assert s["class_image_mean"]["dice"][1] == 0.5  # image 1 is empty for class 1, left out


def test_all_ignore_and_empty_images_have_no_foreground_score():
    truth = torch.stack([torch.full((2, 3), I), torch.zeros(2, 3, dtype=torch.long)])
    pred = torch.zeros_like(truth)
    s = summary_of(pred, truth, 2)
    assert all(math.isnan(v) for v in s["image_fg"]["dice"])
    assert math.isnan(s["image_scores"]["dice"][0][0])  # nothing countable at all in the all-ignore image
    assert s["image_scores"]["dice"][1][0] == 1.0  # background of the empty image is right
    assert math.isnan(s["macro"]["dice"]) and math.isnan(s["micro"]["dice"])
    assert class_scores(confusion_matrix(pred, truth, 2))["dice"][1] != 1.0


def test_precision_and_recall_of_a_missed_class_are_zero_not_empty():
    truth = torch.tensor([[[1, 1], [0, 0]]])
    pred = torch.zeros_like(truth)
    scores = class_scores(confusion_matrix(pred, truth, 2))
    assert scores["precision"][1] == 0.0 and scores["recall"][1] == 0.0


def random_samples(count: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        shape = (12, 10 + 2 * (i % 3))
        mask = rng.integers(0, 3, shape, dtype=np.uint8)
        mask[0, : i % 4] = IGNORE_INDEX
        samples.append(Sample(f"s{i}", rng.integers(0, 255, (*shape, 1), dtype=np.uint8), mask))
    return samples


def test_every_reported_number_is_independent_of_batch_size():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 3, padding=1)
    samples = random_samples(9)
    norm = {"scale": 255.0, "mean": [0.5], "std": [0.25]}
    runs = [evaluate(model, samples, norm, 3, torch.device("cpu"), batch_size=b, boundary=True) for b in (1, 4, 9)]
    for key in ("confusion", "images", "dice", "micro", "macro", "image_scores", "pixels_true", "images_present"):
        assert json_equal(runs[0][key], runs[1][key]) and json_equal(runs[0][key], runs[2][key]), key
    assert np.array_equal(runs[0]["boundary"], runs[2]["boundary"], equal_nan=True)


def json_equal(a: object, b: object) -> bool:
    return np.array_equal(np.asarray(a, dtype=object).astype(str), np.asarray(b, dtype=object).astype(str))


def square(top: int, left: int, size: int = 3, shape: tuple[int, int] = (8, 10)) -> np.ndarray:
    region = np.zeros(shape, dtype=bool)
    region[top : top + size, left : left + size] = True
    return region


def test_surface_distances_by_hand():
    # Two 3x3 squares three columns apart: border distances 1, 1, 1, 2, 2, 3, 3, 3 in each direction.
    hd95, asd = surface_distances(square(2, 5), square(2, 2))
    assert hd95 == 3.0 and asd == 2.0
    assert surface_distances(square(2, 2), square(2, 2)) == (0.0, 0.0)


def test_surface_distances_of_empty_masks():
    empty = np.zeros((6, 8), dtype=bool)
    assert all(math.isnan(v) for v in surface_distances(empty, empty))
    assert surface_distances(square(1, 1, shape=(6, 8)), empty) == (10.0, 10.0)  # the image diagonal
    assert surface_distances(empty, square(1, 1, shape=(6, 8))) == (10.0, 10.0)


def test_boundary_crop_is_exact_and_ignored_pixels_belong_to_no_region():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    pred = ndimage.binary_opening(rng.random((40, 50)) > 0.6)
    truth = ndimage.binary_opening(rng.random((40, 50)) > 0.6)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    borders = [r & ~ndimage.binary_erosion(r, structure=cross) for r in (pred, truth)]
    d1 = ndimage.distance_transform_edt(~borders[1])[borders[0]]
    d2 = ndimage.distance_transform_edt(~borders[0])[borders[1]]
    expected = (max(np.percentile(d1, 95), np.percentile(d2, 95)), np.concatenate([d1, d2]).mean())
    assert np.allclose(surface_distances(pred, truth), expected)
    target = np.where(truth, 1, 0).astype(np.uint8)[None]
    target[0, :, :25] = IGNORE_INDEX
    scores = boundary_scores(pred.astype(np.uint8)[None], target, 2)
    halves = surface_distances(pred & (np.arange(50) >= 25), truth & (np.arange(50) >= 25))
    assert np.allclose(scores[0, 1], halves)


@pytest.fixture
def report():
    class_map = ClassMap(values=[0, 128, 255], names=["background", "cell", "edge"])
    samples = random_samples(5)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 3, padding=1)
    norm = {"scale": 255.0, "mean": [0.5], "std": [0.25]}
    result = evaluate(model, samples, norm, 3, torch.device("cpu"), batch_size=2, boundary=True)
    return build_report(result, class_map, {"checkpoint": "m.pt", "data": "d", "scale": 1.0})


def test_report_files(report, tmp_path):
    write_per_image_csv(tmp_path / "per_image.csv", report)
    write_confusion_csv(tmp_path / "confusion.csv", report)
    write_confusion_png(tmp_path / "confusion.png", report)
    with open(tmp_path / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == [f"s{i}" for i in range(5)]
    assert {"dice_fg", "hd95_fg", "dice_cell", "iou_edge", "pixels_true_cell", "asd_edge"} <= set(rows[0])
    assert float(rows[2]["dice_cell"]) == report["per_image"][2]["dice"][1]
    with open(tmp_path / "confusion.csv") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["truth \\ prediction", "background", "cell", "edge"]
    assert [int(v) for v in table[2][1:]] == report["confusion"][1]
    picture = Image.open(tmp_path / "confusion.png")
    assert picture.mode in ("RGB", "RGBA") and picture.width > 3 * 72 and picture.height > 3 * 72


def test_worst_images_are_the_lowest_foreground_dice(report):
    worst = worst_images(report, 2)
    scores = sorted(r["dice_fg"] for r in report["per_image"])
    assert [r["dice_fg"] for r in worst] == scores[:2]
    assert report["classes"][1]["name"] == "cell" and "hd95" in report["classes"][1]


def test_boundary_without_scipy_is_a_clear_error(monkeypatch):
    import sys

    from unetseg.errors import UserError
    from unetseg.evaluation.boundary import require_scipy

    monkeypatch.setitem(sys.modules, "scipy", None)  # what an environment without scipy looks like to import
    with pytest.raises(UserError, match="pip install scipy"):
        require_scipy()

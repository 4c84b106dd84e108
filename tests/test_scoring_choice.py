"""Which score ranks models (foreground Dice or mIoU over every class), chosen from the data, used everywhere."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_pair, make_dataset
from unetseg.cli import main
from unetseg.data.checks import inspect_dataset
from unetseg.data.classfile import load_classes_file
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.evaluation.api import build_report
from unetseg.evaluation.choice import choose_score, is_background_name, is_better, round_scores
from unetseg.evaluation.metrics import class_mean
from unetseg.evaluation.report import worst_images
from unetseg.evaluation.scoring import result_from_counts
from unetseg.training import loop
from unetseg.training.optim import Schedule

TINY = ["--width", "4", "-b", "2", "-l", "0.01", "--warmup-steps", "2", "--val-rounds", "1", "--workers", "1"]
TINY += ["--no-plan", "--quiet", "--scheduler", "plateau", "--no-cache"]
SKY = "classes:\n  sky: 0\n  tree: 128\n  house: 255\n"


def class_map_of(root, **options) -> ClassMap:
    """The class map unetseg builds for a dataset folder, the way training builds it."""
    found = inspect_dataset(str(root), None, None, cache=False, **options)
    assert not found.problems, found.problems
    return found.class_map


def write_classes(root, text: str):
    (root / "classes.yaml").write_text(text)
    return root / "classes.yaml"


def test_binary_masks_keep_the_foreground_dice(tmp_path):
    choice = choose_score(class_map_of(make_dataset(tmp_path / "d", count=3)))
    assert (choice.kind, choice.name) == ("foreground", "dice_fg")
    assert "binary" in choice.reason


def test_grey_masks_with_value_0_and_no_classes_file_are_background(tmp_path):
    root = make_dataset(tmp_path / "d", count=4, values=(0, 128, 255))
    assert choose_score(class_map_of(root)).kind == "foreground"


def test_grey_masks_without_value_0_score_every_class(tmp_path):
    root = make_dataset(tmp_path / "d", count=4, values=(1, 2, 3))  # e.g. Oxford pets trimaps: 1 pet, 2 bg, 3 edge
    choice = choose_score(class_map_of(root))
    assert choice.kind == "all" and "value 1" in choice.reason


@pytest.mark.parametrize("name", ["background", "Background", "_background_", "bg", "void", "unlabeled", "other"])
def test_a_background_named_class_0_is_left_out(tmp_path, name):
    root = make_dataset(tmp_path / "d", count=3, values=(0, 128, 255))
    write_classes(root, f"classes:\n  {name}: 0\n  tree: 128\n  house: 255\n")
    choice = choose_score(class_map_of(root))
    assert choice.kind == "foreground" and repr(name) in choice.reason


def test_a_sky_named_class_0_is_a_real_class(tmp_path):
    root = make_dataset(tmp_path / "d", count=3, values=(0, 128, 255))
    write_classes(root, SKY)
    choice = choose_score(class_map_of(root))
    assert (choice.kind, choice.name) == ("all", "miou")
    assert choice.reason == "class 0 is named 'sky': a real class, scored"


def test_a_real_class_named_binary_set_scores_both_classes(tmp_path):
    root = make_dataset(tmp_path / "d", count=3)
    write_classes(root, "classes:\n  sky: 0\n  ground: 255\n")
    assert choose_score(class_map_of(root)).kind == "all"


def make_colour_dataset(root, colours: list[tuple[int, int, int]], count: int = 3):
    """RGB masks painted in ``colours`` (class 0 first)."""
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    palette = np.array(colours, dtype=np.uint8)
    for i in range(count):
        image, mask = draw_pair(rng, (40, 32), tuple(range(len(colours))))
        Image.fromarray(image).save(root / "imgs" / f"im{i}.png")
        Image.fromarray(palette[mask]).save(root / "masks" / f"im{i}.png")
    return root


def test_colour_masks_without_a_black_class_score_every_class(tmp_path):
    root = make_colour_dataset(tmp_path / "d", [(128, 64, 128), (220, 20, 60), (0, 0, 142)])  # road, person, car
    class_map = class_map_of(root)
    assert class_map.is_color and [0, 0, 0] not in class_map.values
    choice = choose_score(class_map)
    assert choice.kind == "all" and "no black" in choice.reason


def test_colour_masks_with_black_keep_the_foreground_dice(tmp_path):
    root = make_colour_dataset(tmp_path / "d", [(0, 0, 0), (220, 20, 60), (0, 0, 142)])
    assert choose_score(class_map_of(root)).kind == "foreground"


def test_overrides_win_over_the_data(tmp_path):
    root = make_dataset(tmp_path / "d", count=3, values=(0, 128, 255))
    sky = load_classes_file(write_classes(root, SKY))
    assert choose_score(sky, "foreground").kind == "foreground"
    binary = ClassMap(values=[0, 255])
    assert choose_score(binary, "all").kind == "all" and choose_score(binary, "auto").kind == "foreground"
    from_file = load_classes_file(write_classes(root, "classes:\n  background: 0\n  car: 255\nscore: all\n"))
    assert choose_score(from_file).kind == "all" and "classes file" in choose_score(from_file).reason
    assert choose_score(from_file, "foreground").kind == "foreground"  # --score wins over the file
    assert ClassMap.from_dict(from_file.to_dict()).score == "all"  # the checkpoint's class map keeps it
    with pytest.raises(UserError, match="--score best"):
        choose_score(binary, "best")
    with pytest.raises(UserError, match="classes.yaml.*score 'miou'"):
        load_classes_file(write_classes(root, "classes:\n  background: 0\n  car: 255\nscore: miou\n"))


def test_background_names():
    assert all(map(is_background_name, ["Background", "__background__", "back-ground", "BG", "Unlabelled"]))
    assert not any(map(is_background_name, ["sky", "road", "backpack", "car"]))


def test_round_comparison_follows_the_chosen_score():
    """Hand-made rounds where the foreground Dice and the mIoU disagree: each choice keeps its own best round."""
    rounds = [{"dice_fg": 0.9, "iou_fg": 0.8, "miou": 0.5, "dice_mean": 0.6}]
    rounds.append({"dice_fg": 0.7, "iou_fg": 0.6, "miou": 0.75, "dice_mean": 0.8})
    rounds.append({"dice_fg": 0.8, "iou_fg": 0.7, "miou": math.nan, "dice_mean": math.nan})
    sky = choose_score(ClassMap([0, 1, 2], ["sky", "a", "b"]))
    for choice, expected in ((sky, 1), (choose_score(ClassMap([0, 1, 2])), 0)):
        best, best_round = -math.inf, None
        for i, result in enumerate(rounds):
            if is_better(choice.value(result), best):
                best, best_round = choice.value(result), i
        assert best_round == expected, choice
    assert list(round_scores(rounds[0], sky)) == ["miou", "dice_mean"]
    assert list(round_scores(rounds[0], choose_score(ClassMap([0, 1])))) == ["dice_fg", "iou_fg"]


def counts(tp, fp, fn) -> torch.Tensor:
    """``(N, 2, 3)`` per-image counts of a binary set: class 1 as given, class 0 the rest of 1000 pixels."""
    fg = torch.tensor([tp, fp, fn]).T
    bg = torch.stack([1000 - fg.sum(1), fg[:, 2], fg[:, 1]], 1)
    return torch.stack([bg, fg], 1)


def test_a_later_round_within_the_noise_of_the_peak_is_as_good():
    choice = choose_score(ClassMap([0, 255]))
    peak = counts([90, 40, 80, 95], [5, 30, 10, 2], [5, 30, 10, 3])
    assert choice.from_counts(peak) == pytest.approx(2 * 305 / (2 * 305 + 47 + 48))
    # 4 images: lower by 0.02, from one hard image; the jackknife error of the paired difference covers it.
    noisy = counts([91, 33, 80, 95], [5, 37, 10, 2], [4, 37, 10, 3])
    assert choice.from_counts(noisy) < choice.from_counts(peak) and choice.as_good(noisy, peak)
    # 40 images each a little worse: measurably worse, however small the gap.
    many, worse = counts(*[[90] * 40, [5] * 40, [5] * 40]), counts(*[[89] * 40, [6] * 40, [6] * 40])
    assert not choice.as_good(worse, many) and choice.as_good(many, worse) and choice.as_good(many, many)
    assert not choice.as_good(noisy, peak[:3])  # other images: nothing to pair
    miou = choose_score(ClassMap([0, 1], ["sky", "road"]))
    assert miou.kind == "all" and miou.from_counts(many) == pytest.approx((900 / 910 + 90 / 100) / 2)


def test_report_carries_both_means_and_names_its_headline():
    # Two images, 3 classes; class 0 (sky) is perfect, class 2 is never found.
    cm = torch.tensor([[10, 0, 0], [0, 4, 4], [0, 2, 0]])
    counts = torch.tensor([[[6, 0, 0], [2, 1, 2], [0, 1, 1]], [[4, 0, 0], [2, 0, 0], [0, 1, 1]]])
    result = result_from_counts(cm, counts, ["a", "b"])
    sky = ClassMap(values=[0, 1, 2], names=["sky", "tree", "house"])
    report = build_report(result, sky, {})
    assert report["headline"] == {
        "name": "miou",
        "label": "mIoU",
        "value": pytest.approx(1.4 / 3),
        "kind": "all",
        "reason": "class 0 is named 'sky': a real class, scored",
    }
    assert report["miou"] == pytest.approx(1.4 / 3) and report["dice_fg"] == pytest.approx(4 / 14)
    assert class_mean([1.0, 0.4, math.nan]) == pytest.approx(0.7)
    assert report["per_image"][0]["miou"] == pytest.approx((1 + 2 / 5 + 0) / 3)
    assert [r["image"] for r in worst_images(report, 1)] == ["a"]
    plain = build_report(result, ClassMap(values=[0, 1, 2]), {})
    assert plain["headline"]["name"] == "dice_fg" and plain["headline"]["value"] == pytest.approx(4 / 14)


def sky_dataset(root):
    data = make_dataset(root / "data", count=6, size=(40, 32), values=(0, 128, 255))
    val = make_dataset(root / "val", count=3, size=(40, 32), values=(0, 128, 255), seed=5)
    for folder in (data, val):
        write_classes(folder, SKY)
    return data, val


def scripted_rounds(monkeypatch, scores: list[tuple[float, float]]) -> list[float]:
    """Replace the loop's validation scores with hand-made (dice_fg, miou) pairs; returns what the schedule saw."""
    real, seen, rounds = loop.evaluate, [], iter(scores)

    def evaluate(*args, **kwargs):
        result = real(*args, **kwargs)
        dice_fg, miou = next(rounds)
        scripted = {"dice_fg": dice_fg, "iou_fg": dice_fg / 2, "miou": miou, "dice_mean": miou}
        return result | scripted | {"image_counts": torch.zeros(0, 3, 3)}  # no images to weigh the noise on

    observe = Schedule.observe
    monkeypatch.setattr(loop, "evaluate", evaluate)
    monkeypatch.setattr(Schedule, "observe", lambda self, score: (seen.append(score), observe(self, score))[1])
    return seen


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_sky_run_selects_best_pt_by_miou(tmp_path, monkeypatch, capsys):
    data, val = sky_dataset(tmp_path)
    seen = scripted_rounds(monkeypatch, [(0.5, 0.3), (0.9, 0.4), (0.6, 0.7), (0.7, 0.5)])
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--val-data", str(val), "--out", str(run), "-e", "4", *TINY]
    assert main(args) == 0
    rows = read_metrics(run)
    assert "miou" in rows[0] and "dice_mean" in rows[0] and "dice_fg" not in rows[0] and "dice_sky" in rows[0]
    assert [float(r["miou"]) for r in rows] == [0.3, 0.4, 0.7, 0.5]
    assert seen == [0.3, 0.4, 0.7, 0.5]  # the plateau schedule watches the mIoU too
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["score"]["name"] == "miou" and best["score"]["kind"] == "all" and best["score"]["miou"] == 0.7
    assert best["score"]["step"] == int(rows[2]["step"])  # the third round, not the foreground-best second
    assert "sky" in best["score"]["reason"]
    log = (run / "train.log").read_text()
    assert log.count("val miou") == 4 and "best validation miou 0.7000" in log and "best.pt by miou" in log

    monkeypatch.undo()
    out = tmp_path / "eval.json"
    assert main(["evaluate", "-m", str(run / "checkpoints" / "best.pt"), "--data", str(val), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["headline"]["name"] == "miou" and "'sky'" in report["headline"]["reason"]
    assert report["headline"]["value"] == report["miou"] and {"dice_fg", "iou_fg", "dice_mean"} <= set(report)
    assert report["miou"] == pytest.approx(sum(c["iou"] for c in report["classes"]) / 3)
    assert "headline: mIoU" in printed and "all classes, pooled" in printed and "foreground, pooled" in printed
    evaluate = ["evaluate", "-m", str(run / "checkpoints" / "best.pt"), "--data", str(val), "--json", str(out)]
    assert main([*evaluate, "--score", "foreground"]) == 0
    report = json.loads(out.read_text())
    assert report["headline"]["name"] == "dice_fg" and report["headline"]["reason"] == "--score foreground"


def test_score_foreground_on_a_sky_run_keeps_todays_columns_and_best(tmp_path, monkeypatch):
    data, val = sky_dataset(tmp_path)
    scripted_rounds(monkeypatch, [(0.5, 0.3), (0.9, 0.4), (0.6, 0.7)])
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--val-data", str(val), "--out", str(run), "-e", "3", *TINY]
    assert main([*args, "--score", "foreground"]) == 0
    rows = read_metrics(run)
    assert "dice_fg" in rows[0] and "iou_fg" in rows[0] and "miou" not in rows[0]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["score"]["dice_fg"] == 0.9 and best["score"]["step"] == int(rows[1]["step"])
    assert best["score"]["reason"] == "--score foreground"


def test_early_stopping_counts_rounds_without_a_better_miou(tmp_path, monkeypatch):
    data, val = sky_dataset(tmp_path)
    scripted_rounds(monkeypatch, [(0.1, 0.7), (0.2, 0.6), (0.3, 0.5), (0.4, 0.4), (0.5, 0.3)])
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--val-data", str(val), "--out", str(run), "-e", "5", *TINY]
    assert main([*args, "--patience", "2"]) == 0
    assert len(read_metrics(run)) == 3  # foreground Dice rose every round; the mIoU fell twice: stopped
    assert "early stopping" in (run / "train.log").read_text()

"""Training options whose values can be computed by hand: the schedule, EMA, class weights, --config, --images."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import make_dataset
from unetseg.cli import main
from unetseg.data.classmap import ClassMap
from unetseg.data.samples import Sample
from unetseg.training.build import class_weights
from unetseg.training.ema import EMA
from unetseg.training.optim import Schedule

FAST = ["--width", "4", "-b", "2", "--workers", "1", "--quiet", "--no-plan"]


def schedule(kind: str, total: int = 100, warmup: int = 10) -> Schedule:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(optimizer, kind, 0.01, total, warmup)


@pytest.mark.parametrize(
    "kind, step, expected",
    [
        ("cosine", 0, 0.01 * 0.1 * 0.5 * (1 + math.cos(0))),  # warm-up: 1/10 of the peak at the first step
        ("cosine", 4, 0.01 * 0.5 * 0.5 * (1 + math.cos(math.pi * 0.04))),
        ("cosine", 50, 0.01 * 0.5),  # half-way: half the peak
        ("cosine", 100, 0.0),  # the end: zero
        ("poly", 50, 0.01 * 0.5**0.9),
        ("poly", 100, 0.0),
        ("constant", 9, 0.01),
        ("constant", 99, 0.01),
    ],
)
def test_learning_rate_schedule_values(kind, step, expected):
    s = schedule(kind)
    assert s.set_step(step) == pytest.approx(expected, abs=1e-12)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_a_time_budget_advances_the_decay_when_the_clock_is_ahead():
    s = schedule("cosine")
    assert s.lr_at(20, time_progress=0.5) == pytest.approx(0.01 * 0.5)  # half the budget spent: half-way
    assert s.lr_at(60, time_progress=0.5) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.6)))


def test_plateau_divides_the_rate_by_ten_after_patience_rounds_without_improvement():
    s = schedule("plateau", warmup=0)
    s.observe(0.5)
    for _ in range(5):
        s.observe(0.4)
    assert s.lr_at(50) == pytest.approx(0.01)  # 5 rounds without improvement: patience not yet exceeded
    s.observe(0.4)
    assert s.lr_at(50) == pytest.approx(0.001)


def test_ema_is_the_exponential_average_of_the_weights_and_copies_integer_buffers():
    model = nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0]))
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([3.0, 4.0]))
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 4]))
    assert ema.shadow["num_batches_tracked"].item() == 7
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.tensor([0.9 * 1.2 + 0.1 * 3, 0.9 * 2.2 + 0.1 * 4]))
    with ema.applied(model):
        assert torch.allclose(model.weight, ema.shadow["weight"])
    assert torch.allclose(model.weight, torch.tensor([3.0, 4.0]))  # the trained weights come back


def test_auto_class_weights_weigh_up_only_the_classes_under_five_percent():
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :2] = 1  # class 1: 20% of the pixels
    mask[0, 2] = 2  # class 2: 1% of the pixels; class 0: the other 79%
    data = SimpleNamespace(class_map=ClassMap([0, 1, 2]), train=[Sample("a", np.zeros((10, 10, 1), np.uint8), mask)])
    assert class_weights("auto", data).numpy() == pytest.approx([1.0, 1.0, math.sqrt(0.05 / 0.01)], rel=1e-6)
    assert class_weights("none", data) is None
    assert class_weights("1,5,2", data).tolist() == [1.0, 5.0, 2.0]


def test_options_from_a_config_file_and_the_command_line_wins(tmp_path):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32))
    (tmp_path / "run.yaml").write_text("width: 8\nepochs: 2\nlearning-rate: 0.002\n")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--config", str(tmp_path / "run.yaml"), "-e", "1", "--out", str(out)]
    assert main([*args, *FAST[2:]]) == 0  # no --width on the command line: the file's 8 is used
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["width"], saved["epochs"], saved["learning_rate"]) == (8, 1, 0.002)


def test_images_and_masks_folders_instead_of_a_dataset_folder(tmp_path):
    data = make_dataset(tmp_path / "d", count=4, size=(32, 32), image_dir="pictures", mask_dir="labels_here")
    out = tmp_path / "run"
    args = ["train", "--images", str(data / "pictures"), "--masks", str(data / "labels_here"), "-e", "1"]
    assert main([*args, "--out", str(out), *FAST]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["images"] == str(data / "pictures") and saved["data"] is None
    assert (out / "checkpoints" / "best.pt").exists()

"""Loss and metric values on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.data.samples import Sample
from unetseg.evaluation.metrics import class_scores, confusion_matrix, foreground_mean, image_dice, per_image_counts
from unetseg.evaluation.scoring import evaluate
from unetseg.training.losses import build_loss, ce_dice_loss, soft_dice_loss


def test_confusion_matrix_and_dice_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [1, 1, 0, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 1]])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[2, 1], [1, 3]]  # the ignored pixel is not counted
    scores = class_scores(cm)
    assert math.isclose(scores["dice"][1], 2 * 3 / (2 * 3 + 1 + 1))
    assert math.isclose(scores["iou"][1], 3 / 5)
    assert math.isclose(scores["precision"][1], 3 / 4) and math.isclose(scores["recall"][1], 3 / 4)


def test_background_only_model_scores_zero_not_half():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    pred = torch.zeros_like(target)
    scores = class_scores(confusion_matrix(pred, target, 2))
    assert scores["dice"][1] == 0.0
    assert foreground_mean(scores["dice"]) == 0.0


def test_class_absent_in_truth_and_prediction_has_no_score():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = torch.zeros_like(target)
    counts = per_image_counts(pred, target, 3)
    dice = image_dice(counts)[0]
    assert dice[0] == 1.0 and math.isnan(dice[1]) and math.isnan(dice[2])
    assert math.isnan(foreground_mean(dice))
    target[0, 0, 0] = 2  # now class 2 is in the truth but never predicted: it scores 0
    assert image_dice(per_image_counts(pred, target, 3))[0][2] == 0.0


def test_soft_dice_is_zero_for_a_perfect_prediction_and_ignores_masked_pixels():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).unsqueeze(0)  # (1, 1, 2, 2)
    valid = torch.ones_like(target)
    assert soft_dice_loss(target, target, valid).item() == 0.0
    wrong = 1 - target
    valid[0, 0, 0, 0] = 0
    loss = soft_dice_loss(wrong, target, valid).item()
    assert math.isclose(loss, 1 - 1 / (3 + 1), rel_tol=1e-6)  # inter 0, denominator 3, smooth 1


def test_loss_ignores_255_and_handles_one_output_channel():
    target = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    logits2 = torch.tensor([[[[5.0, -5.0], [100.0, -5.0]], [[-5.0, 5.0], [-100.0, 5.0]]]])
    logits1 = logits2[:, 1:] - logits2[:, :1]
    low2, low1 = ce_dice_loss(logits2, target).item(), ce_dice_loss(logits1, target).item()
    assert low2 < 0.05 and low1 < 0.05  # the ignored pixel's huge wrong logit costs nothing
    assert ce_dice_loss(-logits2, target).item() > 1.0


def test_evaluation_does_not_depend_on_batch_size():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"s{i}",
            rng.integers(0, 255, (12, 10 + 2 * (i % 2), 1), dtype=np.uint8),
            rng.integers(0, 2, (12, 10 + 2 * (i % 2)), dtype=np.uint8),
        )
        for i in range(7)
    ]
    norm = {"scale": 255.0, "mean": [0.5], "std": [0.25]}
    one = evaluate(model, samples, norm, 2, torch.device("cpu"), batch_size=1)
    many = evaluate(model, samples, norm, 2, torch.device("cpu"), batch_size=5)
    assert one["confusion"] == many["confusion"] and len(one["images"]) == 7


@pytest.mark.parametrize("name", ["ce", "ce+dice", "focal", "focal+dice", "tversky", "ce+tversky"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_loss_is_low_when_right_high_when_wrong_and_ignores_255(name, channels):
    target = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    right = torch.full((1, max(channels, 2), 2, 2), -8.0).scatter(1, (target % 255).unsqueeze(1), 8.0)
    if channels == 1:
        right = right[:, 1:] - right[:, :1]
    right[..., 1, 0] = -100.0  # a wildly wrong logit on the ignored pixel
    loss = build_loss(name)
    assert loss(right, target).item() < 0.05
    assert loss(-right, target).item() > 0.3


def test_class_weights_scale_the_pixel_term():
    target = torch.tensor([[[0, 1]]])
    logits = torch.zeros(1, 2, 1, 2)
    plain = build_loss("ce")(logits, target)
    weighted = build_loss("ce", torch.tensor([1.0, 3.0]))(logits, target)
    assert torch.isclose(plain, weighted)  # weighted mean of equal per-pixel losses is unchanged
    logits[0, 1, 0, 1] = 2.0  # now class 1's pixel is easier: its weight lowers the mean
    assert build_loss("ce", torch.tensor([1.0, 3.0]))(logits, target) < build_loss("ce")(logits, target)

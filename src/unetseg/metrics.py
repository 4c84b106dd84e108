"""Segmentation metrics from integer counts: a confusion matrix accumulated on the device.

Scores are computed once from pooled counts, so they do not depend on batch size or order.
A class absent from both truth and prediction has no score (NaN), never 1.0.
"""

from __future__ import annotations

import math

import torch

from unetseg.data.classmap import IGNORE_INDEX


def predict_classes(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` -> class indices ``(B, H, W)``; one channel means sigmoid > threshold."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).long()
    return logits.argmax(dim=1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = truth, columns = prediction; ignored pixels are skipped."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_image_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, K, 3)`` int64: true positives, false positives, false negatives per image and class."""
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    p = (pred.unsqueeze(1) == classes) & valid
    t = (target.unsqueeze(1) == classes) & valid
    tp = (p & t).flatten(2).sum(-1)
    fp = (p & ~t).flatten(2).sum(-1)
    fn = (~p & t).flatten(2).sum(-1)
    return torch.stack([tp, fp, fn], dim=-1)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def class_scores(cm: torch.Tensor) -> dict[str, list[float]]:
    """Per-class Dice, IoU, precision and recall from a confusion matrix (NaN where undefined)."""
    cm = cm.double().cpu()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return {
        "dice": [_ratio(2 * a, 2 * a + b + c) for a, b, c in zip(tp.tolist(), fp.tolist(), fn.tolist())],
        "iou": [_ratio(a, a + b + c) for a, b, c in zip(tp.tolist(), fp.tolist(), fn.tolist())],
        "precision": [_ratio(a, a + b) for a, b in zip(tp.tolist(), fp.tolist())],
        "recall": [_ratio(a, a + c) for a, c in zip(tp.tolist(), fn.tolist())],
    }


def foreground_mean(values: list[float]) -> float:
    """Mean over foreground classes (all but class 0), skipping classes without a score."""
    fg = [v for v in values[1:] if not math.isnan(v)]
    return sum(fg) / len(fg) if fg else math.nan


def image_dice(counts: torch.Tensor) -> list[list[float]]:
    """Per-image, per-class Dice from ``(N, K, 3)`` counts; empty (absent in truth and prediction) is NaN."""
    result = []
    for image in counts.double().cpu().tolist():
        result.append([_ratio(2 * tp, 2 * tp + fp + fn) for tp, fp, fn in image])
    return result

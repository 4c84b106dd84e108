"""Segmentation metrics from integer counts: a confusion matrix and per-image counts accumulated on the device.

Scores are computed once from the counts, so they do not depend on batch size or order.

Empty-mask rule (one rule for every score, pooled or per image): a class absent from both the truth and the
prediction has no score (NaN, shown as "empty", never 1.0) and is left out of every mean; a class that is
predicted but absent from the truth (or present in the truth but never predicted) scores 0. Pixels marked
ignore (255) are not counted at all.

Two reductions over foreground classes (all but class 0):

- pooled (micro over images): per-class scores from the confusion matrix summed over all images. ``dice_fg`` is
  the mean of the pooled per-class Dice over foreground classes; it is what training logs as the validation score.
- per image (macro over images): each image's foreground mean of its per-class scores (empty classes left out;
  an image where every foreground class is empty has no score), then the mean over images.

``micro`` pools the counts over images and over foreground classes before dividing.

Over every class (class 0 too): ``miou`` is the mean of the pooled per-class IoU (the semantic-segmentation mIoU),
``dice_mean`` the same for Dice, and each image has its own all-class means. Which of ``dice_fg`` and ``miou`` ranks
models is decided in :mod:`unetseg.evaluation.choice`.
"""

from __future__ import annotations

import math

import torch

from unetseg.data.classmap import IGNORE_INDEX

SCORES = ("dice", "iou", "precision", "recall")


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


def scores_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dice, IoU, precision and recall (float64) from ``(..., 3)`` counts, with the empty-mask rule."""
    tp, fp, fn = counts.double().unbind(-1)
    empty = (tp + fp + fn) == 0

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        # A zero denominator with a non-empty class means tp == 0: the class was missed entirely, score 0.
        return (num / den.clamp(min=1)).masked_fill(empty, math.nan)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def confusion_counts(cm: torch.Tensor) -> torch.Tensor:
    """``(K, 3)`` true positives, false positives, false negatives per class from a confusion matrix."""
    cm = cm.long()
    tp = cm.diag()
    return torch.stack([tp, cm.sum(0) - tp, cm.sum(1) - tp], dim=-1)


def class_scores(cm: torch.Tensor) -> dict[str, list[float]]:
    """Pooled per-class Dice, IoU, precision and recall from a confusion matrix (NaN where empty)."""
    return {name: values.tolist() for name, values in scores_from_counts(confusion_counts(cm.cpu())).items()}


def foreground_mean(values: list[float]) -> float:
    """Mean over foreground classes (all but class 0), skipping classes without a score."""
    fg = [v for v in values[1:] if not math.isnan(v)]
    return sum(fg) / len(fg) if fg else math.nan


def class_mean(values: list[float]) -> float:
    """Mean over every class (class 0 too), skipping classes without a score: mIoU when given IoU."""
    scored = [v for v in values if not math.isnan(v)]
    return sum(scored) / len(scored) if scored else math.nan


def means(scores: dict) -> dict[str, float]:
    """Both means of per-class scores: foreground Dice and IoU (classes 1..K-1), and mIoU and Dice over every class."""
    return {
        "dice_fg": foreground_mean(scores["dice"]),
        "iou_fg": foreground_mean(scores["iou"]),
        "miou": class_mean(scores["iou"]),
        "dice_mean": class_mean(scores["dice"]),
    }


def image_dice(counts: torch.Tensor) -> list[list[float]]:
    """Per-image, per-class Dice from ``(N, K, 3)`` counts; empty (absent in truth and prediction) is NaN."""
    return scores_from_counts(counts.cpu())["dice"].tolist()


def nanmean(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean skipping NaN; NaN (not a warning) where every value is NaN."""
    return torch.nanmean(values, dim=dim) if values.numel() else values.sum(dim=dim) * math.nan


def summarize(cm: torch.Tensor, counts: torch.Tensor) -> dict:
    """Everything ``unetseg evaluate`` reports, from the pooled confusion matrix and ``(N, K, 3)`` image counts.

    Returns per-class pixel counts and image-averaged scores, per-image scores and pixel counts (``(N, K)``
    lists), each image's foreground and all-class means, and the ``macro`` (mean over images) and ``micro``
    (pooled) foreground scores.
    """
    cm, counts = cm.cpu().long(), counts.cpu().long()
    per_image = scores_from_counts(counts)  # name -> (N, K)
    image_fg = {name: nanmean(values[:, 1:], 1) for name, values in per_image.items()}  # name -> (N,)
    image_all = {name: nanmean(values, 1) for name, values in per_image.items()}  # name -> (N,)
    fg_counts = confusion_counts(cm)[1:].sum(0)
    micro = scores_from_counts(fg_counts)
    return {
        "pixels_true": cm.sum(1).tolist(),
        "pixels_pred": cm.sum(0).tolist(),
        "images_present": (counts[:, :, 0] + counts[:, :, 2] > 0).sum(0).tolist(),
        "image_pixels_true": (counts[:, :, 0] + counts[:, :, 2]).tolist(),
        "image_pixels_pred": (counts[:, :, 0] + counts[:, :, 1]).tolist(),
        "class_image_mean": {name: nanmean(values, 0).tolist() for name, values in per_image.items()},
        "image_scores": {name: values.tolist() for name, values in per_image.items()},
        "image_fg": {name: values.tolist() for name, values in image_fg.items()},
        "image_all": {name: values.tolist() for name, values in image_all.items()},
        "macro": {name: nanmean(values, 0).item() for name, values in image_fg.items()},
        "micro": {name: value.item() for name, value in micro.items()},
    }

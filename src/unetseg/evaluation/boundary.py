"""Boundary metrics: 95th-percentile Hausdorff distance (HD95) and average surface distance (ASD).

Distances are in pixels of the evaluated images (after ``--scale``), between the borders of the predicted and the
true region of a class. A border pixel is a region pixel with a 4-neighbour outside the region (the image edge
counts as outside), as in MONAI. For each border pixel of one region, the distance to the nearest border pixel of
the other comes from a Euclidean distance transform (scipy.ndimage). HD95 is the larger of the two directed 95th
percentiles; ASD is the mean over the border pixels of both regions (MONAI's symmetric definitions).

Empty masks: a class absent from both truth and prediction has no distance (NaN, "empty", left out of means, like
the overlap scores). A class present in only one of them gets the image diagonal for both metrics, the largest
distance possible in that image: a finite penalty (as in the BraTS challenge) instead of infinity.
Ignored pixels (255 in the truth) belong to neither region.
"""

from __future__ import annotations

import math

import numpy as np

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.errors import UserError

DISTANCES = ("hd95", "asd")
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def _ndimage():  # noqa: ANN202 - the scipy.ndimage module
    try:
        from scipy import ndimage
    except ImportError:
        raise UserError(
            "--boundary needs scipy for its distance transforms: pip install scipy (or unetseg[boundary])"
        ) from None
    return ndimage


def require_scipy() -> None:
    """Fail early, before any image is read, when scipy is missing."""
    _ndimage()


def _border(region: np.ndarray) -> np.ndarray:
    eroded = _ndimage().binary_erosion(region, structure=CROSS, border_value=0)
    return region & ~eroded


def surface_distances(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """``(hd95, asd)`` between two boolean ``(H, W)`` regions, with the empty-mask rule of this module."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return math.nan, math.nan
    if not (has_pred and has_truth):
        diagonal = math.hypot(*pred.shape)
        return diagonal, diagonal
    pred_border, truth_border = _border(pred), _border(truth)
    # Only border pixels matter, so the distance transform can run on their bounding box: exact and much cheaper.
    rows, cols = np.nonzero(pred_border | truth_border)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    pred_border, truth_border = pred_border[box], truth_border[box]
    edt = _ndimage().distance_transform_edt
    pred_to_truth = edt(~truth_border)[pred_border]
    truth_to_pred = edt(~pred_border)[truth_border]
    hd95 = max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95))
    asd = np.concatenate([pred_to_truth, truth_to_pred]).mean()
    return float(hd95), float(asd)


def boundary_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``(B, K, 2)`` HD95 and ASD per image and class from class indices ``(B, H, W)`` (class 0 too)."""
    out = np.full((pred.shape[0], num_classes, 2), math.nan)
    for b in range(pred.shape[0]):
        valid = target[b] != IGNORE_INDEX
        for k in range(num_classes):
            out[b, k] = surface_distances((pred[b] == k) & valid, (target[b] == k) & valid)
    return out

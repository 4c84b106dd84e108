"""Predicted masks for a few images, as gallery panels: the training gallery and the worst images of evaluate."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unetseg.core.device import autocast, normalize
from unetseg.core.meta import Norm
from unetseg.data.samples import resize_image
from unetseg.evaluation.metrics import predict_classes


@torch.inference_mode()
def predict_panels(
    model: nn.Module,
    samples: list,
    norm: Norm,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> list[dict]:
    """``{"name", "image", "truth", "pred"}`` for each sample, in order; ``pred`` ``(H, W)`` uint8 class indices.

    Images of one size go through the model as one batch (one forward, one device read per size).
    """
    was_training = model.training
    model.eval()
    by_shape: dict[tuple, list[int]] = {}
    for index, sample in enumerate(samples):
        by_shape.setdefault((np.shape(sample.image), np.shape(sample.mask)), []).append(index)
    preds: dict[int, np.ndarray] = {}
    for (_, mask_shape), indices in by_shape.items():
        images = torch.from_numpy(np.stack([np.asarray(samples[i].image) for i in indices]))
        x = normalize(images, norm, device, channels_last)
        with autocast(device, dtype):
            logits = model(x)
        if mask_shape and tuple(logits.shape[-2:]) != tuple(mask_shape):  # a downscaled input: back to the mask's size
            logits = F.interpolate(logits.float(), tuple(mask_shape), mode="bilinear", align_corners=False)
        classes = predict_classes(logits).cpu().numpy().astype(np.uint8)  # (B, H, W)
        preds |= dict(zip(indices, classes))
    model.train(was_training)
    return [
        {"name": s.name, "image": _at_size(s.image, np.shape(s.mask)), "truth": s.mask, "pred": preds[i]}
        for i, s in enumerate(samples)
    ]


def _at_size(image: np.ndarray, size: tuple) -> np.ndarray:
    """The image shown at its mask's size (bicubic), so the panels line up when the model ran downscaled."""
    return image if not size or np.shape(image)[:2] == tuple(size) else resize_image(np.asarray(image), tuple(size))

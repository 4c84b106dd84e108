"""Predicted masks for a few images, as gallery panels: the training gallery and the worst images of evaluate."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unetseg.core.device import autocast, normalize
from unetseg.evaluation.metrics import predict_classes


@torch.inference_mode()
def predict_panels(
    model: nn.Module,
    samples: list,
    norm: dict,
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
        by_shape.setdefault(np.shape(sample.image), []).append(index)
    preds: dict[int, np.ndarray] = {}
    for indices in by_shape.values():
        images = torch.from_numpy(np.stack([np.asarray(samples[i].image) for i in indices]))
        x = normalize(images, norm, device, channels_last)
        with autocast(device, dtype):
            classes = predict_classes(model(x)).cpu().numpy().astype(np.uint8)  # (B, H, W)
        preds |= dict(zip(indices, classes))
    model.train(was_training)
    return [{"name": s.name, "image": s.image, "truth": s.mask, "pred": preds[i]} for i, s in enumerate(samples)]

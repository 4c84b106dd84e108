"""Paired image/mask augmentation on the device, batched."""

from __future__ import annotations

import torch


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, seed: int, offset: int = 0, total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flips per sample, and 90-degree turns when patches are square.

    ``images`` ``(B, C, H, W)``, ``masks`` ``(B, H, W)``. Decisions are drawn from ``seed`` for a global batch of
    ``total`` samples of which these are ``offset`` on, so a resumed run, and N processes sharing a global batch,
    make exactly the decisions of one uninterrupted process.
    """
    batch = images.shape[0]
    total = total or batch
    gen = torch.Generator().manual_seed(seed)
    choices = (torch.rand(total, 3, generator=gen) < 0.5)[offset : offset + batch]  # (B, 3): hflip, vflip, rot90
    square = images.shape[-1] == images.shape[-2]
    channels_last = images.is_contiguous(memory_format=torch.channels_last)
    out_images, out_masks = [], []
    for i in range(batch):
        image, mask = images[i], masks[i]
        if choices[i, 0]:
            image, mask = image.flip(-1), mask.flip(-1)
        if choices[i, 1]:
            image, mask = image.flip(-2), mask.flip(-2)
        if square and choices[i, 2]:
            image, mask = image.rot90(1, (-2, -1)), mask.rot90(1, (-2, -1))
        out_images.append(image)
        out_masks.append(mask)
    images = torch.stack(out_images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.stack(out_masks)

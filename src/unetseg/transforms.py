"""Paired image/mask augmentation on the device, batched."""

from __future__ import annotations

import torch


def augment_batch(images: torch.Tensor, masks: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flips per sample, and 90-degree turns when patches are square.

    ``images`` ``(B, C, H, W)``, ``masks`` ``(B, H, W)``. Decisions come from ``seed``, so a resumed run repeats them.
    """
    gen = torch.Generator().manual_seed(seed)
    batch = images.shape[0]
    choices = torch.rand(batch, 3, generator=gen) < 0.5  # (B, 3): hflip, vflip, rot90
    square = images.shape[-1] == images.shape[-2]
    memory_format = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else None
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
    if memory_format is not None:
        images = images.contiguous(memory_format=memory_format)
    return images, torch.stack(out_masks)

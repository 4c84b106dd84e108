"""Sliding-window inference with Gaussian-weighted blending (as nnU-Net and MONAI do it).

An image larger than the tile is covered by overlapping windows; each window's logits are weighted by a Gaussian
that is 1 at the window centre and falls to almost 0 at its edges (sigma = tile / 8, nnU-Net's choice), so the
less reliable window borders count least. The blended result is the weighted sum divided by the summed weights.
Windows run on the device in batches; the blend accumulates on the device, or on the host ("stitching on the
host") when the whole image's logits would not fit in the device's free memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SIGMA_SCALE = 1 / 8  # nnU-Net: sigma = tile * 1/8
DEVICE_MEMORY_SHARE = 0.5  # leave half the free memory for the windows' own activations


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows of size ``tile`` covering ``length``, evenly spread, adjacent ones sharing at
    least ``overlap`` of a tile; the last window ends exactly at ``length``."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def gaussian_weights(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(height, width)`` float32 importance map: 1 at the centre, sigma = side / 8, never exactly 0."""
    axes = []
    for side in (height, width):
        coords = torch.arange(side, dtype=torch.float64, device=device) - (side - 1) / 2
        axes.append(torch.exp(-0.5 * (coords / max(side * SIGMA_SCALE, 1e-6)) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    return weights.clamp(min=1e-6).float()  # no zero weight: every pixel keeps a defined blend


def stitch_device(device: torch.device, nbytes: int) -> torch.device:
    """Where to accumulate ``nbytes`` of blended logits: the device if they fit in its free memory, else the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes > DEVICE_MEMORY_SHARE * free:
            return torch.device("cpu")
    return device


def sliding_window(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    out_device: torch.device | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Blended logits ``(B, K, H, W)`` float32 of ``forward`` run on ``tile`` x ``tile`` windows of ``x``.

    ``x`` is ``(B, C, H, W)`` on the device; windows of all images run together, ``batch_size`` at a time. The
    result lives on ``out_device`` (default: chosen by :func:`stitch_device` from ``num_classes``).
    """
    batch, _, height, width = x.shape
    th, tw = min(tile, height), min(tile, width)
    corners = [(top, left) for top in window_starts(height, th, overlap) for left in window_starts(width, tw, overlap)]
    if out_device is None:
        out_device = stitch_device(x.device, 4 * batch * (num_classes or 1) * height * width)
    weights = gaussian_weights(th, tw, x.device)
    total = torch.zeros(height, width, device=out_device)
    for top, left in corners:
        total[top : top + th, left : left + tw] += weights.to(out_device)
    crops = [(b, top, left) for b in range(batch) for top, left in corners]
    blended = None
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        windows = torch.stack([x[b, :, top : top + th, left : left + tw] for b, top, left in chunk])
        if x.is_contiguous(memory_format=torch.channels_last):
            windows = windows.contiguous(memory_format=torch.channels_last)
        logits = (forward(windows).float() * weights).to(out_device)  # (n, K, th, tw); a sync when on the host
        if blended is None:
            blended = torch.zeros(batch, logits.shape[1], height, width, device=out_device)
        for (b, top, left), window in zip(chunk, logits):
            blended[b, :, top : top + th, left : left + tw] += window
    return blended / total

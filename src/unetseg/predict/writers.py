"""A batch's results on their way from the device to the files: compact copies to the host, probability maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetseg.predict.outputs import Ledger, save_array


@dataclass
class HostBatch:
    """A batch's results copied to the host, ready once ``done`` has completed (None: already ready)."""

    index: torch.Tensor  # (B, H, W) uint8 class indices
    counts: torch.Tensor  # (B, K) pixels per class
    probs: torch.Tensor | None  # (B, H, W) uint16 foreground probability, or (B, K, H, W) float16
    done: torch.cuda.Event | None

    def wait(self) -> None:
        if self.done is not None:
            self.done.synchronize()


def to_host(index: torch.Tensor, probs: torch.Tensor, num_classes: int, with_probs: bool) -> HostBatch:
    """Start the device-to-host copies of a batch's results without waiting for them.

    Class counts and the compact probability encodings are computed on the device, so only small tensors travel.
    """
    # One comparison per class rather than bincount, which waits for the GPU to learn its output size.
    counts = torch.stack([(index == k).sum((1, 2)) for k in range(num_classes)], dim=1)  # (B, K)
    packed = None
    if with_probs and num_classes == 2:
        packed = (probs[:, -1] * 65535).round().to(torch.int32)  # foreground probability as 16-bit integers
    elif with_probs:
        packed = probs.half()
    copy = {"non_blocking": index.device.type == "cuda"}  # into page-locked memory, overlapping the next batch
    host = [t.to("cpu", **copy) if t is not None else None for t in (index, counts, packed)]
    done = None
    if index.device.type == "cuda":
        done = torch.cuda.Event()
        done.record()
    return HostBatch(host[0], host[1], host[2], done)


def write_probs(path: Path, probs: np.ndarray, ledger: Ledger) -> Path:
    """16-bit PNG of the foreground probability (binary, ``(H, W)``), or float16 ``(K, H, W)`` .npy."""
    save_array(path, probs.astype(np.uint16) if probs.ndim == 2 else probs, ledger)
    return path

"""What ``unetseg predict`` writes per image: the mask, an overlay, probabilities; and ``predictions.csv``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unetseg.data.classmap import ClassMap
from unetseg.data.io import write_mask


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


def overlay(image: np.ndarray, index: np.ndarray, class_map: ClassMap, alpha: float = 0.5) -> np.ndarray:
    """The image in grey/RGB with each foreground class blended in its colour."""
    base = image.astype(np.float32)
    if image.dtype != np.uint8:
        base = base / max(float(base.max()), 1.0) * 255
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base[:, :, :3]
    colors = np.array(class_map.colors, dtype=np.float32)[index]
    blend = np.where((index > 0)[:, :, None], (1 - alpha) * base + alpha * colors, base)
    return blend.clip(0, 255).astype(np.uint8)


def sidecar(target: Path, kind: str, suffix: str) -> Path:
    """``<OUT>/<stem>_<kind><suffix>`` beside a mask."""
    return target.with_name(f"{target.stem}_{kind}{suffix}")


def write_probs(target: Path, probs: np.ndarray) -> Path:
    """16-bit PNG of the foreground probability (binary), or float16 ``(K, H, W)`` .npy."""
    if probs.ndim == 2:
        path = sidecar(target, "probs", ".png")
        Image.fromarray(probs.astype(np.uint16)).save(path)
    else:
        path = sidecar(target, "probs", ".npy")
        np.save(path, probs)
    return path


def write_mask_file(target: Path, mask: np.ndarray) -> None:
    """A mask; PNGs with fast compression (masks compress well even at level 1, which is several times faster)."""
    if target.suffix.lower() == ".png" and (mask.dtype == np.uint8 or mask.max(initial=0) <= 255):
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8)).save(target, compress_level=1)
    else:
        write_mask(target, mask)


def write_table(path: Path, rows: list[dict]) -> None:
    """``predictions.csv``: one row per image, in input order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

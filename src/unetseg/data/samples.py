"""Decoded samples at training resolution, normalisation statistics, the split, and evaluation batches.

Images are decoded once into uint8/uint16 arrays (kept at their bit depth); masks into uint8 class indices.
Batches leave here as uint8/uint16 tensors; conversion to float and normalisation happen on the device.
torch is imported only where batches are built, so the ONNX runtime path can use the decoding and resize helpers
without PyTorch installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from unetseg.core.meta import Norm
from unetseg.data.classmap import ClassMap
from unetseg.data.folder import Pair
from unetseg.data.io import read_image, read_mask
from unetseg.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class Sample:
    """One decoded pair at training resolution."""

    name: str
    image: np.ndarray  # (H, W, C) uint8 or uint16; a read-only memory-mapped view when cached
    mask: np.ndarray | None  # (H, W) uint8 class indices, 255 = ignore
    stats: dict | None = None  # image_stats(image), kept by the decoded cache so no start re-reads every pixel
    class_counts: np.ndarray | None = None  # pixels per class index (0..255), kept by the decoded cache


def match_channels(image: np.ndarray, channels: int, path: object = "image") -> np.ndarray:
    """Bring ``(H, W, C)`` to ``channels``: drop a constant alpha, grey -> RGB by repeating, RGB -> grey by luma."""
    have = image.shape[2]
    if have in (2, 4) and have != channels and image[:, :, -1].min() == image[:, :, -1].max():
        image, have = image[:, :, :-1], have - 1
    if have == channels:
        return image
    if have == 1 and channels in (3, 4):
        out = np.repeat(image, 3, axis=2)
        if channels == 4:
            out = np.concatenate([out, np.full_like(image, np.iinfo(image.dtype).max)], axis=2)
        return out
    if have >= 3 and channels == 1:
        luma = image[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.round(luma).astype(image.dtype)[:, :, None]
    if have == 4 and channels == 3:
        return image[:, :, :3]
    if have == 3 and channels == 4:
        return np.concatenate([image, np.full_like(image[:, :, :1], np.iinfo(image.dtype).max)], axis=2)
    raise UserError(
        f"{path}: image has {have} channels but the model takes {channels}; "
        f"convert the image, or train with --channels {have}"
    )


def scaled_size(height: int, width: int, scale: float, path: object = "image") -> tuple[int, int]:
    """Pytorch-UNet's rounding: ``int(scale * side)``."""
    new_h, new_w = int(scale * height), int(scale * width)
    if new_h < 1 or new_w < 1:
        raise UserError(f"{path}: --scale {scale} makes this {width}x{height} image empty; use a larger --scale")
    return new_h, new_w


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of ``(H, W, C)`` to ``size`` (H, W), with Pillow, as Pytorch-UNet does."""
    if image.shape[:2] == size:
        return image
    height, width = size
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        mode = "L" if image.shape[2] == 1 else "RGB"
        pil = Image.fromarray(image[:, :, 0] if mode == "L" else image, mode)
        out = np.asarray(pil.resize((width, height), resample=Image.BICUBIC))
        return out[:, :, None] if out.ndim == 2 else out
    top = np.iinfo(image.dtype).max
    planes = []
    for c in range(image.shape[2]):
        plane = Image.fromarray(image[:, :, c].astype(np.float32), "F").resize((width, height), Image.BICUBIC)
        planes.append(np.clip(np.round(np.asarray(plane)), 0, top).astype(image.dtype))
    return np.stack(planes, axis=2)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of class indices ``(H, W)``."""
    if mask.shape == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), resample=Image.NEAREST))


def load_sample(
    pair: Pair, class_map: ClassMap | None, channels: int, scale: float, resize_to_mask: bool = False
) -> Sample:
    """Decode one pair, match channels, resize by ``scale``, and encode the mask as class indices.

    With ``resize_to_mask`` an image of another size than its mask is resized to the mask's (scaled) size,
    in the same single bicubic resize.
    """
    image = match_channels(read_image(pair.image), channels, pair.image)
    raw_mask = read_mask(pair.mask) if pair.mask is not None and class_map is not None else None
    base = raw_mask.shape[:2] if resize_to_mask and raw_mask is not None else image.shape[:2]
    size = scaled_size(base[0], base[1], scale, pair.image)
    mask = None if raw_mask is None else resize_mask(class_map.encode(raw_mask, pair.mask), size)
    return Sample(pair.image.stem, resize_image(image, size), mask)


def load_samples(
    pairs: list[Pair],
    class_map: ClassMap | None,
    channels: int,
    scale: float,
    workers: int = 4,
    resize_to_mask: bool = False,
) -> list[Sample]:
    """Decode all pairs once, in threads."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: load_sample(p, class_map, channels, scale, resize_to_mask), pairs))


def image_stats(image: np.ndarray) -> dict:
    """Per-channel sums in the image's own units over every 4th pixel (plenty for a mean), and its largest value."""
    pixels = image[::2, ::2].reshape(-1, image.shape[2]).astype(np.float64)
    return {
        "sum": pixels.sum(0).tolist(),
        "sumsq": (pixels**2).sum(0).tolist(),
        "count": len(pixels),
        "top": int(image.max(initial=0)),
        "eight_bit": image.dtype == np.uint8,
    }


def compute_norm(samples: list[Sample]) -> Norm:
    """Per-channel mean/std of the training images after dividing by their value range.

    The range is 255 for 8-bit data and the largest value seen for 16-bit data (never 255 for 16 bit).
    Statistics the decoded cache kept (``Sample.stats``) are used instead of reading the pixels again.
    """
    stats = [s.stats if s.stats is not None else image_stats(s.image) for s in samples]
    top = 255.0 if all(st["eight_bit"] for st in stats) else float(max(st["top"] for st in stats))
    top = max(top, 1.0)
    count = sum(st["count"] for st in stats)
    mean = np.sum([st["sum"] for st in stats], axis=0) / top / count
    mean_sq = np.sum([st["sumsq"] for st in stats], axis=0) / top**2 / count
    std = np.sqrt(np.maximum(mean_sq - mean**2, 0)) + 1e-6
    return {"scale": top, "mean": mean.round(6).tolist(), "std": np.maximum(std, 1e-3).round(6).tolist()}


def fold_indices(count: int, folds: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic k-fold split: fold ``fold`` of ``folds`` validates, the rest trains; every image once."""
    order = np.random.default_rng(seed).permutation(count)
    val = sorted(order[fold::folds].tolist())
    return sorted(set(range(count)) - set(val)), val


def split_indices(count: int, val_percent: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split: ``round(count * val_percent / 100)`` images, at least one."""
    if val_percent <= 0 or count < 2:
        return list(range(count)), []
    n_val = min(count - 1, max(1, round(count * val_percent / 100)))
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def eval_batches(samples: list[Sample], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Every sample exactly once, whole (no crop, no dropped batch); a batch holds images of one size."""
    import torch

    by_size: dict[tuple, list[Sample]] = {}
    for sample in samples:  # a mask may be larger than its image: scored at the image's own size (evaluate)
        by_size.setdefault((sample.image.shape[:2], sample.mask.shape), []).append(sample)
    for group in by_size.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            yield (
                torch.from_numpy(np.stack([s.image for s in chunk])),
                torch.from_numpy(np.stack([s.mask for s in chunk])),
                [s.name for s in chunk],
            )

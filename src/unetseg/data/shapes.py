"""How large and how thin the labelled structures are, and whether the images have an up and a down.

The plan reads these to choose the training resolution (large objects are learned as well from a downscaled whole
image; thin ones need every pixel) and the flips (a street scene or a landscape is never upside down).
Measured on at most :data:`MAX_IMAGES` training images, with NumPy only: a few hundred milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unetseg.data.classmap import IGNORE_INDEX
from unetseg.data.samples import Sample

MAX_IMAGES = 48  # enough images for stable medians; the scan stays well under a second
MAX_DEPTH = 64  # erosions measured; structures thicker than 2 x 64 px count as 128 px thick


@dataclass
class ClassShape:
    """One class's pixels: share of all labelled pixels, thickness and extent."""

    share: float
    thickness: float  # px: 4 x its pixels' median distance to the class border (a line's width, 0.6 x a disc's)
    extent: float  # median over images of the class's bounding-box side, as a share of the image side
    vertical: float  # share of its pixels in the top half minus the share in the bottom half, in [-1, 1]


@dataclass
class Shapes:
    classes: list[ClassShape]
    short_side: int  # median short side of the images, px
    pixels: int  # median pixels per image
    intensity_tilt: float  # |mean of the top third - mean of the bottom third| / std of the images


def _depth(mask: np.ndarray) -> np.ndarray:
    """Per pixel: how many 4-neighbour erosions of its own class region it survives (0 on the border)."""
    same = np.zeros(mask.shape, bool)
    same[1:-1, 1:-1] = (
        (mask[1:-1, 1:-1] == mask[:-2, 1:-1])
        & (mask[1:-1, 1:-1] == mask[2:, 1:-1])
        & (mask[1:-1, 1:-1] == mask[1:-1, :-2])
        & (mask[1:-1, 1:-1] == mask[1:-1, 2:])
    )
    depth = np.zeros(mask.shape, np.uint8)
    alive = same
    for _ in range(MAX_DEPTH):
        if not alive.any():
            break
        depth += alive
        shrunk = np.zeros_like(alive)
        shrunk[1:-1, 1:-1] = alive[1:-1, 1:-1] & alive[:-2, 1:-1] & alive[2:, 1:-1] & alive[1:-1, :-2] & alive[1:-1, 2:]
        alive = shrunk
    return depth


def _picked(samples: list[Sample]) -> list[Sample]:
    step = max(1, len(samples) // MAX_IMAGES)
    return [s for s in samples[::step][:MAX_IMAGES] if s.mask is not None]


def measure(samples: list[Sample], num_classes: int) -> Shapes:
    """Thickness, extent, share and vertical balance of every class, from a spread of ``samples``."""
    picked = _picked(samples)
    depths: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    extents: list[list[float]] = [[] for _ in range(num_classes)]
    top = np.zeros(num_classes)
    bottom = np.zeros(num_classes)
    tilts = []
    for sample in picked:
        mask = np.asarray(sample.mask)
        h, w = mask.shape
        depth = _depth(mask)
        for k in np.unique(mask):
            if k == IGNORE_INDEX or k >= num_classes:
                continue
            where = mask == k
            depths[k].append(depth[where])
            rows, cols = np.nonzero(where.any(1))[0], np.nonzero(where.any(0))[0]
            extents[k].append(max((rows[-1] - rows[0] + 1) / h, (cols[-1] - cols[0] + 1) / w))
            top[k] += where[: h // 2].sum()
            bottom[k] += where[h - h // 2 :].sum()
        image = np.asarray(sample.image, np.float64).mean(axis=2)
        spread = image.std()
        if spread > 0:
            third = max(1, h // 3)
            tilts.append(abs(image[:third].mean() - image[-third:].mean()) / spread)
    counts = np.array([sum(len(d) for d in ds) for ds in depths], np.float64)
    classes = []
    for k in range(num_classes):
        pixels = np.concatenate(depths[k]) if depths[k] else np.zeros(0, np.uint8)
        thickness = 4 * float(np.median(pixels)) + 1 if len(pixels) else 0.0
        balance = (top[k] - bottom[k]) / max(top[k] + bottom[k], 1)
        extent = float(np.median(extents[k])) if extents[k] else 0.0
        classes.append(ClassShape(float(counts[k] / max(counts.sum(), 1)), thickness, extent, float(balance)))
    sizes = np.array([s.image.shape[:2] for s in samples])
    return Shapes(
        classes,
        int(np.median(sizes.min(axis=1))),
        int(np.median(sizes[:, 0] * sizes[:, 1])),
        float(np.median(tilts)) if tilts else 0.0,
    )

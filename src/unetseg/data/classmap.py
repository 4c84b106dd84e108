"""The class map: which mask value (or colour) is which class, discovered once from the masks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unetseg.data.folder import ScanResult, color_keys
from unetseg.errors import DataError

IGNORE_INDEX = 255  # class index that losses and metrics skip (tensor contract)
# A value in lossy (JPEG) masks is a real class only if it covers this share of all mask pixels;
# compression noise spreads over many values, each far rarer.
LOSSY_PEAK_SHARE = 0.002
LOSSY_PEAK_RADIUS = 16  # compression noise stays within this many grey levels of the true value

PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
]


@dataclass
class ClassMap:
    """Mask values in class order. ``values[i]`` is the value (int) or colour ([r, g, b]) of class ``i``."""

    values: list
    names: list[str] = field(default_factory=list)
    colors: list[list[int]] = field(default_factory=list)
    snap: bool = False  # masks are lossy: map each pixel to the nearest known value

    def __post_init__(self) -> None:
        if not self.names:
            self.names = ["background" if i == 0 else f"class{i}" for i in range(len(self.values))]
        if not self.colors:
            if self.is_color:
                self.colors = [list(v) for v in self.values]
            else:
                self.colors = [list(PALETTE[i % len(PALETTE)]) for i in range(len(self.values))]

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def is_color(self) -> bool:
        return bool(self.values) and isinstance(self.values[0], (list, tuple))

    def keys(self) -> np.ndarray:
        if self.is_color:
            return np.array([(r << 16) | (g << 8) | b for r, g, b in self.values], dtype=np.int64)
        return np.array(self.values, dtype=np.int64)

    def encode(self, mask: np.ndarray, path: object = "mask") -> np.ndarray:
        """Mask values -> uint8 class indices ``(H, W)``. Unknown values are an error naming the file."""
        raw = color_keys(mask) if mask.ndim == 3 else mask.astype(np.int64)
        keys = self.keys()
        order = np.argsort(keys)
        sorted_keys = keys[order]
        pos = np.clip(np.searchsorted(sorted_keys, raw), 0, len(keys) - 1)
        if self.snap and not self.is_color:
            left = np.clip(pos - 1, 0, len(keys) - 1)
            pos = np.where(np.abs(sorted_keys[left] - raw) < np.abs(sorted_keys[pos] - raw), left, pos)
        elif not np.array_equal(sorted_keys[pos], raw):
            unknown = sorted(set(np.unique(raw).tolist()) - set(keys.tolist()))
            raise DataError(
                f"{path}: mask values {_fmt(unknown)} are not in the class map {_fmt(self.values)}; "
                "fix the mask, or train with a class count that includes them"
            )
        return order[pos].astype(np.uint8)

    def decode(self, index: np.ndarray) -> np.ndarray:
        """Class indices ``(H, W)`` -> mask in the training masks' own values (or colours)."""
        table = np.array(self.values, dtype=np.uint8 if self.is_color or max(self.values) <= 255 else np.uint16)
        return table[index]

    def to_dict(self) -> dict:
        return {
            "values": [list(v) if isinstance(v, (list, tuple)) else int(v) for v in self.values],
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "snap": self.snap,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClassMap:
        return cls(
            values=list(data["values"]),
            names=list(data.get("names", [])),
            colors=[list(c) for c in data.get("colors", [])],
            snap=bool(data.get("snap", False)),
        )


def _fmt(values: list) -> str:
    shown = [tuple(v) if isinstance(v, (list, tuple)) else v for v in values[:12]]
    return "{" + ", ".join(map(str, shown)) + (", ...}" if len(values) > 12 else "}")


def _key_to_value(key: int, is_color: bool):
    return [key >> 16 & 255, key >> 8 & 255, key & 255] if is_color else int(key)


def discover(scan: ScanResult, classes: int | None, lossy: bool = False) -> tuple[ClassMap, list[str]]:
    """Build the class map from scanned mask values; ``classes`` is ``-c/--classes`` (None: from the data).

    Returns the map and notes for the user. ``classes == 1`` means one sigmoid output for two values.
    """
    is_color = bool(scan.mask_is_color) and scan.mask_is_color[0]
    found = np.unique(np.concatenate(scan.mask_values)) if scan.mask_values else np.array([], dtype=np.int64)
    notes: list[str] = []
    snap = False
    if lossy and not is_color and len(found) > max(2, classes or 0):
        found, moved_note = _lossy_peaks(scan, classes)
        notes.append(moved_note)
        snap = True
    wanted = 2 if classes == 1 else classes
    if wanted is None:
        if len(found) < 2:
            raise DataError(
                f"every mask holds only the value {_fmt(found.tolist())}: nothing to segment; "
                "check that the masks folder holds the right files"
            )
        values = found.tolist()
    elif len(found) == wanted:
        values = found.tolist()
    elif not is_color and len(found) < wanted and found.min() >= 0 and found.max() < wanted:
        values = list(range(wanted))  # class-index masks in which some classes happen to be absent
    else:
        raise DataError(_mismatch(scan, found, wanted, classes))
    return ClassMap(values=[_key_to_value(v, is_color) for v in values], snap=snap), notes


def _mismatch(scan: ScanResult, found: np.ndarray, wanted: int, classes: int) -> str:
    if len(found) > wanted and not (scan.mask_is_color and scan.mask_is_color[0]):
        allowed = set(found.tolist()[:wanted]) if found.max() >= wanted else set(range(wanted))
        culprits = [
            f"{p.mask.name} has {_fmt(sorted(set(v.tolist()) - allowed))}"
            for p, v in zip(scan.pairs, scan.mask_values)
            if set(v.tolist()) - allowed
        ]
        where = "; ".join(culprits[:5]) + (f"; and {len(culprits) - 5} more masks" if len(culprits) > 5 else "")
        return (
            f"masks hold {len(found)} values {_fmt(found.tolist())} but -c/--classes {classes} expects "
            f"{wanted} ({where}); pass -c {len(found)} or fix those masks"
        )
    return (
        f"masks hold {len(found)} values {_fmt(found.tolist())} but -c/--classes {classes} expects {wanted}; "
        f"pass -c {len(found)}, or leave -c out to take the classes from the masks"
    )


def _lossy_peaks(scan: ScanResult, classes: int | None) -> tuple[np.ndarray, str]:
    """Real class values of JPEG masks: the most common values, found from a histogram of all masks."""
    from unetseg.data.io import read_mask

    counts = np.zeros(65536, dtype=np.int64)
    for pair in scan.pairs:
        counts += np.bincount(read_mask(pair.mask).ravel().astype(np.int64), minlength=65536)[:65536]
    total = counts.sum()
    wanted = 2 if classes == 1 else classes
    if wanted:
        peaks = np.sort(np.argsort(counts)[::-1][:wanted])
    else:
        # A class value is a local maximum of the histogram (noise sits on its flanks) with a real share of pixels.
        window = np.lib.stride_tricks.sliding_window_view(np.pad(counts, LOSSY_PEAK_RADIUS), 2 * LOSSY_PEAK_RADIUS + 1)
        peaks = np.flatnonzero((counts >= LOSSY_PEAK_SHARE * total) & (counts == window.max(axis=1)) & (counts > 0))
    values = np.arange(65536)
    nearest = peaks[np.abs(values[:, None] - peaks[None, :]).argmin(axis=1)] if len(peaks) else values
    moved = int(counts[(nearest != values) & (counts > 0)].sum())
    note = (
        f"masks are JPEG: compression noise snapped to the {len(peaks)} class values {_fmt(peaks.tolist())} "
        f"({moved} of {total} pixels, {100 * moved / max(total, 1):.2f}%, moved); save masks as PNG to avoid this"
    )
    return peaks, note

"""The class map: which mask value (or colour) is which class, discovered once from the masks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from unetseg.data.folder import color_keys
from unetseg.data.index import ScanResult
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
    """Mask values in class order. ``values[i]`` is the value (int) or colour ([r, g, b]) of class ``i``.

    ``ignore`` is a mask value (or colour) that losses and metrics skip: it becomes index 255.
    """

    values: list
    names: list[str] = field(default_factory=list)
    colors: list[list[int]] = field(default_factory=list)
    snap: bool = False  # masks are lossy: map each pixel to the nearest known value
    ignore: int | list[int] | None = None
    palette: list[int] | None = None  # palette masks (mode "P"): their flat RGB palette, so predict writes the same
    score: str | None = None  # "foreground" or "all" from the classes file; None: chosen from the classes

    def __post_init__(self) -> None:
        if len(self.values) > IGNORE_INDEX:
            raise DataError(f"{len(self.values)} classes: at most {IGNORE_INDEX} are supported (255 means ignore)")
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
        """Each class's value as an int key (``r << 16 | g << 8 | b`` for colours)."""
        return np.array([_key(v) for v in self.values], dtype=np.int64)

    def ignore_key(self) -> int | None:
        return None if self.ignore is None else _key(self.ignore)

    def classify(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index (uint8, 255 = ignore) of each distinct mask key in ``raw``, and which keys are unknown."""
        keys = self.keys()
        match = raw[:, None] == keys[None, :]  # (N, K)
        table = np.where(match.any(1), match.argmax(1), IGNORE_INDEX).astype(np.uint8)
        unknown = ~match.any(1)
        ignore = self.ignore_key()
        if ignore is not None:
            unknown &= raw != ignore
        if self.snap and unknown.any():
            table[unknown] = _nearest(raw[unknown], keys, self.is_color)
            unknown[:] = False
        return table, unknown

    def encode(self, mask: np.ndarray, path: object = "mask") -> np.ndarray:
        """Mask values -> uint8 class indices ``(H, W)``. Unknown values are an error naming the file."""
        raw = color_keys(mask) if mask.ndim == 3 else mask
        if raw.dtype in (np.uint8, np.uint16):  # a lookup table over the whole dtype: no sort
            domain = np.arange(256 if raw.dtype == np.uint8 else 65536, dtype=np.int64)
            table, unknown = self.classify(domain)
            out = table[raw]
            bad = np.unique(raw[unknown[raw]]) if unknown.any() else []
        else:
            present, inverse = np.unique(raw, return_inverse=True)
            table, unknown = self.classify(present.astype(np.int64))
            out = table[inverse].reshape(raw.shape)
            bad = present[unknown]
        if len(bad):
            raise DataError(self.unknown_message(path, [int(v) for v in bad]))
        return out

    def unknown_message(self, path: object, keys: list[int]) -> str:
        shown = [_key_to_value(k, self.is_color) for k in keys]
        return (
            f"{path}: mask values {_fmt(shown)} are not in the class map {_fmt(self.values)}; "
            "fix the mask, or name these values in the classes file (or pass a class count that includes them)"
        )

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
            "ignore": list(self.ignore) if isinstance(self.ignore, (list, tuple)) else self.ignore,
            "palette": None if self.palette is None else [int(v) for v in self.palette],
        } | ({"score": self.score} if self.score else {})

    @classmethod
    def from_dict(cls, data: dict) -> ClassMap:
        return cls(
            values=list(data["values"]),
            names=list(data.get("names", [])),
            colors=[list(c) for c in data.get("colors", [])],
            snap=bool(data.get("snap", False)),
            ignore=data.get("ignore"),
            palette=data.get("palette"),  # absent in checkpoints written before palettes were recorded
            score=data.get("score"),
        )


def mask_palette(scan: ScanResult) -> list[int] | None:
    """The flat RGB palette of palette masks (every mask mode "P"), read from the first mask; None otherwise."""
    if not scan.masks or not all(m.kind.endswith(" P") for m in scan.masks):
        return None
    with Image.open(scan.pairs[0].mask) as image:
        palette = image.getpalette()
    return None if palette is None else [int(v) for v in palette]


def _key(value: int | list[int]) -> int:
    if isinstance(value, (list, tuple)):
        r, g, b = value
        return (int(r) << 16) | (int(g) << 8) | int(b)
    return int(value)


def _nearest(raw: np.ndarray, keys: np.ndarray, is_color: bool) -> np.ndarray:
    """Index of the nearest class key: by grey level, or by RGB distance for colours."""
    if not is_color:
        return np.abs(raw[:, None] - keys[None, :]).argmin(1)
    rgb = np.stack([raw >> 16 & 255, raw >> 8 & 255, raw & 255], 1)[:, None, :]
    ref = np.stack([keys >> 16 & 255, keys >> 8 & 255, keys & 255], 1)[None, :, :]
    return ((rgb - ref) ** 2).sum(2).argmin(1)


def _fmt(values: list) -> str:
    shown = [tuple(v) if isinstance(v, (list, tuple)) else v for v in values[:12]]
    return "{" + ", ".join(map(str, shown)) + (", ...}" if len(values) > 12 else "}")


def _key_to_value(key: int, is_color: bool):
    return [key >> 16 & 255, key >> 8 & 255, key & 255] if is_color else int(key)


def discover(scan: ScanResult, classes: int | None, lossy: bool = False) -> tuple[ClassMap, list[str]]:
    """Build the class map from scanned mask values; ``classes`` is ``-c/--classes`` (None: from the data).

    Returns the map and notes for the user. ``classes == 1`` means one sigmoid output for two values.
    ``lossy`` (JPEG masks) snaps compression noise to the real class values; PNG masks whose values look like
    such noise are snapped only when ``classes`` says how many values are real.
    """
    is_color = bool(scan.mask_is_color) and scan.mask_is_color[0]
    found = np.unique(np.concatenate(scan.mask_values)) if scan.mask_values else np.array([], dtype=np.int64)
    notes: list[str] = []
    snap = False
    wanted = 2 if classes == 1 else classes
    if not is_color and len(found) > max(2, wanted or 0) and found.max() < 65536:
        hist = value_histogram(scan)
        noisy = looks_lossy(hist)
        if lossy or (noisy and wanted):
            found, moved = lossy_peaks(hist, wanted)
            what = "masks are JPEG" if lossy else "mask values look like JPEG compression noise"
            notes.append(
                f"{what}: snapped to the {len(found)} class values {_fmt(found.tolist())} "
                f"({moved} of {hist.sum()} pixels, {100 * moved / max(hist.sum(), 1):.2f}%, moved); "
                "save masks as PNG without compression to avoid this"
            )
            snap = True
        elif noisy:
            peaks = lossy_peaks(hist, None)[0]
            raise DataError(
                f"masks hold {len(found)} values {_fmt(found.tolist())} clustered around {_fmt(peaks.tolist())}, "
                "like JPEG compression noise (masks once saved as JPEG); re-export the masks without compression, "
                f"or pass -c {len(peaks)} to snap every pixel to the nearest of these values "
                f"(if the {len(found)} values are real classes, pass -c {len(found)})"
            )
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


def value_histogram(scan: ScanResult) -> np.ndarray:
    """Pixels per grey value (0..65535) over all masks, from the scan (no file is read again)."""
    hist = np.zeros(65536, dtype=np.int64)
    for values, counts in zip(scan.mask_values, scan.mask_counts):
        keep = values < 65536
        np.add.at(hist, values[keep], counts[keep])
    return hist


def _peaks(hist: np.ndarray) -> np.ndarray:
    # A class value is a local maximum of the histogram (noise sits on its flanks) with a real share of pixels.
    window = np.lib.stride_tricks.sliding_window_view(np.pad(hist, LOSSY_PEAK_RADIUS), 2 * LOSSY_PEAK_RADIUS + 1)
    return np.flatnonzero((hist >= LOSSY_PEAK_SHARE * hist.sum()) & (hist == window.max(axis=1)) & (hist > 0))


def looks_lossy(hist: np.ndarray) -> bool:
    """Many values, nearly all within the noise radius of a few well-separated peaks: JPEG noise, not classes.

    Class-index masks (0, 1, 2, ...) rarely qualify: their busy values are not that far apart. When they do, the
    message that follows says to pass their class count, which turns snapping off.
    """
    peaks = _peaks(hist)
    if len(peaks) < 2 or np.diff(peaks).min() <= 2 * LOSSY_PEAK_RADIUS:
        return False
    present = np.flatnonzero(hist)
    near = np.abs(present[:, None] - peaks[None, :]).min(axis=1) <= LOSSY_PEAK_RADIUS
    return len(present) >= 4 * len(peaks) and hist[present[near]].sum() >= 0.9 * hist.sum()


def lossy_peaks(hist: np.ndarray, wanted: int | None) -> tuple[np.ndarray, int]:
    """Real class values of noisy masks (the ``wanted`` most common, or the histogram's peaks) and pixels moved.

    Compression shifts flat areas by a level or two (0 -> 1, 255 -> 254): a peak that close to the end of the
    range stands for the end value, as long as that keeps the classes apart.
    """
    peaks = np.sort(np.argsort(hist)[::-1][:wanted]) if wanted else _peaks(hist)
    top = 255 if not hist[256:].any() else 65535
    ends = np.where(peaks <= LOSSY_PEAK_RADIUS, 0, np.where(peaks >= top - LOSSY_PEAK_RADIUS, top, peaks))
    if len(np.unique(ends)) == len(peaks):
        peaks = ends
    present = np.flatnonzero(hist)
    moved = int(hist[present[~np.isin(present, peaks)]].sum())
    return peaks, moved

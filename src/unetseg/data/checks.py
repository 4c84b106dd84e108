"""The dataset checks that ``unetseg doctor`` reports and ``unetseg train`` runs first: every problem in one pass.

A problem stops training (exit 2); a warning is worth knowing but training can go on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetseg.data.classfile import find_classes_file, load_classes_file
from unetseg.data.classmap import IGNORE_INDEX, ClassMap, discover, mask_palette
from unetseg.data.folder import Pair, find_folders, is_lossy, lossy_masks, match_files
from unetseg.data.formats import Generated, resolve
from unetseg.data.index import FileInfo, ScanResult, cache_home, cache_lock, open_index, scan_files
from unetseg.errors import DataError, UserError

EXAMPLES = 3  # file names shown per warning


@dataclass
class FolderCheck:
    """One image folder and its mask folder, paired and scanned."""

    image_dir: Path
    mask_dir: Path
    root: Path
    home: Path | None  # cache folder (index, decoded arrays); None when caching is off
    pairs: list[Pair]  # the pairs that can be trained on
    scan: ScanResult  # their scan, aligned with ``pairs``
    images: dict[Path, FileInfo]  # every image read, unmatched ones too
    masks: dict[Path, FileInfo]
    listed: tuple[int, int]  # image and mask files found
    unreadable: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: Generated | None = None  # the annotation source these folders were rasterised from


@dataclass
class Inspection:
    """Everything the checks found, for the training folder and the validation folder when given."""

    folders: list[FolderCheck]
    class_map: ClassMap | None
    classes_file: Path | None
    problems: list[str]
    warnings: list[str]
    notes: list[str]

    @property
    def scan(self) -> ScanResult:
        scans = [f.scan for f in self.folders]
        return sum(scans[1:], scans[0])


def check_folder(
    data: str | None,
    images: str | None,
    masks: str | None,
    resize_to_mask: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
    workers: int | None = None,
    option: str = "--data",
    split: str = "train",
) -> FolderCheck:
    """Find, pair and read one dataset folder (through the index when ``cache``), collecting every problem.

    ``option`` is the command-line option that named ``data`` (``--data``, ``--val-data``): errors name it. An
    annotation source (COCO, VOC, Cityscapes...) is first rasterised into folders; ``split`` picks which one
    (the training one when the source has no such split).
    """
    generated = _annotations(data, images, masks, cache_dir, option, split)
    if generated is not None:
        data, images, masks = str(generated.folders.get(split, generated.folders["train"])), None, None
    image_dir, mask_dir = find_folders(data, images, masks, option)
    root = Path(data) if data else image_dir.parent
    pairs, notes, problems, unmatched = match_files(image_dir, mask_dir)
    home = cache_home(root, cache_dir) if cache else None
    if cache and home is None:
        notes.append(f"{root}: no writable cache folder (pass --cache-dir DIR); nothing is cached")
    files = [("image", p.image) for p in pairs] + [("mask", p.mask) for p in pairs]
    files += [("image" if p.parent == image_dir else "mask", p) for p in unmatched]
    with cache_lock(home, "index"):  # concurrent starts (DDP ranks): one scans, the others read its index
        infos, read_problems = scan_files(files, open_index(home, image_dir, mask_dir), workers)
    problems += read_problems.values()
    good, image_infos, mask_infos = [], [], []
    for pair in pairs:
        image, mask = infos.get(("image", pair.image)), infos.get(("mask", pair.mask))
        if image is None or mask is None:
            continue
        problem = _size_problem(pair, image, mask, resize_to_mask) or _channel_problem(pair.image, image)
        if problem:
            problems.append(problem)
            continue
        good.append(pair)
        image_infos.append(image)
        mask_infos.append(mask)
    check = FolderCheck(
        image_dir,
        mask_dir,
        root,
        home,
        good,
        ScanResult.from_infos(good, image_infos, mask_infos),
        {p: i for (role, p), i in infos.items() if role == "image"},
        {p: i for (role, p), i in infos.items() if role == "mask"},
        (sum(r == "image" for r, _ in files), sum(r == "mask" for r, _ in files)),
        len(read_problems),
        problems,
        notes=notes,
        generated=generated,
    )
    if generated is not None:
        check.problems += generated.problems
        check.warnings += generated.warnings
        check.notes += generated.notes
    _folder_findings(check)
    return check


def _annotations(
    data: str | None, images: str | None, masks: str | None, cache_dir: str | None, option: str, split: str
) -> Generated | None:
    """The folders drawn from an annotation source (None for a plain folder); its problems raise at once when
    they left no image in the folder of ``split``."""
    generated = resolve(data, images, masks, cache_dir, option)
    folder = None if generated is None else generated.folders.get(split, generated.folders["train"])
    if folder is not None and generated.problems and not any((folder / "imgs").iterdir()):
        raise DataError(generated.problems)
    return generated


def _size_problem(pair: Pair, image: FileInfo, mask: FileInfo, resize_to_mask: bool) -> str | None:
    (ih, iw), (mh, mw) = image.shape, mask.shape
    if (ih, iw) == (mh, mw):
        return None
    same_aspect = abs(round(iw * mh / ih) - mw) <= 1 and abs(round(ih * mw / iw) - mh) <= 1
    if resize_to_mask and same_aspect:
        return None
    text = f"{pair.mask}: mask is {mw}x{mh} but its image {pair.image.name} is {iw}x{ih} (W x H); "
    if resize_to_mask:
        return text + "their aspect ratios differ, so --resize-to-mask cannot help: crop or pad one to match"
    fix = ", or pass --resize-to-mask to resize the image to its mask" if same_aspect else ""
    return text + f"save the mask at the image's size{fix}"


def _channel_problem(path: Path, image: FileInfo) -> str | None:
    if image.info_channels in (1, 3, 4):
        return None
    return (
        f"{path}: image has {image.info_channels} channels; unetseg reads 1 (grey), 3 (RGB) or 4 (RGBA): "
        "save it with one of these"
    )


def _folder_findings(check: FolderCheck) -> None:
    """Warnings and notes that need no class map."""
    scan = check.scan
    dropped = sum(1 for c, raw in zip(scan.channels, scan.raw_channels) if c < raw)
    if dropped:
        check.notes.append(f"{dropped} images carry a constant alpha channel; it was dropped")
    resized = [p for p, i, m in zip(check.pairs, scan.images, scan.masks) if i.shape != m.shape]
    if resized:
        check.notes.append(f"{len(resized)} images are resized to their mask's size (--resize-to-mask)")


def inspect_dataset(
    data: str | None,
    images: str | None,
    masks: str | None,
    val_data: str | None = None,
    classes: int | None = None,
    classes_file: str | None = None,
    resize_to_mask: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
    workers: int | None = None,
) -> Inspection:
    """Every check on the training (and validation) folders; problems are collected, never raised one by one."""
    options = {"resize_to_mask": resize_to_mask, "cache": cache, "cache_dir": cache_dir, "workers": workers}
    folders = [check_folder(data, images, masks, **options)]
    if val_data:
        folders.append(check_folder(val_data, None, None, **options, option="--val-data"))
    elif folders[0].generated is not None and "val" in folders[0].generated.folders:  # the format's own split
        folders.append(check_folder(str(folders[0].generated.folders["val"]), None, None, **options))
    problems = [p for f in folders for p in f.problems]
    warnings = [w for f in folders for w in f.warnings]
    notes = [n for f in folders for n in f.notes]
    pairs = [p for f in folders for p in f.pairs]
    path = find_classes_file(_unique([f.root for f in folders] + [f.mask_dir for f in folders]), classes_file)
    class_map = None
    scan = sum((f.scan for f in folders[1:]), folders[0].scan)
    mixed = mixed_encodings(scan)
    problems += mixed
    if pairs and not mixed:
        try:
            class_map, map_notes = _class_map(scan, classes, path, lossy_masks(pairs))
            class_map.palette = mask_palette(scan)  # predict writes palette masks back in the same palette
            notes += map_notes
            problems += unknown_values(scan, class_map)
            warnings += mask_warnings(scan, class_map)
        except DataError as err:
            problems += err.problems
        except UserError as err:
            problems.append(str(err))
    warnings += duplicate_warnings(folders)
    return Inspection(folders, class_map, path, problems, warnings, notes)


def mixed_encodings(scan: ScanResult) -> list[str]:
    """Colour (RGB) masks and single-channel masks cannot share one class map."""
    colour = [m.is_color for m in scan.masks]
    if not any(colour) or all(colour):
        return []
    grey = [str(p.mask) for p, c in zip(scan.pairs, colour) if not c][:EXAMPLES]
    rgb = [str(p.mask) for p, c in zip(scan.pairs, colour) if c][:EXAMPLES]
    return [
        f"some masks are colour (RGB), e.g. {', '.join(rgb)}, and others single-channel, e.g. {', '.join(grey)}; "
        "save all masks in one encoding"
    ]


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _class_map(scan: ScanResult, classes: int | None, path: Path | None, lossy: bool) -> tuple[ClassMap, list[str]]:
    """From the classes file when there is one, else discovered from the masks."""
    if path is None:
        return discover(scan, classes, lossy)
    class_map = load_classes_file(path)
    wanted = 2 if classes == 1 else classes
    if wanted is not None and wanted != class_map.num_classes:
        raise UserError(
            f"-c/--classes {classes} disagrees with {path}, which names {class_map.num_classes} classes; "
            "leave -c out or fix the classes file"
        )
    if any(scan.mask_is_color) != class_map.is_color:
        masks = "RGB colour images" if any(scan.mask_is_color) else "single-channel (values or palette indices)"
        given = "colours" if class_map.is_color else "values"
        raise DataError(f"{path}: gives {given}, but the masks are {masks}; describe each class the way masks store it")
    notes = [f"classes from {path}"]
    if lossy:
        class_map.snap = True
        moved = sum(int(c[~np.isin(v, _known(class_map))].sum()) for v, c in zip(scan.mask_values, scan.mask_counts))
        notes.append(f"masks are JPEG: {moved} pixels of compression noise snapped to the nearest class")
    return class_map, notes


def _known(class_map: ClassMap) -> np.ndarray:
    ignore = class_map.ignore_key()
    return np.append(class_map.keys(), [] if ignore is None else [ignore]).astype(np.int64)


def unknown_values(scan: ScanResult, class_map: ClassMap) -> list[str]:
    """One problem per mask holding values the class map does not know, except noise in masks being snapped."""
    known = _known(class_map)
    return [
        class_map.unknown_message(pair.mask, values[~np.isin(values, known)].tolist())
        for pair, values in zip(scan.pairs, scan.mask_values)
        if not np.isin(values, known).all() and not _snapped(pair, scan, class_map)
    ]


def _snapped(pair: Pair, scan: ScanResult, class_map: ClassMap) -> bool:
    """JPEG masks are snapped; so are all masks when their noise was recognised in PNGs (no JPEG among them)."""
    return class_map.snap and (is_lossy(pair.mask) or not lossy_masks(scan.pairs))


def class_table(scan: ScanResult, class_map: ClassMap) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Pixels per class (index 255 = ignore last), images containing each class, and each mask's class pixels."""
    pixels = np.zeros(class_map.num_classes + 1, dtype=np.int64)
    images = np.zeros(class_map.num_classes + 1, dtype=np.int64)
    per_mask = []
    for values, counts in zip(scan.mask_values, scan.mask_counts):
        table, unknown = class_map.classify(values)
        index = np.where(table == IGNORE_INDEX, class_map.num_classes, table)[~unknown]
        mask_pixels = np.bincount(index, weights=counts[~unknown], minlength=len(pixels)).astype(np.int64)
        pixels += mask_pixels
        images += mask_pixels > 0
        per_mask.append(mask_pixels)
    return pixels, images, per_mask


def mask_warnings(scan: ScanResult, class_map: ClassMap) -> list[str]:
    """All-background masks, 0/1 masks that look black, and masks whose noise was snapped."""
    _, _, per_mask = class_table(scan, class_map)
    known = _known(class_map)
    complete = [np.isin(v, known).all() for v in scan.mask_values]  # else reported as unknown values or noise
    background = [p.mask for p, m, ok in zip(scan.pairs, per_mask, complete) if ok and m[1:-1].sum() == 0]
    black = [
        p.mask
        for p, info in zip(scan.pairs, scan.masks)
        if info.values and max(info.values) == 1 and info.kind not in ("NPY", "PNG P", "GIF P", "BMP P", "TIFF P")
    ]
    noisy = [p.mask for p, ok in zip(scan.pairs, complete) if not ok and _snapped(p, scan, class_map)]
    found = [
        (background, "masks are all background (no pixel of any other class)", "check that they are the right files"),
        (black, "masks hold only the values 0 and 1, so they look black in image viewers", "this is fine for training"),
        (
            noisy,
            "masks carry compression noise (values between the classes), snapped to the nearest class",
            "save masks as PNG, not JPEG",
        ),
    ]
    return [f"{len(paths)} {what} (e.g. {_names(paths)}); {fix}" for paths, what, fix in found if paths]


def duplicate_warnings(folders: list[FolderCheck]) -> list[str]:
    """Images with identical content, within and across the training and validation folders."""
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        for path, info in folder.images.items():
            by_hash[info.hash].append(path)
    groups = [paths for paths in by_hash.values() if len(paths) > 1]
    if not groups:
        return []
    shown = "; ".join(" = ".join(str(p) for p in paths[:EXAMPLES]) for paths in groups[:EXAMPLES])
    extra = f"; and {len(groups) - EXAMPLES} more groups" if len(groups) > EXAMPLES else ""
    return [
        f"{sum(len(g) - 1 for g in groups)} images are exact copies of another ({shown}{extra}); "
        "remove the copies: they over-weight those images and leak between training and validation"
    ]


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths[:EXAMPLES]) + (", ..." if len(paths) > EXAMPLES else "")


def default_channels(channels: list[int]) -> int:
    """Grey when every image is grey, RGBA when some alpha carries data, otherwise RGB."""
    if all(c == 1 for c in channels):
        return 1
    return 4 if any(c >= 4 for c in channels) else 3


def channel_notes(channels: list[int], wanted: int) -> list[str]:
    """Say how many images are converted to the model's channel count."""
    converted = sum(1 for c in channels if c != wanted)
    kind = {1: "grey", 3: "RGB", 4: "RGBA"}[wanted]
    return [f"{converted} images converted to {kind} ({wanted} channels) to match the others"] if converted else []

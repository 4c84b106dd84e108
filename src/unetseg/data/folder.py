"""Folders of images and masks: finding the two folders and pairing their files by stem."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetseg.data.io import IMAGE_SUFFIXES, LOSSY_SUFFIXES
from unetseg.errors import DataError, UserError

IMAGE_DIR_NAMES = ("imgs", "images", "image", "img")
MASK_DIR_NAMES = ("masks", "labels", "label", "mask", "annotations")
# Suffixes that mask files often carry beyond the image's stem (Carvana: "<id>_mask.gif").
MASK_STEM_SUFFIXES = ("_mask", "_masks", "-mask", "_label", "_labels", "-label", "_seg", "_gt", "_segmentation")


@dataclass
class Pair:
    """One image and its mask."""

    image: Path
    mask: Path | None


def find_folders(
    data: str | Path | None, images: str | Path | None, masks: str | Path | None, option: str = "--data"
) -> tuple[Path, Path]:
    """The image and mask folders, from ``--data DIR`` (or the ``option`` that named it) or ``--images``/``--masks``."""
    if images or masks:
        if not (images and masks):
            raise UserError("--images and --masks go together: pass both folders, or --data DIR instead")
        image_dir, mask_dir = Path(images), Path(masks)
    else:
        if data is None:
            raise UserError("no dataset given: pass --data DIR (holding imgs/ and masks/) or --images DIR --masks DIR")
        root = Path(data)
        _check_dir(option, root, "pass the folder that holds imgs/ and masks/")
        image_dir = next((root / n for n in IMAGE_DIR_NAMES if _is_dir(root / n)), None)
        mask_dir = next((root / n for n in MASK_DIR_NAMES if _is_dir(root / n)), None)
        if image_dir is None or mask_dir is None:
            missing = "image folder (imgs/ or images/)" if image_dir is None else "mask folder (masks/ or labels/)"
            raise UserError(
                f"{option} {root}: no {missing} inside; put images in {root}/imgs and masks in {root}/masks, "
                "or name them with --images DIR --masks DIR"
            )
    for name, folder in (("--images", image_dir), ("--masks", mask_dir)):
        _check_dir(name if images else option, folder, "pass a folder of image files")
    return image_dir, mask_dir


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symlink loop, a name too long: not a folder to use
        return False


def _check_dir(option: str, folder: Path, fix: str) -> None:
    """A clear message when ``folder`` (given by ``option``) is missing, a broken link, a file or unreadable."""
    kind = entry_kind(folder)
    if kind == "dir":
        return
    what = {
        "loop": "is a symbolic link that loops back on itself; point the link at a real folder",
        "dangling": f"is a broken symbolic link (its target {_link_target(folder)} does not exist); fix the link",
        "missing": "folder does not exist; check the path",
        "unreadable": "cannot be read; fix its permissions",
    }.get(kind, f"not a folder; {fix}")
    raise UserError(f"{option} {folder}: {what}")


def entry_kind(path: Path | os.DirEntry) -> str:
    """What a path is, without ever raising: "dir", "file", "loop", "dangling", "missing", "unreadable", "other"."""
    try:
        if path.is_dir():
            return "dir"
        if path.is_file():
            return "file"
        if path.is_symlink():
            os.stat(path)  # raises for a loop or a dangling link, which is_dir and is_file hide
            return "other"
        return "other" if os.path.lexists(path) else "missing"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "loop"
        if err.errno == errno.ENOENT:
            return "dangling" if os.path.islink(path) else "missing"
        return "unreadable"


def _link_target(path: Path | os.DirEntry) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def list_images(folder: Path) -> tuple[list[Path], list[str], list[str]]:
    """Image files in a folder (sorted), notes on what was skipped, and problems.

    Problems are entries named like images that cannot be one: broken or looping symbolic links, folders, special
    files, names that are not UTF-8. Entries of other names are skipped with a note.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise UserError(f"{folder}: cannot list this folder ({err}); fix its permissions or the path") from err
    files, problems = [], []
    skipped: dict[str, list[str]] = {
        "hidden entries": [],
        "sub-folders": [],
        "files that are not images": [],
        "broken symbolic links": [],
    }
    for entry in entries:
        name, kind = printable(entry.name), entry_kind(entry)
        if entry.name.startswith("."):
            skipped["hidden entries"].append(name)
        elif Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
            group = {"dir": "sub-folders", "loop": "broken symbolic links", "dangling": "broken symbolic links"}
            skipped[group.get(kind, "files that are not images")].append(name)
        elif kind != "file":
            problems.append(f"{folder / name}: {_not_a_file(kind, entry)}")
        elif name != entry.name:
            problems.append(
                f"{folder / name}: file name is not valid UTF-8; rename it using UTF-8 characters "
                "(e.g. convmv -f latin1 -t utf8 --notest FILE)"
            )
        else:
            files.append(folder / entry.name)
    notes = [
        f"{folder}: ignored {len(names)} {what} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        for what, names in skipped.items()
        if names
    ]
    return files, notes, problems


def _not_a_file(kind: str, entry: os.DirEntry) -> str:
    """Why an entry named like an image is not one, and the fix."""
    return {
        "dir": "is a folder, not an image file; move it out of the dataset or rename it",
        "loop": "is a symbolic link that loops back on itself; point it at an image file or remove it",
        "dangling": f"is a broken symbolic link (its target {_link_target(entry)} does not exist); "
        "fix the link or remove it",
        "unreadable": "cannot be examined (permission denied); fix the permissions of its folder or remove it",
    }.get(kind, "is not a regular file (a device, pipe or socket); replace it with an image file or remove it")


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 shown as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _mask_key(stem: str, image_stems: set[str]) -> str:
    if stem in image_stems:
        return stem
    for suffix in MASK_STEM_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in image_stems:
            return stem[: -len(suffix)]
    match = re.match(r"^(.*?)[_\-.](mask|label|seg|gt)s?$", stem, flags=re.IGNORECASE)
    return match.group(1) if match else stem


def match_files(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[str], list[str], list[Path]]:
    """Pair images with masks by stem (a mask may carry a suffix such as ``_mask``).

    Returns the matched pairs, notes, every problem (unmatched or ambiguous files) rather than the first, and the
    files left unmatched (so that they can still be checked for being readable).
    """
    images, notes, problems = list_images(image_dir)
    masks, mask_notes, mask_problems = list_images(mask_dir)
    notes, problems = notes + mask_notes, problems + mask_problems
    if not images and not problems:
        raise DataError(
            f"{image_dir}: no image files found (looked for .png, .jpg, .tif, .bmp, .gif, .npy); "
            "put the training images there"
        )
    by_stem: dict[str, Path] = {}
    for path in images:
        if path.stem in by_stem:
            problems.append(f"{path}: two images share the stem '{path.stem}' ({by_stem[path.stem].name}); rename one")
        by_stem[path.stem] = path
    stems = set(by_stem)
    mask_by_stem: dict[str, Path] = {}
    for path in masks:
        key = _mask_key(path.stem, stems)
        if key in mask_by_stem:
            problems.append(f"{path}: two masks pair with image '{key}' ({mask_by_stem[key].name}); keep one")
        mask_by_stem[key] = path
    for stem, path in by_stem.items():
        if stem not in mask_by_stem:
            problems.append(
                f"{path}: no mask for this image in {mask_dir} (expected {stem}.png or {stem}_mask.*); "
                "add the mask or remove the image"
            )
    for key, path in mask_by_stem.items():
        if key not in by_stem:
            problems.append(f"{path}: no image for this mask in {image_dir}; add the image or remove the mask")
    pairs = [Pair(by_stem[s], mask_by_stem[s]) for s in sorted(by_stem) if s in mask_by_stem]
    unmatched = [p for s, p in by_stem.items() if s not in mask_by_stem]
    unmatched += [p for k, p in mask_by_stem.items() if k not in by_stem]
    return pairs, notes, problems, unmatched


def pair_files(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[str]]:
    """Like ``match_files``, but any problem raises one ``DataError`` listing them all."""
    pairs, notes, problems, _ = match_files(image_dir, mask_dir)
    if problems:
        raise DataError(problems)
    return pairs, notes


def image_channels(image: np.ndarray) -> int:
    """Channels that carry information: a constant alpha channel does not count."""
    channels = image.shape[2]
    if channels in (2, 4) and image[:, :, -1].min() == image[:, :, -1].max():
        channels -= 1
    return channels


def color_keys(mask: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours -> ``(H, W)`` int64 keys ``r << 16 | g << 8 | b``."""
    mask = mask.astype(np.int64)
    return (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]


def is_lossy(path: Path | None) -> bool:
    """A lossy format (JPEG): its values carry compression noise."""
    return path is not None and path.suffix.lower() in LOSSY_SUFFIXES


def lossy_masks(pairs: list[Pair]) -> bool:
    """True when some masks are stored in a lossy format (JPEG), whose values carry compression noise."""
    return any(is_lossy(p.mask) for p in pairs)

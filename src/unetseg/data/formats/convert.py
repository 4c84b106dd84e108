"""``unetseg convert``: an annotation source as a plain folder dataset, or any dataset as COCO instances JSON.

``--format folder`` (the default) writes ``DIR/imgs``, ``DIR/masks`` (PNG class indices, 255 = ignored) and
``DIR/classes.yaml``; a validation split goes to ``DIR/val/`` (train with ``--data DIR --val-data DIR/val``).
``--format coco`` writes ``DIR/images`` and ``DIR/annotations.json``: one compressed-RLE annotation per class and
image (semantic masks do not separate objects), and the ignored pixels of an image as one ``iscrowd`` region (of
category 1: unetseg ignores crowd regions of any category), so reading the file back gives the same masks.

The output is written into a temporary sibling folder and renamed into place; a non-empty ``DIR`` is replaced only
with ``--overwrite``, and never when it holds the source.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from unetseg.config import ConvertConfig
from unetseg.core.atomic import write_atomic
from unetseg.data.checks import inspect_dataset
from unetseg.data.classmap import IGNORE_INDEX
from unetseg.data.formats import resolve
from unetseg.data.samples import load_sample
from unetseg.errors import DataError, UserError


def convert(cfg: ConvertConfig) -> Path:
    """Write the converted dataset to ``cfg.out`` and return it."""
    out = Path(cfg.out)
    _check_out(out, cfg)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        notes = _to_folder(cfg, tmp) if cfg.format == "folder" else _to_coco(cfg, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(
            f"-o {out}: cannot write the converted dataset ({err}); free some space or fix permissions"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return out


def _check_out(out: Path, cfg: ConvertConfig) -> None:
    source = Path(cfg.data or cfg.images or ".").resolve()
    target = out.resolve()
    if target == source or target in source.parents:
        raise UserError(f"-o {out}: holds the dataset being converted; write somewhere else")
    if out.is_file():
        raise UserError(f"-o {out}: is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"-o {out}: folder exists and is not empty; pass --overwrite to replace it, or another -o")


def _to_folder(cfg: ConvertConfig, tmp: Path) -> list[str]:
    generated = resolve(cfg.data, cfg.images, cfg.masks, cfg.cache_dir)
    if generated is None:
        raise UserError(
            f"--data {cfg.data}: already a folder of images and masks; train on it as it is, or pass --format coco"
        )
    if generated.problems:
        raise DataError(generated.problems, hint=f"`unetseg doctor --data {cfg.data}` reports on the whole dataset")
    for split, folder in generated.folders.items():
        target = tmp if split == "train" else tmp / split
        for part in ("imgs", "masks"):
            (target / part).mkdir(parents=True)
            for path in sorted((folder / part).iterdir()):
                shutil.copyfile(path, target / part / path.name)  # follows the links to the original images
        shutil.copyfile(folder / "classes.yaml", target / "classes.yaml")
    notes = [f"{generated.format}: {', '.join(generated.folders)} split(s) written"] + generated.warnings
    if "val" in generated.folders:
        notes.append(f"train with: unetseg train --data {cfg.out} --val-data {Path(cfg.out) / 'val'}")
    return notes


def _to_coco(cfg: ConvertConfig, tmp: Path) -> list[str]:
    from unetseg.data.formats.coco import mask_utils

    masks = mask_utils()
    report = inspect_dataset(
        cfg.data, cfg.images, cfg.masks, None, None, cfg.classes_file, cfg.resize_to_mask, cfg.cache, cfg.cache_dir
    )
    if report.problems:
        raise DataError(report.problems, hint=f"`unetseg doctor --data {cfg.data}` reports on the whole dataset")
    class_map = report.class_map
    categories = [{"id": i, "name": n} for i, n in enumerate(class_map.names) if i > 0]
    images, annotations, ignored = [], [], 0
    (tmp / "images").mkdir()
    pairs = [p for f in report.folders for p in f.pairs]
    for image_id, pair in enumerate(pairs, 1):
        sample = load_sample(pair, class_map, 1, 1.0, cfg.resize_to_mask)
        height, width = sample.mask.shape
        name = f"{pair.image.stem}{pair.image.suffix}"
        shutil.copyfile(pair.image, tmp / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        ignored += int((sample.mask == IGNORE_INDEX).sum())
        for index in [*range(1, class_map.num_classes), IGNORE_INDEX]:
            region = np.asfortranarray(sample.mask == index, dtype=np.uint8)
            if region.any():
                annotations.append(_annotation(masks, region, len(annotations) + 1, image_id, index))
    data = {"images": images, "annotations": annotations, "categories": categories}
    write_atomic(tmp / "annotations.json", json.dumps(data).encode())
    notes = [f"{len(images)} images, {len(annotations)} annotations (one RLE mask per class and image)"]
    if ignored:
        notes.append(f"{ignored} ignored pixels written as iscrowd regions")
    return notes


def _annotation(masks, region: np.ndarray, ann_id: int, image_id: int, index: int) -> dict:
    """One compressed-RLE annotation; the ignore index becomes a crowd region."""
    rle = masks.encode(region)
    crowd = index == IGNORE_INDEX
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1 if crowd else index,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "area": int(masks.area(rle)),
        "bbox": [float(v) for v in masks.toBbox(rle)],
        "iscrowd": int(crowd),
    }

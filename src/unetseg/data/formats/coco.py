"""COCO instances JSON: polygons, RLE (compressed and not), crowd regions, categories by name.

Rules (docs/formats.md): categories sorted by id become classes 1..K (0 is background) with their names; an
object's polygons are merged into one region as pycocotools does; objects are painted in the order of the file's
``annotations`` list, later on top; ``iscrowd`` regions become 255 (ignored) where no object covers them; an image
without annotations is all background. Masks are drawn by pycocotools, so they equal ``COCO.annToMask``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.data.formats.source import IGNORE, Item, Source, paint, safe_stem, unused_classes
from unetseg.errors import UserError

INSTALL = 'pip install "unetseg[coco]"'


def mask_utils():
    """pycocotools' mask module, or exit 2 saying how to install it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise UserError(f"COCO annotations need pycocotools to draw their masks: {INSTALL}") from None
    return mask


def find_coco_files(root: Path) -> list[tuple[Path, str]]:
    """COCO JSON files in a folder (itself, annotations/, one level of sub-folders) with their split."""
    found = []
    for pattern in ("*.json", "annotations/*.json", "*/*.json"):
        for path in sorted(root.glob(pattern)):
            if path.is_file() and not path.name.startswith(".") and _has_keys(path):
                found.append(path)
    splits = [(p, split_of(p)) for p in dict.fromkeys(found)]
    return [(p, s) for p, s in splits if s != "test"]


def split_of(path: Path) -> str:
    """ "val" for names such as instances_val2017.json or valid/_annotations.coco.json, "test", else "train"."""
    words = f"{path.parent.name} {path.stem}".lower().replace("-", "_").split("_")
    text = " ".join(words)
    if "test" in text:
        return "test"
    return "val" if any(w.startswith("val") for w in text.split()) else "train"


def _has_keys(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16).decode("utf-8", "ignore")
    except OSError:
        return False
    return head.lstrip().startswith("{") and any(f'"{k}"' in head for k in ("images", "annotations", "categories"))


def read_coco(files: list[tuple[Path, str]], images: Path | None, origin: Path) -> Source:
    """One source from COCO files (one per split); categories must agree across the files."""
    masks = mask_utils()
    source = Source("COCO instances", origin, ["background"], [], [p for p, _ in files], objects={})
    categories: dict[int, int] = {}
    counts: Counter = Counter()
    for path, split in files:
        data = _load(path)
        cats = sorted((c for c in data.get("categories", []) if isinstance(c, dict)), key=lambda c: c.get("id", 0))
        if not categories:
            source.names += [str(c.get("name", c.get("id"))) for c in cats]
            categories = {c.get("id"): i + 1 for i, c in enumerate(cats)}
        elif [c.get("id") for c in cats] != list(categories):
            source.problems.append(f"{path}: its categories differ from those of {files[0][0]}; use one category list")
        folders = _image_folders(path, split, images)
        _read_file(path, data, split, folders, categories, source, counts, masks)
    _rename_duplicates(source)
    source.objects = {n: counts[n] for n in source.names[1:]}
    unused_classes(source, counts, str(files[0][0]))
    return source


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: not a readable COCO JSON file ({err}); fix it or pass another --data") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not COCO instances JSON (no 'images' list); pass the instances file")
    return data


def _image_folders(path: Path, split: str, images: Path | None) -> list[Path]:
    """Where the image files of a COCO file may be: --images, then the usual layouts around the file."""
    base = path.parent.parent if path.parent.name == "annotations" else path.parent
    guesses = [images] if images else []
    tag = path.stem.split("_")[-1]  # instances_train2017 -> train2017
    guesses += [base / tag, base / "images" / tag, base / "images" / split, base / split, base / "images", base]
    guesses += [base / "imgs", path.parent]
    return [g for g in dict.fromkeys(guesses) if g is not None and g.is_dir()]


def _read_file(path, data, split, folders, categories, source, counts, masks) -> None:
    by_id: dict = {}
    stems = {i.stem for i in source.items}
    for image in data["images"]:
        name, image_id = str(image.get("file_name", "")), image.get("id")
        if image_id in by_id:
            source.problems.append(f"{path}: image id {image_id} is used twice ({name}); give each image its own id")
            continue
        file = next((f / name for f in folders if (f / name).is_file()), None)
        file = file or next((f / Path(name).name for f in folders if (f / Path(name).name).is_file()), None)
        if file is None:
            where = ", ".join(str(f) for f in folders) or path.parent
            source.problems.append(
                f"{path}: image id {image_id}: file {name} is missing (looked in {where}); add it or pass --images DIR"
            )
            by_id[image_id] = None
            continue
        stem = safe_stem(name)
        if stem in stems:
            source.problems.append(f"{path}: image {name} is listed twice; list each image once")
            by_id[image_id] = None
            continue
        stems.add(stem)
        by_id[image_id] = {"image": image, "file": file, "stem": stem, "anns": []}
    for ann in data.get("annotations", []):
        entry = by_id.get(ann.get("image_id"), ...)
        if entry is ...:
            source.problems.append(
                f"{path}: annotation {ann.get('id')} names image id {ann.get('image_id')}, which is not in 'images'"
            )
        elif ann.get("category_id") not in categories:
            source.problems.append(
                f"{path}: annotation {ann.get('id')} has category id {ann.get('category_id')}, which is not in "
                f"'categories' (known: {', '.join(map(str, categories))}); fix the id or add the category"
            )
        elif entry is not None:
            entry["anns"].append(ann)
    for entry in by_id.values():
        if entry is None:
            continue
        for ann in entry["anns"]:
            if not ann.get("iscrowd"):
                counts[source.names[categories[ann["category_id"]]]] += 1
        draw = _drawer(path, entry, categories, source, masks)
        source.items.append(Item(entry["stem"], entry["file"], entry["file"].suffix, split, draw, str(path)))


def _drawer(path: Path, entry: dict, categories: dict, source: Source, masks):
    image, anns = entry["image"], entry["anns"]
    height, width = int(image.get("height") or 0), int(image.get("width") or 0)
    if height <= 0 or width <= 0:  # some exporters leave them out: the image file knows
        try:
            with Image.open(entry["file"]) as opened:
                width, height = opened.size
        except OSError as err:
            source.problems.append(f"{path}: image id {image.get('id')}: no width and height, and {err}")
            return lambda: None
    # checked now (every problem at once); converted to RLE only when drawn: a cached dataset never pays for it
    rles = [(ann, _to_rle(path, ann, height, width, source, masks)) for ann in anns]

    def draw() -> np.ndarray:
        mask = np.zeros((height, width), dtype=np.uint8)
        crowd = np.zeros((height, width), dtype=bool)
        for ann, rle in rles:
            if rle is None:
                continue
            region = masks.decode(rle())
            if ann.get("iscrowd"):
                crowd |= region.astype(bool)
            else:
                paint(mask, region, categories[ann["category_id"]])
        mask[crowd & (mask == 0)] = IGNORE  # objects win over crowd regions
        return mask

    return draw


def _to_rle(path: Path, ann: dict, height: int, width: int, source: Source, masks):
    """A function giving the annotation as one RLE (as ``COCO.annToRLE``), or None with a warning or problem."""
    seg, where = ann.get("segmentation"), f"{path}: annotation {ann.get('id')}"
    if isinstance(seg, list):
        polygons = [p for p in seg if isinstance(p, list)]
        good = [p for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
        if len(good) < len(polygons):
            source.warnings.append(f"{where}: a polygon with fewer than 3 points was skipped")
        coords = np.array([c for p in good for c in p], dtype=float)
        if coords.size and (
            coords[0::2].min() < 0
            or coords[1::2].min() < 0
            or coords[0::2].max() > width
            or coords[1::2].max() > height
        ):
            source.warnings.append(f"{where}: polygon coordinates outside the {width}x{height} image were clipped")
        if not good:
            return None
        return lambda: masks.merge(masks.frPyObjects(good, height, width))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            source.problems.append(
                f"{where}: RLE size {seg['size']} differs from its image's {height}x{width}; fix the size"
            )
            return None
        if isinstance(seg["counts"], list):
            return lambda: masks.frPyObjects(seg, height, width)
        counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        return lambda: {"size": seg["size"], "counts": counts}
    source.warnings.append(f"{where}: no segmentation (neither polygons nor RLE); skipped")
    return None


def _rename_duplicates(source: Source) -> None:
    """Class names must differ: a repeated category name gets its index appended (noted)."""
    seen = Counter(source.names)
    for i, name in enumerate(source.names):
        if seen[name] > 1 and i > 0:
            source.names[i] = f"{name} ({i})"
            source.notes.append(f"category name {name!r} is used twice; class {i} is called {source.names[i]!r}")

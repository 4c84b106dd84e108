"""Annotation formats read from ``--data``: COCO, Pascal VOC, CVAT segmentation masks, Cityscapes, LabelMe, YOLO.

:func:`resolve` recognises what ``--data`` points at; an annotation source is rasterised once into plain folder
datasets in the cache folder (:mod:`.build`), which the folder code then reads like any other. Plain folders of
images and masks are left to that code (``resolve`` returns None).
"""

from __future__ import annotations

from pathlib import Path

from unetseg.data.folder import IMAGE_DIR_NAMES, MASK_DIR_NAMES
from unetseg.data.formats.build import Generated, generate
from unetseg.data.formats.cityscapes import cityscapes_root, read_cityscapes
from unetseg.data.formats.coco import find_coco_files, read_coco
from unetseg.data.formats.cvat import is_cvat, read_cvat
from unetseg.data.formats.labelme import labelme_files, read_labelme
from unetseg.data.formats.source import Source
from unetseg.data.formats.voc import read_voc, voc_root
from unetseg.data.formats.yolo import read_yolo, yolo_root
from unetseg.data.index import cache_home
from unetseg.data.io import IMAGE_SUFFIXES
from unetseg.errors import UserError

__all__ = ["Generated", "Source", "read_source", "resolve"]


def read_source(data: str | None, images: str | None, masks: str | None, option: str = "--data") -> Source | None:
    """The annotation source ``--data`` (with ``--images`` for COCO) names; None for a plain folder dataset."""
    if data is None or masks:
        return None
    path = Path(data)
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return read_yolo(path.parent, path)
        if path.suffix.lower() == ".xml" and is_cvat(path):
            return read_cvat(path, Path(images) if images else None, path)
        if path.suffix.lower() != ".json":
            raise UserError(
                f"{option} {path}: a file, but not a COCO .json, a CVAT .xml or a YOLO data.yaml; pass a dataset "
                "folder or one of these"
            )
        return read_coco([(path, "train")], Path(images) if images else None, path)
    if not path.is_dir():
        return None  # the folder code says what is wrong with the path
    root = voc_root(path)
    if root is not None:
        return read_voc(root, path, Path(images) if images else None)
    root = cityscapes_root(path)
    if root is not None:
        return read_cityscapes(root, path)
    root = yolo_root(path)
    if root is not None:
        return read_yolo(root, path)
    if (path / "annotations.xml").is_file() and is_cvat(path / "annotations.xml"):
        return read_cvat(path / "annotations.xml", Path(images) if images else None, path)
    if _plain(path):
        return None
    files = find_coco_files(path)
    if files:
        return read_coco(files, Path(images) if images else None, path)
    files = labelme_files(path)
    return read_labelme(path, files) if files else None


def _plain(root: Path) -> bool:
    """A folder of images and masks: an image folder and a mask folder holding image files."""
    has_images = any((root / n).is_dir() for n in IMAGE_DIR_NAMES)
    mask_dirs = [root / n for n in MASK_DIR_NAMES if (root / n).is_dir()]
    return has_images and any(p.suffix.lower() in IMAGE_SUFFIXES for d in mask_dirs for p in d.iterdir())


def resolve(
    data: str | None, images: str | None, masks: str | None, cache_dir: str | None, option: str = "--data"
) -> Generated | None:
    """The folder datasets rasterised from the annotation source at ``data``; None for a plain folder dataset."""
    source = read_source(data, images, masks, option)
    if source is None:
        return None
    root = source.origin.parent if source.origin.is_file() else source.origin
    home = cache_home(root, cache_dir)
    if home is None:
        raise UserError(
            f"{option} {data}: nowhere to write the masks drawn from its annotations; pass --cache-dir DIR (writable)"
        )
    return generate(source, home)

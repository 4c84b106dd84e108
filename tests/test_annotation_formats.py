"""Annotation formats read from --data: masks checked pixel for pixel, then doctor, train and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetseg.cli import main
from unetseg.data.formats import resolve
from unetseg.data.formats.cityscapes import CLASSES

SIZE = 32


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)


def _square(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def make_coco(root: Path, mask_utils) -> Path:
    """Three images: an object of two polygons and an RLE ring with a hole; two overlapping objects and a crowd
    RLE; no annotations at all."""
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        _image(root / "images" / name, i)
    ring = np.zeros((SIZE, SIZE), dtype=np.uint8)
    ring[12:22, 12:22] = 1
    ring[15:19, 15:19] = 0  # the hole: 16 pixels
    crowd = np.zeros((SIZE, SIZE), dtype=np.uint8)
    crowd[0:8, 24:32] = 1
    crowd[4:8, 12:20] = 1  # partly under the first object of b.png: objects win there
    rle = mask_utils.encode(np.asfortranarray(ring))
    rle["counts"] = rle["counts"].decode()
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}]
        + [{"id": 2, "file_name": "b.png", "width": SIZE, "height": SIZE}]
        + [{"id": 5, "file_name": "c.png", "width": SIZE, "height": SIZE}],
        "categories": [{"id": 7, "name": "nucleus"}, {"id": 3, "name": "cell"}, {"id": 9, "name": "unused"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [_square(2, 2, 10, 10)]
             + [_square(24, 2, 30, 8)]},
            {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": rle},
            {"id": 20, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": [_square(4, 4, 20, 20)]},
            {"id": 21, "image_id": 2, "category_id": 7, "iscrowd": 0, "segmentation": [_square(12, 12, 28, 28)]},
            {"id": 22, "image_id": 2, "category_id": 3, "iscrowd": 1, "segmentation": _uncompressed(crowd)},
        ],
    }  # fmt: skip
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def expected_coco(path: Path, image_id: int) -> np.ndarray:
    """The rule of docs/formats.md drawn with pycocotools' own COCO.annToMask."""
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    index = {cid: i + 1 for i, cid in enumerate(sorted(coco.getCatIds()))}
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    crowd = np.zeros((SIZE, SIZE), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
        region = coco.annToMask(ann).astype(bool)
        if ann["iscrowd"]:
            crowd |= region
        else:
            mask[region] = index[ann["category_id"]]
    mask[crowd & (mask == 0)] = 255
    return mask


def _mask(folder: Path, stem: str) -> np.ndarray:
    return np.array(Image.open(folder / "masks" / f"{stem}.png"))


def test_coco_masks_equal_pycocotools(tmp_path):
    mask_utils = pytest.importorskip("pycocotools.mask")
    path = make_coco(tmp_path / "coco", mask_utils)
    generated = resolve(str(path), None, None, None)
    assert generated.format == "COCO instances"
    folder = generated.folders["train"]
    for stem, image_id in (("a", 1), ("b", 2), ("c", 5)):
        assert np.array_equal(_mask(folder, stem), expected_coco(path, image_id)), stem
    a, b, c = (_mask(folder, s) for s in "abc")
    # classes by category id: cell (3) = 1, nucleus (7) = 2, unused (9) = 3
    assert a[16, 16] == 0 and a[13, 13] == 2 and (a == 2).sum() == 100 - 16  # the RLE ring keeps its hole
    assert a[5, 5] == 1 and a[5, 27] == 1  # both polygons of object 10
    assert b[15, 15] == 2 and b[8, 8] == 1  # the later object is on top where they overlap
    assert b[2, 28] == 255 and b[6, 14] == 1  # crowd: ignored, except under an object
    assert not c.any()  # no annotations: all background
    classes = (folder / "classes.yaml").read_text()
    assert "name: cell" in classes and "name: nucleus" in classes and "ignore: 255" in classes
    assert generated.objects == {"cell": 2, "nucleus": 2, "unused": 0}
    assert any("unused" in w for w in generated.warnings)


def test_coco_problems_named_with_annotation_ids(tmp_path, capsys):
    mask_utils = pytest.importorskip("pycocotools.mask")
    path = make_coco(tmp_path / "coco", mask_utils)
    data = json.loads(path.read_text())
    data["images"].append({"id": 1, "file_name": "dup.png", "width": SIZE, "height": SIZE})
    data["images"].append({"id": 8, "file_name": "gone.png", "width": SIZE, "height": SIZE})
    data["annotations"] += [
        {"id": 30, "image_id": 2, "category_id": 99, "iscrowd": 0, "segmentation": [_square(0, 0, 4, 4)]},
        {"id": 31, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 5, 5]]},
        {"id": 32, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": [_square(-3, 0, 40, 4)]},
    ]
    path.write_text(json.dumps(data))
    assert main(["doctor", "--data", str(path)]) == 2
    out = capsys.readouterr().out
    assert "format    COCO instances" in out
    assert "objects   cell 4, nucleus 2, unused 0" in out
    assert "image id 1 is used twice" in out
    assert "image id 8: file gone.png is missing" in out
    assert "annotation 30 has category id 99" in out
    assert "annotation 31: a polygon with fewer than 3 points" in out
    assert "annotation 32: polygon coordinates outside" in out
    assert "no object (unused)" in out


def test_coco_without_pycocotools_says_how_to_install(tmp_path, monkeypatch, capsys):
    import builtins

    (tmp_path / "images").mkdir()
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    real = builtins.__import__

    def no_pycocotools(name, *args, **kwargs):
        if name.startswith("pycocotools"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pycocotools)
    assert main(["doctor", "--data", str(path)]) == 2
    assert 'pip install "unetseg[coco]"' in capsys.readouterr().err

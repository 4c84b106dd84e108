"""Annotation formats read from --data: masks checked pixel for pixel, then doctor, train and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import slow_after
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


def _palette_png(path: Path, values: np.ndarray) -> None:
    from unetseg.data.formats.voc import voc_palette

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8)).convert("P")
    image.putpalette([c for rgb in voc_palette() for c in rgb])
    image.save(path)


def make_voc(root: Path) -> Path:
    """VOC2012 layout: person (15) and cat (8) squares with a void (255) border; 3 training ids, 1 validation id."""
    base = root / "VOCdevkit" / "VOC2012"
    for i, stem in enumerate(("2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000009")):
        _image(base / "JPEGImages" / f"{stem}.jpg", i)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[4 + i : 20 + i, 4:20] = 15
        mask[3 + i, 3:21] = 255  # the void border VOC draws around objects
        mask[24:30, 24:30] = 8
        _palette_png(base / "SegmentationClass" / f"{stem}.png", mask)
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n2007_000003\n")
    (sets / "val.txt").write_text("2007_000004\n")  # 2007_000009 is in no list: left out
    return root / "VOCdevkit"


def test_voc_palette_indices_void_and_split(tmp_path):
    generated = resolve(str(make_voc(tmp_path)), None, None, None)
    assert generated.format == "Pascal VOC"
    assert sorted(generated.folders) == ["train", "val"]
    train, val = generated.folders["train"], generated.folders["val"]
    assert sorted(p.stem for p in (train / "masks").iterdir()) == ["2007_000001", "2007_000002", "2007_000003"]
    assert [p.stem for p in (val / "masks").iterdir()] == ["2007_000004"]
    mask = _mask(val, "2007_000004")
    assert (mask == 15).sum() == 16 * 16 and (mask == 8).sum() == 36 and (mask == 255).sum() == 18
    classes = (train / "classes.yaml").read_text()
    assert "name: person" in classes and "value: 15" in classes and "ignore: 255" in classes


def make_cityscapes(root: Path) -> Path:
    """A training and a validation image; label ids road (7), car (26), building (11), unlabeled (0), bridge (15)."""
    for split, city, seed in (("train", "aachen", 0), ("val", "frankfurt", 1)):
        stem = f"{city}_000000_000019"
        _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed)
        ids = np.zeros((SIZE, SIZE), dtype=np.uint8)
        ids[16:, :] = 7
        ids[20:28, 4:12] = 26
        ids[:8, :] = 11
        ids[8:10, :] = 15
        path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(ids).save(path)
    return root


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    generated = resolve(str(make_cityscapes(tmp_path / "cs")), None, None, None)
    assert generated.format == "Cityscapes"
    mask = _mask(generated.folders["val"], "frankfurt_000000_000019")
    names = [c[0] for c in CLASSES]
    assert (mask == names.index("road")).sum() == 16 * SIZE - 64
    assert (mask == names.index("car")).sum() == 64
    assert (mask == names.index("building")).sum() == 8 * SIZE
    assert (mask == 255).sum() == 8 * SIZE  # unlabeled (0) and bridge (15) are not evaluated: ignored
    assert "score: all" in (generated.folders["train"] / "classes.yaml").read_text()


def test_generated_masks_are_reused_and_rebuilt_after_an_edit(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    first = resolve(str(root), None, None, None)
    again = resolve(str(root), None, None, None)
    assert first.folders == again.folders
    label = next((root / "gtFine" / "val").glob("*/*_labelIds.png"))
    Image.fromarray(np.full((SIZE, SIZE), 26, dtype=np.uint8)).save(label)
    edited = resolve(str(root), None, None, None)
    assert edited.folders["val"] != first.folders["val"]
    assert (_mask(edited.folders["val"], "frankfurt_000000_000019") == 13).all()  # car everywhere


@pytest.mark.parametrize("fmt", slow_after(["coco", "voc", "cityscapes", "labelme", "yolo", "cvat"]))
def test_train_one_epoch_then_evaluate(tmp_path, fmt, capsys):
    if fmt == "coco":
        data = make_coco(tmp_path / "coco", pytest.importorskip("pycocotools.mask"))
    else:
        makers = {"voc": make_voc, "cityscapes": make_cityscapes, "labelme": make_labelme, "yolo": make_yolo}
        makers["cvat"] = make_cvat
        data = makers[fmt](tmp_path / fmt)
    run = tmp_path / "run"
    args = ["--data", str(data), "-e", "1", "-b", "2", "--width", "4", "--out", str(run), "--no-plan", "--quiet"]
    assert main(["train", *args]) == 0
    assert main(["doctor", "--data", str(data)]) == 0
    scores = tmp_path / "scores.json"
    assert (
        main(["evaluate", "-m", str(run / "checkpoints" / "last.pt"), "--data", str(data), "--json", str(scores)]) == 0
    )
    report = json.loads(scores.read_text())
    # formats with a validation split (VOC, Cityscapes, YOLO) are scored on it; the others on every image
    assert report["images"] == {"coco": 3, "voc": 1, "cityscapes": 1, "labelme": 3, "yolo": 1, "cvat": 2}[fmt]
    names = [c["name"] for c in report["classes"]]
    assert {"coco": "nucleus", "voc": "person", "cityscapes": "car"}.get(fmt, "dog") in names


def test_convert_to_folder_and_back_to_coco(tmp_path, capsys):
    mask_utils = pytest.importorskip("pycocotools.mask")
    source = make_coco(tmp_path / "coco", mask_utils)
    folder, back = tmp_path / "folder", tmp_path / "back"
    assert main(["convert", "--data", str(source), "-o", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["classes.yaml", "imgs", "masks"]
    assert not any(p.is_symlink() for p in (folder / "imgs").iterdir())  # copies: the folder stands alone
    for stem, image_id in (("a", 1), ("b", 2), ("c", 5)):
        assert np.array_equal(_mask(folder, stem), expected_coco(source, image_id))
    assert main(["convert", "--data", str(folder), "-o", str(back), "--format", "coco"]) == 0
    again = resolve(str(back / "annotations.json"), None, None, None)
    for stem in "abc":  # the round trip keeps every pixel, the ignored ones (crowd) too
        assert np.array_equal(_mask(again.folders["train"], stem), _mask(folder, stem))
    capsys.readouterr()
    assert main(["convert", "--data", str(source), "-o", str(folder)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", "--data", str(source), "-o", str(folder), "--overwrite"]) == 0
    assert main(["convert", "--data", str(folder), "-o", str(tmp_path / "x")]) == 2
    assert "already a folder of images and masks" in capsys.readouterr().err


def test_convert_refuses_to_write_over_its_source(tmp_path, capsys):
    root = make_voc(tmp_path / "voc")
    assert main(["convert", "--data", str(root), "-o", str(root), "--overwrite"]) == 2
    assert "holds the dataset being converted" in capsys.readouterr().err
    assert (root / "VOC2012" / "JPEGImages").is_dir()


def make_labelme(root: Path) -> Path:
    """a.json: a polygon, a rectangle, a circle, a 10-pixel line over it and a point; b.json embeds its image."""
    import base64
    import io

    root.mkdir(parents=True)
    shapes = [
        {"label": "cat", "points": [[4, 4], [12, 4], [12, 12], [4, 12]], "shape_type": "polygon", "group_id": None},
        {"label": "dog", "points": [[28, 10], [20, 2]], "shape_type": "rectangle", "group_id": None},
        {"label": "cat", "points": [[24, 24], [24, 28]], "shape_type": "circle", "group_id": 1},
        {"label": "cat", "points": [[16, 16], [18, 16], [18, 18]], "shape_type": "polygon", "group_id": 1},
        {"label": "dog", "points": [[0, 27], [31, 27]], "shape_type": "line", "group_id": None},
        {"label": "dog", "points": [[2, 2]], "shape_type": "point", "group_id": None},
    ]
    for i, stem in enumerate("ac"):
        _image(root / f"{stem}.png", i)
        doc = {"shapes": shapes, "imagePath": f"{stem}.png", "imageData": None, "imageHeight": SIZE, "imageWidth": SIZE}
        (root / f"{stem}.json").write_text(json.dumps(doc))
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)).save(buffer, format="PNG")
    embedded = {
        "shapes": shapes[:1],
        "imagePath": "gone.png",
        "imageData": base64.b64encode(buffer.getvalue()).decode(),
    }
    (root / "b.json").write_text(json.dumps(embedded))
    return root


def test_labelme_shapes(tmp_path):
    generated = resolve(str(make_labelme(tmp_path / "lm")), None, None, None)
    assert generated.format == "LabelMe"
    folder = generated.folders["train"]
    mask = _mask(folder, "a")  # background 0, cat 1, dog 2 (sorted labels)
    assert (mask[:20, :16] == 1).sum() == 81  # the polygon's 9x9 pixels, edges included as LabelMe draws them
    assert (mask[:20, 16:] == 2).sum() == 81  # the rectangle, its corners given in any order
    assert mask[24, 24] == 2 and mask[20, 24] == 1  # the circle, under the later 10-pixel line (rows 23-32)
    assert (mask[23:, :] == 2).all() and (mask[:23, :] != 2).sum() == SIZE * 23 - 81
    assert mask[2, 2] == 0  # the point marks no area
    assert generated.objects == {"cat": 2 + 2 + 1, "dog": 2 + 2}  # a, c, b; in a and c the circle and the small
    # polygon share group 1: one object each
    assert any("point shapes" in n for n in generated.notes)
    embedded = np.array(Image.open(folder / "imgs" / "b.png"))
    assert (embedded == 90).all() and (_mask(folder, "b") == 1).sum() == 81


def make_yolo(root: Path) -> Path:
    """data.yaml with two names; a cat square in training, a dog triangle over it in validation."""
    square = "0.125 0.125 0.375 0.125 0.375 0.375 0.125 0.375"  # pixels 4..12
    for split, stems in (("train", ["t1", "t2", "t3"]), ("val", ["v1"])):
        for i, stem in enumerate(stems):
            _image(root / "images" / split / f"{stem}.jpg", i)
            label = root / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"0 {square}\n1 0.25 0.25 0.75 0.25 0.75 0.75\n" if stem != "t3" else "")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    return root


def test_yolo_polygons_names_and_split(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    generated = resolve(str(root / "data.yaml"), None, None, None)
    assert generated.format == "YOLO segmentation" and sorted(generated.folders) == ["train", "val"]
    mask = _mask(generated.folders["val"], "val__v1")
    assert (mask == 1).sum() == 81 - (mask[8:13, 8:13] == 2).sum()  # the dog triangle (later) on top
    assert mask[10, 20] == 2 and mask[5, 5] == 1 and mask[30, 30] == 0
    assert not _mask(generated.folders["train"], "train__t3").any()  # an empty label file: all background
    assert "name: dog" in (generated.folders["train"] / "classes.yaml").read_text()
    (root / "labels" / "train" / "t1.txt").write_text("5 0.1 0.1 0.2 0.1 0.2 0.2\n")
    assert any("line 1 has class 5" in p for p in resolve(str(root), None, None, None).problems)


def make_cvat(root: Path) -> Path:
    """annotations.xml: a box under a polygon of higher z_order, a mask RLE, a polyline and points."""
    for i, name in enumerate(("a.png", "b.png")):
        _image(root / "images" / name, i)
    rle = "1, 2, 2, 2, 2, 2, 1"  # a 3x4 box: 0 1 1 0 / 0 1 1 0 / 0 1 1 0 (starting with one zero)
    (root / "annotations.xml").write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>cat</name><color>#ff0000</color></label>
    <label><name>dog</name><color>#00ff00</color></label>
  </labels></task></meta>
  <image id="0" name="a.png" width="{SIZE}" height="{SIZE}">
    <polygon label="dog" occluded="1" points="8,8;16,8;16,16;8,16" z_order="1"/>
    <box label="cat" occluded="0" xtl="4" ytl="4" xbr="12" ybr="12" z_order="0"/>
    <mask label="dog" occluded="0" rle="{rle}" left="20" top="20" width="4" height="3" z_order="0"/>
    <points label="cat" points="1,1" z_order="0"/>
  </image>
  <image id="1" name="b.png" width="{SIZE}" height="{SIZE}">
    <polyline label="cat" points="0,27;31,27" z_order="0"/>
  </image>
</annotations>
""")
    return root


def test_cvat_shapes_z_order_and_mask_rle(tmp_path):
    generated = resolve(str(make_cvat(tmp_path / "cvat")), None, None, None)
    assert generated.format == "CVAT for images 1.1"
    a, b = (_mask(generated.folders["train"], s) for s in "ab")
    assert (a == 1).sum() == 81 - 25  # the box (9x9), less the corner the polygon of higher z_order covers
    assert (a[:19, :19] == 2).sum() == 81 and a[10, 10] == 2  # the polygon, drawn on top though listed first
    assert (a[19:, 19:] == 2).sum() == 6 and a[20, 20] == 0 and a[20, 21] == 2  # the mask's run lengths
    assert (b[23:, :] == 1).all() and not b[:23].any()  # a polyline 10 pixels wide
    assert generated.objects == {"cat": 2, "dog": 2}
    assert any("occluded" in n for n in generated.notes) and any("points" in n for n in generated.notes)


def test_cvat_segmentation_mask_export_uses_labelmap_colours(tmp_path):
    base = tmp_path / "cvat-masks"
    _image(base / "JPEGImages" / "x.jpg", 0)
    (base / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\n")
    mask = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    mask[:10] = (128, 64, 128)
    (base / "SegmentationClass").mkdir()
    Image.fromarray(mask).save(base / "SegmentationClass" / "x.png")
    generated = resolve(str(base), None, None, None)
    assert generated.format == "CVAT Segmentation mask 1.1"
    drawn = _mask(generated.folders["train"], "x")
    assert (drawn == 1).sum() == 10 * SIZE and (drawn == 0).sum() == 22 * SIZE
    mask[0, 0] = (1, 2, 3)
    Image.fromarray(mask).save(base / "SegmentationClass" / "x.png")
    assert any("#010203" in p for p in resolve(str(base), None, None, None).problems)


def test_coco_train_and_val_files_split_and_images_elsewhere(tmp_path, capsys):
    mask_utils = pytest.importorskip("pycocotools.mask")
    path = make_coco(tmp_path / "coco", mask_utils)
    data = json.loads(path.read_text())
    folder = tmp_path / "split"
    (folder / "annotations").mkdir(parents=True)
    train = data | {"images": data["images"][:2], "annotations": [a for a in data["annotations"] if a["image_id"] < 5]}
    val = data | {"images": data["images"][2:], "annotations": []}
    (folder / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
    (folder / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    generated = resolve(str(folder), str(tmp_path / "coco" / "images"), None, None)
    assert sorted(generated.folders) == ["train", "val"]
    assert sorted(p.stem for p in (generated.folders["val"] / "masks").iterdir()) == ["c"]
    # --data FILE --images DIR on the command line, images in a folder of their own
    assert main(["doctor", "--data", str(path), "--images", str(tmp_path / "coco" / "images")]) == 0
    assert "3 pairs ready" in capsys.readouterr().out


def test_cvat_rotated_box_and_ellipse_labelme_mask_coco_without_sizes(tmp_path):
    import base64
    import io

    root = make_cvat(tmp_path / "cvat")
    text = (root / "annotations.xml").read_text()
    extra = (
        '<box label="cat" xtl="4" ytl="24" xbr="12" ybr="28" rotation="90" z_order="5"/>'
        '<ellipse label="cat" cx="26" cy="6" rx="2" ry="3" z_order="5"/>'
    )
    (root / "annotations.xml").write_text(text.replace('<polyline label="cat"', extra + '<polyline label="cat"'))
    b = _mask(resolve(str(root), None, None, None).folders["train"], "b")
    # the box turned upright: x 6..10, y 22..30 (row 22 is above the polyline of rows 23..31)
    assert b[22, 6:11].tolist() == [1] * 5 and b[22, 5] == 0 and b[22, 11] == 0 and b[21, 8] == 0
    assert b[6, 26] == 1 and b[2, 26] == 0 and (b[:12, 20:] == 1).sum() > 12  # the ellipse

    lm = make_labelme(tmp_path / "lm")
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 3), 255, dtype=np.uint8)).save(buffer, format="PNG")
    shape = {"label": "dog", "points": [[10, 10], [12, 11]], "shape_type": "mask"}
    doc = json.loads((lm / "b.json").read_text())
    doc["shapes"] = [shape | {"mask": base64.b64encode(buffer.getvalue()).decode()}]
    (lm / "b.json").write_text(json.dumps(doc))
    mask = _mask(resolve(str(lm), None, None, None).folders["train"], "b")
    assert (mask == 2).sum() == 6 and (mask[10:12, 10:13] == 2).all()

    coco = make_coco(tmp_path / "coco", pytest.importorskip("pycocotools.mask"))
    data = json.loads(coco.read_text())
    for image in data["images"]:
        del image["width"], image["height"]  # read from the image files instead
    coco.write_text(json.dumps(data))
    generated = resolve(str(coco), None, None, None)
    assert not generated.problems
    assert (_mask(generated.folders["train"], "a") == 2).sum() == 100 - 16

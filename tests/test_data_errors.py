"""Bad input: each case exits with status 2 and one message naming the file and the fix, never a traceback."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, save_array
from unetseg.cli import main

TINY = ["--width", "4", "-e", "1", "-b", "2", "--workers", "1", "--quiet"]


def text_named_png(root: Path, monkeypatch) -> list[str]:
    (root / "imgs" / "img000.png").write_text("these are notes, not a picture")
    return ["imgs/img000.png: cannot read this file as an image", "replace or remove it"]


def truncated_jpeg(root: Path, monkeypatch) -> list[str]:
    buffer = io.BytesIO()
    Image.open(root / "imgs" / "img000.png").convert("RGB").save(buffer, "JPEG")
    (root / "imgs" / "img000.png").unlink()
    (root / "imgs" / "img000.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return ["imgs/img000.jpg: cannot read this file as an image (the file is truncated", "replace or remove it"]


def zero_byte_mask(root: Path, monkeypatch) -> list[str]:
    (root / "masks" / "img001.png").write_bytes(b"")
    return ["masks/img001.png: file is empty (0 bytes)", "replace or remove it"]


def image_without_mask(root: Path, monkeypatch) -> list[str]:
    (root / "masks" / "img002.png").unlink()
    return ["imgs/img002.png: no mask for this image", "add the mask or remove the image"]


def mask_without_image(root: Path, monkeypatch) -> list[str]:
    (root / "masks" / "stray.png").write_bytes((root / "masks" / "img000.png").read_bytes())
    return ["masks/stray.png: no image for this mask", "add the image or remove the mask"]


def values_outside_class_map(root: Path, monkeypatch) -> list[str]:
    (root / "classes.yaml").write_text("classes:\n  background: 0\n  cell: 255\n")
    mask = np.asarray(Image.open(root / "masks" / "img001.png")).copy()
    mask[:2, :2] = 77
    Image.fromarray(mask).save(root / "masks" / "img001.png")
    return ["masks/img001.png: mask values {77} are not in the class map {0, 255}", "fix the mask"]


def size_mismatch(root: Path, monkeypatch) -> list[str]:
    mask = Image.open(root / "masks" / "img000.png")
    mask.resize((64, 64), Image.NEAREST).save(root / "masks" / "img000.png")
    return ["mask is 64x64 but its image img000.png is 32x32", "pass --resize-to-mask"]


def decompression_bomb(root: Path, monkeypatch) -> list[str]:
    Image.new("L", (200, 200)).save(root / "imgs" / "img001.png")
    Image.new("L", (200, 200)).save(root / "masks" / "img001.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 is beyond twice the limit; 32 x 32 is not
    return ["imgs/img001.png: image is larger than Pillow's decompression-bomb safety limit", "MAX_IMAGE_PIXELS"]


def decompression_bomb_tiff(root: Path, monkeypatch) -> list[str]:
    (root / "imgs" / "img001.png").unlink()
    save_array(root / "imgs" / "img001.tif", np.zeros((200, 200), dtype=np.uint16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # tifffile does not check: unetseg applies the same guard
    return ["imgs/img001.tif: image is larger than Pillow's decompression-bomb safety limit", "downscale it"]


def unreadable_permission(root: Path, monkeypatch) -> list[str]:
    # Tests run as root, which ignores file modes: make the open itself fail as it does for other users.
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("img001.png") and "imgs" in str(file):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    return ["imgs/img001.png: permission denied", "chmod a+r"]


def name_not_utf8(root: Path, monkeypatch) -> list[str]:
    for folder in ("imgs", "masks"):
        content = (root / folder / "img002.png").read_bytes()
        (root / folder / "img002.png").unlink()
        with open(os.path.join(os.fsencode(root / folder), b"caf\xe9.png"), "wb") as handle:
            handle.write(content)
    return ["imgs/caf\\xe9.png: file name is not valid UTF-8", "rename it"]


CASES = [
    text_named_png,
    truncated_jpeg,
    zero_byte_mask,
    image_without_mask,
    mask_without_image,
    values_outside_class_map,
    size_mismatch,
    decompression_bomb,
    decompression_bomb_tiff,
    unreadable_permission,
    name_not_utf8,
]


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_bad_dataset_exits_2_naming_file_and_fix(tmp_path, monkeypatch, capsys, breaker):
    root = make_dataset(tmp_path / "data", count=3, size=(32, 32))
    expected = breaker(root, monkeypatch)
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for needle in expected:
        assert needle in err, err
    assert "unetseg doctor --data" in err  # where to get the whole report


def test_missing_path_and_empty_folder(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r1"), *TINY]) == 2
    assert "nowhere: folder does not exist; check the path" in capsys.readouterr().err
    (tmp_path / "empty" / "imgs").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), *TINY]) == 2
    assert "imgs: no image files found" in capsys.readouterr().err
    assert main(["doctor", "--data", str(tmp_path / "nowhere")]) == 2
    assert "folder does not exist" in capsys.readouterr().err


def test_resize_to_mask_fixes_a_same_aspect_mismatch_only(tmp_path, capsys):
    from unetseg.data.prepare import prepare

    root = make_dataset(tmp_path / "data", count=3, size=(32, 24))
    for path in (root / "masks").iterdir():
        Image.open(path).resize((64, 48), Image.NEAREST).save(path)
    data = prepare(str(root), None, None, None, None, None, 0.5, 0, seed=0, workers=1, resize_to_mask=True)
    assert data.train[0].image.shape[:2] == (24, 32) and data.train[0].mask.shape == (24, 32)
    assert any("resized to their mask's size" in n for n in data.notes)
    Image.open(root / "masks" / "img000.png").resize((64, 40), Image.NEAREST).save(root / "masks" / "img000.png")
    code = main(["train", "--data", str(root), "--resize-to-mask", "--out", str(tmp_path / "r"), *TINY])
    assert code == 2 and "aspect ratios differ" in capsys.readouterr().err


def test_evaluate_names_every_mask_with_values_the_checkpoint_does_not_know(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "-v", "25", *TINY]) == 0
    other = make_dataset(tmp_path / "other", count=3, size=(32, 32), values=(0, 77, 255))
    best = str(tmp_path / "run" / "checkpoints" / "best.pt")
    assert main(["evaluate", "-m", best, "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "3 dataset problems" in err and "mask values {77} are not in the class map {0, 255}" in err
    assert all(f"masks/img00{i}.png" in err for i in range(3))

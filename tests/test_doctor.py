"""``unetseg doctor`` reports every problem of a broken dataset in one run, and ``train`` refuses with the same."""

from __future__ import annotations

import builtins
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_dataset
from unetseg.cli import main

TINY = ["--width", "4", "-e", "1", "-b", "2", "--workers", "1", "--quiet"]


def break_everything(root: Path, monkeypatch) -> tuple[list[str], list[str]]:
    """Damage a 16-pair dataset in every way the doctor knows; returns expected problems and warnings."""
    imgs, masks = root / "imgs", root / "masks"
    (root / "classes.yaml").write_text("classes:\n  background: 0\n  cell: 255\n")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(masks / "img004.png")  # all background
    Image.open(masks / "img005.png").save(masks / "img005.jpg", quality=60)  # JPEG mask: noise is snapped
    (masks / "img005.png").unlink()
    black = (np.asarray(Image.open(masks / "img006.png")) > 0).astype(np.uint8)
    Image.fromarray(black).save(masks / "img006.png")  # 0/1 values: looks black, and 1 is not in the class map
    shutil.copy(imgs / "img000.png", imgs / "img007.png")  # duplicate image
    (masks / "img008.png").unlink()  # image without mask
    shutil.copy(masks / "img000.png", masks / "ghost_mask.png")  # mask without image
    (imgs / "img009.png").write_text("not a picture")  # text named .png
    buffer = io.BytesIO()
    Image.open(imgs / "img010.png").save(buffer, "JPEG")
    (imgs / "img010.png").unlink()
    (imgs / "img010.jpg").write_bytes(buffer.getvalue()[:200])  # truncated JPEG
    (masks / "img011.png").write_bytes(b"")  # zero-byte mask
    Image.open(masks / "img012.png").resize((64, 64), Image.NEAREST).save(masks / "img012.png")  # size mismatch
    Image.new("L", (200, 200)).save(imgs / "img013.png")  # decompression bomb under the limit set below
    Image.new("L", (200, 200)).save(masks / "img013.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # unreadable for a non-root user; root ignores file modes
        if str(file).endswith("imgs/img014.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    for folder in (imgs, masks):
        content = (folder / "img015.png").read_bytes()
        (folder / "img015.png").unlink()
        with real_open(os.path.join(os.fsencode(folder), b"r\xe9sum\xe9.png"), "wb") as handle:
            handle.write(content)
    problems = [
        "img006.png: mask values {1} are not in the class map {0, 255}",
        "img008.png: no mask for this image",
        "ghost_mask.png: no image for this mask",
        "img009.png: cannot read this file as an image",
        "img010.jpg: cannot read this file as an image (the file is truncated",
        "img011.png: file is empty (0 bytes)",
        "img012.png: mask is 64x64 but its image img012.png is 32x32",
        "img013.png: image is larger than Pillow's decompression-bomb safety limit",
        "img014.png: permission denied",
        "r\\xe9sum\\xe9.png: file name is not valid UTF-8",
    ]
    warnings = [
        "1 masks are all background (no pixel of any other class) (e.g. img004.png)",
        "1 masks hold only the values 0 and 1, so they look black in image viewers (e.g. img006.png)",
        "1 masks carry compression noise (values between the classes), snapped to the nearest class (e.g. img005.jpg)",
        "1 images are exact copies of another",
    ]
    return problems, warnings


def test_doctor_reports_every_problem_in_one_run_and_train_refuses_the_same(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", count=16, size=(32, 32))
    problems, warnings = break_everything(root, monkeypatch)
    assert main(["doctor", "--data", str(root)]) == 2
    report = capsys.readouterr().out
    for needle in problems:
        assert f"problem   {root}" in report and needle in report, needle
    for needle in warnings:
        assert needle in report, needle
    assert report.count("problem   ") == len(problems) + 2  # the bomb's mask and the renamed mask are named too
    assert "verdict   cannot train: fix the 12 problem(s) above" in report
    assert "suggested unetseg train --data" in report and "--resize-to-mask" in report
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "12 dataset problems:" in err and "Traceback" not in err
    for line in report.splitlines():
        if line.startswith("problem   "):
            assert line.removeprefix("problem   ") in err  # the very same messages


def test_doctor_summarises_a_healthy_dataset(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(40, 30), mask_suffix="_mask")
    Image.open(root / "imgs" / "img000.png").convert("RGB").save(root / "imgs" / "img000.png")
    (root / "imgs" / ".DS_Store").write_text("")
    (root / "imgs" / "notes.txt").write_text("")
    (root / "masks" / "old").mkdir()
    expected = np.zeros(2, dtype=np.int64)
    for path in (root / "masks").glob("*.png"):
        mask = np.asarray(Image.open(path))
        expected += [(mask == 0).sum(), (mask == 255).sum()]
    assert main(["doctor", "--data", str(root)]) == 0
    report = capsys.readouterr().out
    assert "4 images in" in report and "4 masks in" in report and "4 pairs ready, 0 files unreadable" in report
    assert "sizes     40x30 (4)" in report
    assert "channels  grey 8-bit (3), RGB 8-bit (1)" in report
    assert "masks     PNG values (4)" in report
    share = 100 * expected / expected.sum()
    assert re.search(rf"0 background\s+value 0\s+{share[0]:.2f}%\s+4 images", report)
    assert re.search(rf"1 class1\s+value 255\s+{share[1]:.2f}%\s+4 images", report)
    assert "ignored 1 hidden entries (.DS_Store)" in report
    assert "ignored 1 files that are not images (notes.txt)" in report
    assert "ignored 1 sub-folders (old)" in report
    assert "verdict   ready to train" in report
    assert f"suggested unetseg train --data {root}" in report


def test_doctor_warnings_alone_still_exit_0(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    shutil.copy(root / "imgs" / "img000.png", root / "imgs" / "img003.png")
    assert main(["doctor", "--data", str(root)]) == 0
    report = capsys.readouterr().out
    assert "warning   1 images are exact copies of another" in report and "ready to train (1 warning(s))" in report


def test_masks_once_saved_as_jpeg_are_a_problem_until_a_class_count_allows_snapping(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    for path in (root / "masks").iterdir():
        buffer = io.BytesIO()
        Image.open(path).save(buffer, "JPEG", quality=70)
        Image.open(buffer).save(path)  # a PNG holding JPEG noise
    assert main(["doctor", "--data", str(root)]) == 2
    report = capsys.readouterr().out
    assert "like JPEG compression noise" in report and "pass -c 2" in report
    assert f"suggested unetseg train --data {root} -c 2" in report
    assert main(["doctor", "--data", str(root), "-c", "2"]) == 0
    report = capsys.readouterr().out
    assert "mask values look like JPEG compression noise: snapped to the 2 class values {0, 255}" in report
    assert "4 masks carry compression noise" in report


def test_colour_and_grey_masks_together_are_one_problem(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=3, size=(32, 32))
    grey = np.asarray(Image.open(root / "masks" / "img000.png"))
    Image.fromarray(np.stack([grey, np.zeros_like(grey), np.zeros_like(grey)], axis=2)).save(
        root / "masks" / "img000.png"
    )
    assert main(["doctor", "--data", str(root)]) == 2
    report = capsys.readouterr().out
    assert "some masks are colour (RGB), e.g. " in report and "img000.png" in report and "one encoding" in report


def test_doctor_without_data_checks_the_bundled_sample(capsys):
    assert main(["doctor", "--no-cache"]) == 0
    report = capsys.readouterr().out
    assert "nuclei-dsb2018" in report and "65 pairs ready" in report and "verdict   ready to train" in report

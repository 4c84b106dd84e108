"""Every supported image and mask encoding trains end to end, and the checkpoint records what was read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_pair, save_array
from unetseg.cli import main

TINY = ["--width", "4", "-e", "1", "-b", "2", "--workers", "1", "--val-rounds", "1", "-v", "25", "--quiet"]
RED = (255, 0, 0)


def grey(image: np.ndarray, i: int) -> np.ndarray:
    return image


def rgb(image: np.ndarray, i: int) -> np.ndarray:
    return np.stack([image, 255 - image, image // 2], axis=2)


def rgba(image: np.ndarray, i: int) -> np.ndarray:
    return np.concatenate([rgb(image, i), (image // 2 + 100)[:, :, None]], axis=2)  # alpha carries data


def grey16(image: np.ndarray, i: int) -> np.ndarray:
    return image.astype(np.uint16) * 200  # beyond 8 bits, not the full 16


def pages(image: np.ndarray, i: int) -> np.ndarray:
    return np.stack([image, image // 2, 255 - image])  # (3, H, W): a multi-page TIFF


def floats(image: np.ndarray, i: int) -> np.ndarray:
    return rgb(image, i).astype(np.float32) / 255


def mixed(image: np.ndarray, i: int) -> np.ndarray:
    return image if i % 2 else rgb(image, i)


def palette(mask: np.ndarray) -> Image.Image:
    picture = Image.fromarray((mask > 0).astype(np.uint8), "P")
    picture.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    return picture


def colour(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[mask > 0] = RED
    return out


def colour_with_ignore(mask: np.ndarray) -> np.ndarray:
    out = colour(mask)
    out[0, :] = (255, 255, 255)  # an unlabelled border row
    return out


CASES = {
    # name: (image suffix, image fn, mask name suffix, mask fn, expected mask values, expected channels)
    "png-grey+png-0-255": (".png", grey, ".png", lambda m: m, [0, 255], 1),
    "jpeg-rgb+gif-carvana": (".jpg", rgb, "_mask.gif", lambda m: m, [0, 1], 3),
    "bmp-rgb+palette-png": (".bmp", rgb, ".png", palette, [0, 1], 3),
    "tiff16+tiff16-index": (".tif", grey16, ".tif", lambda m: (m > 0).astype(np.uint16) * 1000, [0, 1000], 1),
    "multipage-tiff+npy-0-1": (".tiff", pages, ".npy", lambda m: (m > 0).astype(np.int64), [0, 1], 3),
    "npy-float+rgb-colour": (".npy", floats, ".png", colour, [[0, 0, 0], list(RED)], 3),
    "gif-image+jpeg-mask": (".gif", grey, ".jpg", lambda m: m, [0, 255], 3),
    "png16+png16-mask": (".png", grey16, ".png", lambda m: (m > 0).astype(np.uint16) * 300, [0, 300], 1),
    "rgba+colour-classes-file": (".png", rgba, ".png", colour_with_ignore, [[0, 0, 0], list(RED)], 4),
    "mixed-grey-rgb+png-0-1": (".png", mixed, ".png", lambda m: (m > 0).astype(np.uint8), [0, 1], 3),
}


def write_case(root: Path, case: str, count: int = 4) -> Path:
    image_ext, image_fn, mask_name, mask_fn, _, _ = CASES[case]
    rng = np.random.default_rng(1)
    for i in range(count):
        image, mask = draw_pair(rng, (32, 32), (0, 255))
        save_array(root / "imgs" / f"im{i}{image_ext}", image_fn(image, i))
        out = mask_fn(mask)
        target = root / "masks" / f"im{i}{mask_name}"
        target.parent.mkdir(exist_ok=True)
        out.save(target) if isinstance(out, Image.Image) else save_array(target, out)
    if case == "rgba+colour-classes-file":
        (root / "classes.yaml").write_text(
            "classes:\n  - {name: background, color: [0, 0, 0]}\n  - {name: cell, color: '#ff0000'}\n"
            "ignore: [255, 255, 255]\n"
        )
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_format_trains_end_to_end(tmp_path, case, capsys):
    data = write_case(tmp_path / "data", case)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 0, capsys.readouterr().err
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["class_map"]["values"] == CASES[case][4]
    assert ckpt["channels"] == CASES[case][5]
    if case.startswith("tiff16") or case.startswith("png16"):
        assert 255 < ckpt["norm"]["scale"] < 65535  # the real range of the data (max ~130 x 200), not 255 or 65535
    if case == "gif-image+jpeg-mask":
        assert ckpt["class_map"]["snap"]
    if case == "rgba+colour-classes-file":
        assert ckpt["class_map"]["names"] == ["background", "cell"]
        assert ckpt["class_map"]["ignore"] == [255, 255, 255]


def test_ignore_value_becomes_index_255_and_classes_file_names_values(tmp_path):
    from unetseg.data.prepare import prepare

    data = write_case(tmp_path / "data", "png-grey+png-0-255")
    for path in (data / "masks").iterdir():
        mask = np.asarray(Image.open(path)).copy()
        mask[:, 0] = 128
        Image.fromarray(mask).save(path)
    (data / "classes.yaml").write_text("classes:\n  background: 0\n  cell: 255\nignore: 128\n")
    dataset = prepare(str(data), None, None, None, None, None, 1.0, 0, seed=0, workers=1)
    assert dataset.class_map.names == ["background", "cell"]
    mask = dataset.train[0].mask
    assert (mask[:, 0] == 255).all() and set(np.unique(mask[:, 1:]).tolist()) <= {0, 1}


def test_explicit_classes_file_and_its_mistakes(tmp_path, capsys):
    data = write_case(tmp_path / "data", "png-grey+png-0-255")
    spec = tmp_path / "my-classes.yaml"
    spec.write_text("classes:\n  - {name: background, value: 0}\n  - {name: cell, value: 255, color: '#00ff00'}\n")
    from unetseg.data.prepare import prepare

    dataset = prepare(str(data), None, None, None, None, None, 1.0, 0, seed=0, workers=1, classes_file=str(spec))
    assert dataset.class_map.colors[1] == [0, 255, 0]
    spec.write_text("classes:\n  background: 0\n")
    assert main(["train", "--data", str(data), "--classes-file", str(spec), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "at least two classes" in capsys.readouterr().err
    code = main(["train", "--data", str(data), "--classes-file", str(tmp_path / "none.yaml"), *TINY])
    assert code == 2 and "--classes-file" in capsys.readouterr().err

"""``unetseg predict`` never loses a file: inputs, ground truth and foreign files are kept, names stay inside -o and
never collide, a full or read-only disk leaves no partial file, palette masks come back in their palette, and
Pytorch-UNet's predict flags keep working."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset
from test_predict import blobs
from test_predict_cli import read_table, save_checkpoint
from unetseg.cli import main
from unetseg.data.classmap import ClassMap
from unetseg.predict import outputs
from unetseg.predict.outputs import MANIFEST


@pytest.fixture
def data(tmp_path):
    """``data/imgs`` with three images and ``data/masks`` with their ground truth, and a checkpoint."""
    root = tmp_path / "data"
    for folder in ("imgs", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(blobs(48, 32, seed=i)).save(root / "imgs" / f"x{i}.png")
        Image.fromarray((blobs(48, 32, seed=i) > 100).astype(np.uint8) * 255).save(root / "masks" / f"x{i}.png")
    save_checkpoint(tmp_path / "m.pt")
    return root


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def predict(tmp_path, *args):
    return main(["predict", "-m", str(tmp_path / "m.pt"), "--quiet", "--device", "cpu", *args])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-i", "{d}/imgs", "-o", "{d}/imgs"], "is one of the inputs"),
        (["-i", "{d}/imgs/x0.png", "-o", "{d}/imgs/x0.png"], "is one of the inputs"),
        (["-i", "{d}/imgs/x0.png", "-o", "{d}/imgs/link.png"], "is one of the inputs"),  # a link to the input
        (["-i", "{d}/imgs", "-o", "{d}/imgs", "--overwrite"], "is one of the inputs"),  # never, even so
        (["-i", "{d}/imgs", "-o", "{d}/masks"], "was not written by unetseg predict"),  # the ground truth
        (["-i", "{d}/imgs/x1.png", "-o", "{d}/masks/x1.png"], "was not written by unetseg predict"),
        (["-i", "{d}/imgs", "-o", "{d}/masks/x1.png"], "names one file, but -i gives"),
        (["-i", "{d}/imgs", "-o", "{d}/masks/x0.png/deeper"], "a file is in the way"),
        (["-i", "{d}/imgs/x0.png", "-o", "{d}/../m.pt"], "a file is in the way"),  # never over the model
        (["-i", "{d}/imgs/x0.png", "-o", "{d}/hard.png"], "is one of the inputs"),  # a hard link to it
    ],
)
def test_inputs_and_files_predict_did_not_write_are_never_overwritten(data, tmp_path, capsys, args, needle):
    (data / "imgs" / "link.png").symlink_to(data / "imgs" / "x0.png")
    (data / "hard.png").hardlink_to(data / "imgs" / "x0.png")
    before = {name: snapshot(data / name) for name in ("imgs", "masks")}
    model = (tmp_path / "m.pt").read_bytes()
    assert predict(tmp_path, *[a.format(d=data) for a in args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert {name: snapshot(data / name) for name in ("imgs", "masks")} == before
    assert (tmp_path / "m.pt").read_bytes() == model


def test_overwrite_replaces_foreign_files_and_reruns_replace_their_own(data, tmp_path, capsys):
    assert predict(tmp_path, "-i", str(data / "imgs"), "-o", str(data / "masks"), "--overwrite") == 0
    assert set(json.loads((data / "masks" / MANIFEST).read_text())["files"]) == {
        "x0.png",
        "x1.png",
        "x2.png",
        "predictions.csv",
    }
    out = tmp_path / "out"
    assert predict(tmp_path, "-i", str(data / "imgs"), "-o", str(out)) == 0
    assert predict(tmp_path, "-i", str(data / "imgs"), "-o", str(out)) == 0  # its own files: replaced freely
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(out / "x1.png")  # a mask corrected by hand is kept
    assert predict(tmp_path, "-i", str(data / "imgs"), "-o", str(out)) == 2
    assert "x1.png already exists and was not written by unetseg predict" in capsys.readouterr().err
    assert not np.asarray(Image.open(out / "x1.png")).any()


def test_default_output_folder_and_own_outputs_are_never_read_back(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(data / "imgs")
    assert predict(tmp_path, "-i", ".") == 0
    assert sorted(p.name for p in (data / "imgs" / "predictions").iterdir()) == [
        MANIFEST,
        "predictions.csv",
        "x0.png",
        "x1.png",
        "x2.png",
    ]
    assert predict(tmp_path, "-i", ".", "predictions", "-o", str(tmp_path / "again")) == 0
    rows = read_table(tmp_path / "again" / "predictions.csv")
    assert [r["image"] for r in rows] == ["x0.png", "x1.png", "x2.png"]  # no mask of a mask
    assert predict(tmp_path, "-i", "predictions") == 2
    assert "every image found was written by unetseg predict" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["/../../x.png", "../x.png", "x/.png", "_mask.png", ".jpg", "png", ""])
def test_suffix_is_a_mask_file_type_only(data, tmp_path, capsys, suffix):
    assert predict(tmp_path, "-i", str(data / "imgs"), "-o", str(tmp_path / "out"), "--suffix", suffix) == 2
    assert "--suffix" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "names, extra",
    [
        (["a/x.png", "b/x.png"], []),  # one stem in two folders
        (["a/x.png", "a/x.tif"], []),  # one stem, two types
        (["a/x.png", "a/x_overlay.png"], ["--overlay"]),  # a mask and an overlay
        (["a/x.png", "a/x_probs.png"], ["--probs"]),
    ],
)
def test_output_names_never_collide(tmp_path, capsys, names, extra):
    save_checkpoint(tmp_path / "m.pt")
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(blobs(48, 32)).save(tmp_path / name)
    code = predict(tmp_path, "-i", *[str(tmp_path / n) for n in names], "-o", str(tmp_path / "out"), *extra)
    assert code == 2
    err = capsys.readouterr().err
    assert "would both be written" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_failing_disk_leaves_no_partial_file_and_exits_2(data, tmp_path, monkeypatch, capsys, code, words):
    real = outputs.write_atomic

    def failing(path, data):
        def half_then_fail(handle):
            handle.write(data[: len(data) // 2])
            raise OSError(code, "simulated")

        real(path, half_then_fail)

    monkeypatch.setattr(outputs, "write_atomic", failing)
    out = tmp_path / "out"
    args = ["-i", str(data / "imgs"), "-o", str(out), "--overlay", "--probs", "--workers", "2"]
    assert predict(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert words in err and str(out) in err and "Traceback" not in err
    assert list(out.iterdir()) == []  # no mask, overlay, probabilities, table or temporary file


def test_an_unwritable_output_folder_is_refused_before_any_work(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    assert predict(tmp_path, "-i", str(data / "imgs"), "-o", str(tmp_path / "ro")) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "ro") in err and "choose a folder you can write to" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def palette_run(tmp_path_factory):
    """A tiny model trained through the CLI on Carvana-style palette GIF masks (indices 0/1, black/white)."""
    root = make_dataset(tmp_path_factory.mktemp("carvana"), count=6, values=(0, 1), mask_suffix="_mask")
    palette = [0, 0, 0, 255, 255, 255] + [7] * (3 * 254)
    for png in sorted((root / "masks").glob("*.png")):
        mask = Image.fromarray(np.asarray(Image.open(png)), "L").convert("P")
        mask.putpalette(palette)
        mask.save(png.with_suffix(".gif"))
        png.unlink()
    run = root / "run"
    args = ["--data", str(root), "-e", "1", "--width", "8", "--no-plan", "--patch-size", "32", "-b", "2"]
    assert main(["train", *args, "--out", str(run), "--quiet", "--device", "cpu", "--no-cache"]) == 0
    return root, run / "checkpoints" / "last.pt"


def test_palette_masks_come_back_as_palette_pngs_in_the_training_palette(palette_run, tmp_path):
    root, ckpt = palette_run
    training = Image.open(next((root / "masks").glob("*.gif")))
    out = tmp_path / "out"
    assert main(["predict", "-m", str(ckpt), "-i", str(root / "imgs"), "-o", str(out), "--quiet"]) == 0
    mask = Image.open(out / "img000.png")
    assert mask.mode == "P"
    assert mask.getpalette() == training.getpalette()
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1}
    assert (
        main(["predict", "-m", str(ckpt), "-i", str(root / "imgs"), "-o", str(tmp_path / "i"), "--format", "index"])
        == 0
    )
    assert Image.open(tmp_path / "i" / "img000.png").mode == "L"  # --format still decides


def test_class_maps_saved_before_palettes_still_load():
    old = {"values": [0, 255], "names": ["background", "class1"], "colors": [[0, 0, 0], [230, 25, 75]]}
    assert ClassMap.from_dict(old).palette is None
    assert ClassMap.from_dict(ClassMap([0, 1], palette=[0, 0, 0, 9, 9, 9]).to_dict()).palette == [0, 0, 0, 9, 9, 9]


def test_pytorch_unet_flags(data, tmp_path):
    a, b = data / "imgs" / "x0.png", data / "imgs" / "x1.png"
    out = tmp_path / "out"
    assert predict(tmp_path, "-i", str(a), str(b), "-o", str(out / "a_mask.png"), str(out / "b_mask.png")) == 0
    assert {"a_mask.png", "b_mask.png"} <= {p.name for p in out.iterdir()}
    assert predict(tmp_path, "-i", str(a), "-o", str(tmp_path / "viz"), "-v", "-n") == 0
    assert sorted(p.name for p in (tmp_path / "viz").iterdir()) == [MANIFEST, "predictions.csv", "x0_overlay.png"]
    assert read_table(tmp_path / "viz" / "predictions.csv")[0]["mask"] == ""
    for flag, name in (("-t", "t"), ("--mask-threshold", "mt")):
        assert predict(tmp_path, "-i", str(a), "-o", str(tmp_path / name), flag, "0.3", "-c", "2", "--no-bilinear") == 0
    assert (tmp_path / "t" / "x0.png").read_bytes() == (tmp_path / "mt" / "x0.png").read_bytes()
    assert predict(tmp_path, "-i", str(a), "-o", str(tmp_path / "o"), "--overlay") == 0  # the old name still works
    assert (tmp_path / "o" / "x0_overlay.png").is_file()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["-c", "5"], ["-c/--classes 5", "2 classes"]),
        (["--bilinear"], ["--bilinear", "bilinear=True", "bilinear=False"]),
        (["-o", "{o}/a.png", "{o}/b.png", "{o}/c.png"], ["3 file names for 2 input images"]),
        (["-o", "{o}/a.png", "{o}/b.jpg"], ["masks are written as"]),
    ],
)
def test_pytorch_unet_flags_that_disagree_exit_2(data, tmp_path, capsys, args, needles):
    inputs = ["-i", str(data / "imgs" / "x0.png"), str(data / "imgs" / "x1.png")]
    args = [a.format(o=tmp_path / "o") for a in args]
    assert predict(tmp_path, *inputs, *args if args[0] == "-o" else ["-o", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles) and "Traceback" not in err
    assert not (tmp_path / "o").exists()

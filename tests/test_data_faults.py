"""Broken datasets, classes files and caches: each fails with one clear message (exit 2), or heals itself."""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unetseg.data.cache as cache_module
import unetseg.data.index as index_module
from conftest import make_dataset, slow_after
from unetseg.cli import main
from unetseg.data.classmap import ClassMap
from unetseg.tracking.charts import save_curves
from unetseg.tracking.plots import clean_label, save_gallery

TRAIN = ["-e", "1", "--max-steps", "1", "--width", "8", "--no-plan", "--patch-size", "32", "--workers", "1"]
TRAIN += ["--quiet"]
CLASSES = "classes:\n  background: 0\n  cell: 255\n"


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and everything printed; a traceback fails the test."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out + err


def unreadable(path: Path, monkeypatch) -> None:
    """``path`` cannot be opened: chmod 000, and refused in ``open`` too because root reads any file."""
    path.chmod(0)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def replace_by_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def classes_file(text: str | bytes):
    def write(root: Path, monkeypatch) -> None:
        data = text if isinstance(text, bytes) else text.encode()
        (root / "classes.yaml").write_bytes(data)

    return write


# name: (break the dataset in root, exit status, fragments every message must hold)
CASES = {
    "symlink loop named like an image": (
        lambda r, m: os.symlink("loop.png", r / "imgs" / "loop.png"),
        2,
        ["imgs/loop.png", "loops back on itself", "remove it"],
    ),
    "symlink loop without an image name is skipped": (lambda r, m: os.symlink("loop", r / "imgs" / "loop"), 0, []),
    "folder symlink to its parent is skipped": (lambda r, m: os.symlink("..", r / "masks" / "up"), 0, []),
    "mask replaced by a symlink to its folder": (
        lambda r, m: (r / "masks" / "img001.png").unlink() or os.symlink(".", r / "masks" / "img001.png"),
        2,
        ["masks/img001.png", "is a folder, not an image file"],
    ),
    "mask folder is a symlink loop": (
        lambda r, m: os.rename(r / "masks", r / "old") or os.symlink("masks", r / "masks"),
        2,
        ["no mask folder", "masks/ or labels/"],
    ),
    "dangling symlink": (
        lambda r, m: os.symlink("nowhere.png", r / "imgs" / "ghost.png"),
        2,
        ["imgs/ghost.png", "broken symbolic link", "nowhere.png"],
    ),
    "unreadable image": (
        lambda r, m: unreadable(r / "imgs" / "img002.png", m),
        2,
        ["imgs/img002.png", "permission denied", "chmod"],
    ),
    "folder named like an image": (
        lambda r, m: (r / "imgs" / "x.png").mkdir(),
        2,
        ["imgs/x.png", "is a folder, not an image file"],
    ),
    "zero-byte image": (lambda r, m: (r / "imgs" / "img000.png").write_bytes(b""), 2, ["img000.png", "0 bytes"]),
    "truncated png": (lambda r, m: truncate(r / "imgs" / "img001.png"), 2, ["img001.png", "replace or remove it"]),
    "text named like a mask": (
        lambda r, m: (r / "masks" / "img003.png").write_text("not a picture"),
        2,
        ["masks/img003.png", "not a known image format"],
    ),
    "ignore equal to a class value": (
        classes_file(CLASSES + "ignore: 255\n"),
        2,
        ["classes.yaml", "ignore 255 is also the value of class 'cell'"],
    ),
    "huge class value": (
        classes_file("classes:\n  background: 0\n  cell: " + str(10**30) + "\n"),
        2,
        ["classes.yaml", "is not an integer from 0 to"],
    ),
    "huge ignore value": (classes_file(CLASSES + f"ignore: {10**30}\n"), 2, ["classes.yaml", "ignore value"]),
    "negative class value": (
        classes_file("classes:\n  background: -1\n  cell: 255\n"),
        2,
        ["classes.yaml", "class value -1"],
    ),
    "classes file not utf-8": (
        classes_file("classes:\n  background: 0\n  célula: 255\n".encode("latin-1")),
        2,
        ["classes.yaml", "not UTF-8", "save the classes file as UTF-8"],
    ),
    "classes file is a folder": (
        lambda r, m: (r / "classes.yaml").mkdir(),
        2,
        ["classes.yaml", "is a folder"],
    ),
    "classes file is a list": (classes_file("- background\n- cell\n"), 2, ["classes.yaml", "expected a mapping"]),
    "classes file is not yaml": (classes_file("classes: [\n"), 2, ["classes.yaml", "not valid YAML at line"]),
    "duplicate class values": (
        classes_file("classes:\n  background: 0\n  cell: 0\n"),
        2,
        ["classes.yaml", "value 0 is given to classes 'background', 'cell'"],
    ),
    "duplicate class names": (
        classes_file("classes:\n  cell: 0\n  cell: 255\n"),
        2,
        ["classes.yaml", "key 'cell' appears twice"],
    ),
    "duplicate colours": (
        classes_file(
            "classes:\n  - {name: background, value: 0, color: '#ff0000'}\n"
            "  - {name: cell, value: 255, color: [255, 0, 0]}\n"
        ),
        2,
        ["classes.yaml", "colour [255, 0, 0] is given to classes"],
    ),
    "class name with a newline": (
        classes_file('classes:\n  background: 0\n  "two\\nlines": 255\n'),
        2,
        ["classes.yaml", "line break or control character"],
    ),
    "class name with a control character": (
        classes_file('classes:\n  background: 0\n  "bell\\a": 255\n'),
        2,
        ["classes.yaml", "line break or control character"],
    ),
    "class name that is a number": (
        classes_file("classes:\n  0: 0\n  1: 255\n"),
        2,
        ["classes.yaml", "which is not text", "quote it"],
    ),
    "class name that is a list": (
        classes_file("classes:\n  - {name: [a, b], value: 0}\n  - {name: cell, value: 255}\n"),
        2,
        ["classes.yaml", "which is not text"],
    ),
    "unknown entry in the classes file": (
        classes_file(CLASSES + "ignore_value: 128\n"),
        2,
        ["classes.yaml", "unknown entry 'ignore_value'"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_dataset_fails_cleanly_or_heals(tmp_path, monkeypatch, capsys, case):
    breaker, status, fragments = CASES[case]
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    breaker(root, monkeypatch)
    doctor = run(["doctor", "--data", str(root)], capsys)
    train = run(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TRAIN], capsys)
    for code, text in (doctor, train):
        assert code == status, text
        for fragment in fragments:
            assert fragment in text, text
    if status == 0:
        assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_skipped_entries_are_named_in_the_doctor_report(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    os.symlink("loop", root / "imgs" / "loop")
    os.symlink("gone", root / "imgs" / "ghost")
    code, text = run(["doctor", "--data", str(root)], capsys)
    assert code == 0 and "ignored 2 broken symbolic links (ghost, loop)" in text


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--val-data", "{tmp}/missing"], "--val-data {tmp}/missing: folder does not exist"),
        (["--val-data", "{tmp}/loop"], "--val-data {tmp}/loop: is a symbolic link that loops back on itself"),
        (["--val-data", "{tmp}/data/imgs"], "--val-data {tmp}/data/imgs: no image folder"),
        (
            ["--val-data", "{tmp}/file"],
            "--val-data {tmp}/file: a file, but not a COCO .json, a CVAT .xml or a YOLO data.yaml",
        ),
        (["--images", "{tmp}/data/imgs", "--masks", "{tmp}/gone"], "--masks {tmp}/gone: is a broken symbolic link"),
        (["--images", "{tmp}/file", "--masks", "{tmp}/data/masks"], "--images {tmp}/file: not a folder"),
    ],
)
def test_folder_errors_name_the_option_given(tmp_path, capsys, options, expected):
    make_dataset(tmp_path / "data", count=4, size=(32, 32))
    os.symlink("loop", tmp_path / "loop")
    os.symlink("nowhere", tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    options = [o.format(tmp=tmp_path) for o in options]
    data = [] if "--images" in options else ["--data", str(tmp_path / "data")]
    for command in (["doctor"], ["train", "--out", str(tmp_path / "run"), *TRAIN]):
        code, text = run([*command, *data, *options], capsys)
        assert code == 2 and expected.format(tmp=tmp_path) in text, text


def decoded_cache(root: Path) -> Path:
    (folder,) = (root / ".unetseg").glob("decoded-*")
    return folder


def set_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "truncated images.bin": (lambda f: truncate(f / "images.bin"), "images.bin is 60 bytes"),
    "empty masks.bin": (lambda f: (f / "masks.bin").write_bytes(b""), "masks.bin is 0 bytes"),
    "missing masks.bin": (lambda f: (f / "masks.bin").unlink(), "masks.bin is missing"),
    "missing meta.json": (lambda f: (f / "meta.json").unlink(), "meta.json is missing"),
    "garbage meta.json": (lambda f: (f / "meta.json").write_bytes(b"\xff{garbage"), "meta.json is not valid JSON"),
    "meta.json a list": (lambda f: (f / "meta.json").write_text("[1, 2]"), "does not describe a decoded cache"),
    "bad image offset": (
        lambda f: set_meta(f, lambda m: m["samples"][1]["image"].__setitem__(0, 10**12)),
        "offsets or shapes in meta.json do not match sample img001",
    ),
    "negative mask offset": (
        lambda f: set_meta(f, lambda m: m["samples"][0]["mask"].__setitem__(0, -64)),
        "do not match sample img000",
    ),
    "bad shape": (
        lambda f: set_meta(f, lambda m: m["samples"][2]["image"].__setitem__(1, 0)),
        "do not match sample img002",
    ),
    "sample missing": (lambda f: set_meta(f, lambda m: m["samples"].pop()), "lists 3 samples, the dataset has 4"),
    "stats not numbers": (
        lambda f: set_meta(f, lambda m: m["samples"][0].__setitem__("stats", {"sum": "x"})),
        "statistics in meta.json of sample img000",
    ),
    "images.bin a folder": (
        lambda f: (f / "images.bin").unlink() or (f / "images.bin").mkdir(),
        "images.bin is missing",
    ),
}


@pytest.mark.parametrize("damage", slow_after(list(DAMAGE), 2))
def test_a_damaged_data_cache_is_rebuilt_and_said_once(tmp_path, capsys, damage):
    breaker, reason = DAMAGE[damage]
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    argv = ["train", "--data", str(root), "-v", "0", *TRAIN, "--overwrite", "--out", str(tmp_path / "run")]
    assert run(argv, capsys)[0] == 0
    folder = decoded_cache(root)
    good = (folder / "images.bin").read_bytes()
    breaker(folder)
    code, text = run(argv, capsys)
    assert code == 0, text
    assert f"data cache at {folder} was damaged (" in text and reason in text and "; rebuilt" in text
    assert text.count("was damaged") == 1
    assert (decoded_cache(root) / "images.bin").read_bytes() == good
    code, text = run(argv, capsys)
    assert code == 0 and "damaged" not in text


def test_a_damaged_scan_index_entry_is_read_again(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    assert run(["doctor", "--data", str(root)], capsys)[0] == 0
    (index,) = (root / ".unetseg").glob("index-*.json")
    data = json.loads(index.read_text())
    name = next(iter(data["image"]))
    data["image"][name]["shape"] = [-3]
    index.write_text(json.dumps(data))
    code, text = run(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TRAIN], capsys)
    assert code == 0, text
    assert json.loads(index.read_text())["image"][name]["shape"] == [32, 32]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class OsWith:
    """The os module with some functions replaced."""

    def __init__(self, **replaced) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):
        return getattr(os, name)


@pytest.mark.parametrize("where", ["posix_fallocate", "pwrite", "fsync", "write_atomic"])
def test_a_full_disk_while_building_the_cache_exits_2_and_leaves_nothing(tmp_path, monkeypatch, capsys, where):
    if where != "write_atomic" and not hasattr(os, where):
        pytest.skip(f"os.{where} is missing on this platform")
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    argv = ["train", "--data", str(root), *TRAIN, "--out", str(tmp_path / "run")]
    assert run(["doctor", "--data", str(root)], capsys)[0] == 0  # the scan index is written; the cache is not
    with monkeypatch.context() as patch:
        if where == "write_atomic":  # meta.json
            patch.setattr(cache_module, where, no_space)
        else:  # the cache module's own calls only: the run directory's files are written as usual
            patch.setattr(cache_module, "os", OsWith(**{where: no_space}))
        code, text = run(argv, capsys)
    assert code == 2, text
    assert "no space left on the device for the data cache at" in text and "(needs 1 MB)" in text
    assert "free some space or pass --no-cache" in text
    assert not list((root / ".unetseg").glob("decoded-*")), "a half-built cache was left"
    code, text = run([*argv, "--overwrite"], capsys)
    assert code == 0 and "damaged" not in text, text


def test_a_full_disk_while_saving_the_scan_index_only_costs_the_next_scan(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    monkeypatch.setattr(index_module, "write_atomic", no_space)
    assert run(["doctor", "--data", str(root)], capsys)[0] == 0
    assert not list((root / ".unetseg").glob("index-*.json"))


def test_a_file_where_the_cache_folder_belongs_is_replaced(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    argv = ["train", "--data", str(root), *TRAIN, "--overwrite", "--out", str(tmp_path / "run")]
    assert run(argv, capsys)[0] == 0
    folder = decoded_cache(root)
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    code, text = run(argv, capsys)
    assert code == 0 and "was damaged" in text and decoded_cache(root).is_dir()


def test_a_filesystem_without_fallocate_reserves_with_zeros(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    unsupported = OSError(errno.EOPNOTSUPP, "Operation not supported")
    monkeypatch.setattr(cache_module.os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(unsupported))
    from unetseg.data.prepare import prepare

    cached = prepare(str(root), None, None, None, None, None, 1.0, 0, 0, 1)
    in_memory = prepare(str(root), None, None, None, None, None, 1.0, 0, 0, 1, cache=False)
    assert isinstance(cached.train[0].image, np.memmap)
    for a, b in zip(cached.train, in_memory.train):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


def test_no_writable_cache_location_decodes_into_memory(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    (root / ".unetseg").write_text("")  # the dataset folder's cache cannot be made
    (tmp_path / "xdg").write_text("")  # nor the user cache under $XDG_CACHE_HOME
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    code, text = run(["doctor", "--data", str(root)], capsys)
    assert code == 0 and "no writable cache folder" in text
    code, text = run(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TRAIN], capsys)
    assert code == 0, text
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "xdg"))  # a home whose .cache cannot be made either
    code, text = run(["train", "--data", str(root), "--out", str(tmp_path / "run2"), *TRAIN], capsys)
    assert code == 0, text


def test_a_read_only_cache_still_opens(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    from unetseg.data.prepare import prepare

    prepare(str(root), None, None, None, None, None, 1.0, 0, 0, 1)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_module.os, "utime", read_only)
    monkeypatch.setattr(cache_module, "load_sample", lambda *a, **k: pytest.fail("decoded again"))
    assert isinstance(prepare(str(root), None, None, None, None, None, 1.0, 0, 0, 1).train[0].image, np.memmap)


def test_plot_labels_never_fail_a_plot(tmp_path):
    names = ["back\nground", "bell\a", "tab\there", "line\u2028sep", "zwj\u200d", "ünïcødé 细胞"]
    class_map = ClassMap(values=list(range(len(names))), names=names)
    panel = {"name": "file\nname.png", "image": np.zeros((8, 8, 1), np.uint8)}
    panel |= {"truth": np.zeros((8, 8), np.uint8), "pred": np.arange(64, dtype=np.uint8).reshape(8, 8) % 6}
    save_gallery(tmp_path / "gallery.png", [panel], class_map, title="two\nlines")
    row = {"step": 1, "train_loss": 0.5, "lr": 0.1, "dice_fg": 0.4} | {f"dice_{n}": 0.3 for n in names}
    save_curves(tmp_path / "curves.png", [row, row | {"step": 2}], class_map)
    assert Image.open(tmp_path / "gallery.png").size[0] > 0 and Image.open(tmp_path / "curves.png").size[0] > 0
    assert clean_label("a\nb\x07c") == "a b c"

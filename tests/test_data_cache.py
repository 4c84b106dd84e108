"""The scan index (reused while size and mtime agree) and the decoded, memory-mapped cache."""

from __future__ import annotations

import builtins
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unetseg.data.cache as cache_module
from conftest import make_dataset
from unetseg.cli import main
from unetseg.data.checks import check_folder
from unetseg.data.prepare import prepare


def count_reads(monkeypatch) -> list[str]:
    """Every dataset file opened for reading from now on (the cache's own files are not counted)."""
    real_open, opened = builtins.open, []

    def counting_open(file, mode="r", *args, **kwargs):
        if ("/imgs/" in str(file) or "/masks/" in str(file)) and "r" in mode and "+" not in mode:
            opened.append(Path(file).name)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


def load(root: Path, **options):
    return prepare(str(root), None, None, None, None, None, options.pop("scale", 1.0), 0, 0, 1, **options)


def test_second_scan_reads_no_file_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    first = check_folder(str(root), None, None)
    opened = count_reads(monkeypatch)
    second = check_folder(str(root), None, None)
    assert opened == []
    assert second.scan.images == first.scan.images and second.scan.masks == first.scan.masks
    mask = root / "masks" / "img001.png"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    check_folder(str(root), None, None)
    assert opened == ["img001.png"]
    image = root / "imgs" / "img002.png"
    stat = image.stat()
    Image.new("L", (32, 32), 7).save(image)  # other content and size, then the old mtime back
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size != stat.st_size
    third = check_folder(str(root), None, None)
    assert opened == ["img001.png", "img002.png"]
    assert third.scan.images[2].hash != first.scan.images[2].hash


def test_a_damaged_index_is_rebuilt(tmp_path):
    root = make_dataset(tmp_path / "data", count=2, size=(32, 32))
    check_folder(str(root), None, None)
    (index,) = (root / ".unetseg").glob("index-*.json")
    index.write_text("{not json")
    assert len(check_folder(str(root), None, None).pairs) == 2
    assert index.read_text().startswith('{"version":1')


def test_decoded_cache_is_memory_mapped_and_reused(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=4, size=(40, 30))
    first = load(root, scale=0.5)
    in_memory = load(root, scale=0.5, cache=False)
    assert isinstance(first.train[0].image, np.memmap)
    for a, b in zip(first.train, in_memory.train):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    for key in ("mean", "std"):
        assert first.norm[key] == pytest.approx(in_memory.norm[key], abs=1e-6)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "load_sample", no_decoding)
    opened = count_reads(monkeypatch)
    second = load(root, scale=0.5)
    assert opened == [] and isinstance(second.train[0].image, np.memmap)
    assert [s.name for s in second.train] == [s.name for s in first.train]
    assert second.norm == first.norm
    with pytest.raises(AssertionError, match="decoded again"):
        load(root, scale=0.25)  # another scale is another cache


def test_a_changed_file_rebuilds_the_cache_and_old_caches_are_pruned(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=2, size=(32, 32))
    load(root)
    Image.new("L", (32, 32), 9).save(root / "imgs" / "img000.png")
    assert int(load(root).train[0].image.max()) == 9
    for scale in (0.5, 0.25, 0.75):
        load(root, scale=scale)
    assert len(list((root / ".unetseg").glob("decoded-*"))) == cache_module.KEEP_CACHES


def test_concurrent_starts_decode_once(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=3, size=(32, 32))
    calls = []
    real = cache_module.load_sample
    monkeypatch.setattr(cache_module, "load_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    threads = [threading.Thread(target=load, args=(root,)) for _ in range(2)]  # like two DDP ranks
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 3


def test_no_cache_writes_nothing_and_cache_dir_moves_it(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", count=4, size=(32, 32))
    tiny = ["--width", "4", "-e", "1", "-b", "2", "--workers", "1", "--quiet"]
    assert main(["train", "--data", str(root), "--no-cache", "--out", str(tmp_path / "run"), *tiny]) == 0
    assert not (root / ".unetseg").exists()
    assert main(["doctor", "--data", str(root), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert not (root / ".unetseg").exists()
    assert len(list((tmp_path / "cache").glob("data-*/index-*.json"))) == 1


def test_read_only_dataset_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", count=2, size=(32, 32))
    (root / ".unetseg").write_text("")  # a file where the cache folder would go: it cannot be created
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    check = check_folder(str(root), None, None)
    assert check.home.parent == tmp_path / "xdg" / "unetseg"
    assert list(check.home.glob("index-*.json"))

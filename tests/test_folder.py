"""Pairing, scanning and class-map discovery."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset
from unetseg.data.classmap import ClassMap, discover
from unetseg.data.folder import find_folders, pair_files
from unetseg.data.index import scan_pairs
from unetseg.data.prepare import prepare
from unetseg.errors import DataError, UserError


def scan(root, classes=None, lossy=False):
    pairs, _ = pair_files(*find_folders(root, None, None))
    return discover(scan_pairs(pairs), classes, lossy)


def test_pairs_by_stem_and_carvana_suffix(tmp_path):
    root = make_dataset(tmp_path / "d", count=3, mask_suffix="_mask", mask_ext=".gif", image_ext=".jpg")
    pairs, _ = pair_files(*find_folders(root, None, None))
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        (f"img{i:03d}.jpg", f"img{i:03d}_mask.gif") for i in range(3)
    ]


def test_images_and_labels_folder_names(tmp_path):
    root = make_dataset(tmp_path / "d", count=2, image_dir="images", mask_dir="labels")
    image_dir, mask_dir = find_folders(root, None, None)
    assert (image_dir.name, mask_dir.name) == ("images", "labels")


def test_every_unmatched_file_is_reported(tmp_path):
    root = make_dataset(tmp_path / "d", count=4)
    (root / "masks" / "img001.png").unlink()
    (root / "masks" / "img003.png").rename(root / "masks" / "other.png")
    (root / "imgs" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        pair_files(*find_folders(root, None, None))
    text = str(err.value)
    assert "img001.png: no mask" in text and "img003.png: no mask" in text and "other.png: no image" in text


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_folders(tmp_path / "nope", None, None)
    (tmp_path / "e" / "imgs").mkdir(parents=True)
    (tmp_path / "e" / "masks").mkdir()
    with pytest.raises(DataError, match="no image files"):
        pair_files(*find_folders(tmp_path / "e", None, None))


def test_class_map_from_0_255_masks(dataset):
    class_map, _ = scan(dataset)
    assert class_map.values == [0, 255]
    assert class_map.decode(class_map.encode(np.array([[0, 255]]))).tolist() == [[0, 255]]


def test_binary_single_output_and_index_masks(tmp_path):
    assert scan(make_dataset(tmp_path / "a", count=2), classes=1)[0].values == [0, 255]
    root = make_dataset(tmp_path / "b", count=4, values=(0, 1, 2))
    assert scan(root, classes=4)[0].values == [0, 1, 2, 3]  # class 3 absent from these masks but real


def test_mask_value_beyond_class_count_names_the_file(tmp_path):
    root = make_dataset(tmp_path / "d", count=3, values=(0, 1, 2))
    with pytest.raises(DataError, match=r"img00\d\.png has \{2\}.*pass -c 3"):
        scan(root, classes=2)


def test_jpeg_mask_noise_is_snapped_not_new_classes(tmp_path):
    root = make_dataset(tmp_path / "d", count=4, mask_ext=".jpg")
    class_map, notes = scan(root, lossy=True)
    assert class_map.values == [0, 255] and class_map.snap
    assert "moved" in notes[0]
    noisy = np.asarray(Image.open(next((root / "masks").iterdir())))
    assert set(np.unique(class_map.encode(noisy)).tolist()) <= {0, 1}


def test_rgba_constant_alpha_is_dropped_and_split_is_deterministic(tmp_path):
    root = make_dataset(tmp_path / "d", count=10, mode="RGBA")
    first = prepare(str(root), None, None, None, None, None, 1.0, 20, seed=3)
    second = prepare(str(root), None, None, None, None, None, 1.0, 20, seed=3)
    assert first.channels == 3 and first.train[0].image.shape[2] == 3
    assert [s.name for s in first.val] == [s.name for s in second.val] and len(first.val) == 2
    assert any("alpha" in n for n in first.notes)


def test_scale_resizes_like_pytorch_unet(tmp_path):
    root = make_dataset(tmp_path / "d", count=2, size=(65, 47))
    data = prepare(str(root), None, None, None, None, None, 0.5, 0, seed=0)
    assert data.train[0].image.shape[:2] == (23, 32)  # int(0.5 * 47), int(0.5 * 65)
    assert set(np.unique(data.train[0].mask).tolist()) <= {0, 1}  # nearest keeps class indices


def test_16_bit_images_are_scaled_by_their_range(tmp_path):
    root = make_dataset(tmp_path / "d", count=2)
    for path in (root / "imgs").iterdir():
        array = np.asarray(Image.open(path)).astype(np.uint16) * 16  # 12-bit data in a 16-bit file
        Image.fromarray(array).save(path)
    data = prepare(str(root), None, None, None, None, None, 1.0, 0, seed=0)
    assert data.train[0].image.dtype == np.uint16
    assert data.norm["scale"] > 255 and 0 < data.norm["mean"][0] < 1


def test_class_map_round_trip():
    class_map = ClassMap(values=[[0, 0, 0], [255, 0, 0]])
    assert ClassMap.from_dict(class_map.to_dict()).values == [[0, 0, 0], [255, 0, 0]]
    colors = np.zeros((2, 2, 3), dtype=np.uint8)
    colors[0, 0] = (255, 0, 0)
    assert class_map.encode(colors).tolist() == [[1, 0], [0, 0]]

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

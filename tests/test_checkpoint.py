"""Checkpoint round trip, Pytorch-UNet checkpoints, and refusal of corrupt, damaged or code-carrying files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset
from unetseg.cli import main
from unetseg.core.checkpoint import (
    CheckpointWriter,
    build_model,
    check_checkpoint,
    inference_checkpoint,
    load_checkpoint,
    save_atomic,
)
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.models import create_model
from unetseg.models.unet import UNet
from unetseg.predict.segmenter import Segmenter


def test_pytorch_unet_state_dict_loads_with_and_without_mask_values(tmp_path):
    net = UNet(3, 2, width=8).eval()
    state = net.state_dict()
    torch.save(state | {"mask_values": [0, 255]}, tmp_path / "with.pth")
    torch.save(state, tmp_path / "without.pth")
    with_values = load_checkpoint(tmp_path / "with.pth")
    assert with_values["class_map"]["values"] == [0, 255] and with_values["channels"] == 3
    assert load_checkpoint(tmp_path / "without.pth")["class_map"]["values"] == [0, 1]
    model = build_model(with_values)
    x = torch.rand(1, 3, 24, 20)
    assert torch.equal(model(x), net(x))


def test_pytorch_unet_prediction_matches_its_predict_py(tmp_path):
    """Pytorch-UNet: resize bicubic by scale, divide by 255, logits resized bilinear to full size, argmax."""
    torch.manual_seed(0)
    net = UNet(3, 2, width=4, bilinear=True).eval()
    torch.save(net.state_dict() | {"mask_values": [0, 255]}, tmp_path / "m.pth")
    image = (np.random.default_rng(0).random((37, 45, 3)) * 255).astype(np.uint8)
    from PIL import Image

    pil = Image.fromarray(image)
    small = np.asarray(pil.resize((int(0.5 * 45), int(0.5 * 37)), resample=Image.BICUBIC)) / 255.0
    x = torch.from_numpy(small.transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        out = torch.nn.functional.interpolate(net(x), (37, 45), mode="bilinear")
    expected = np.where(out.argmax(1)[0].numpy() == 1, 255, 0)
    mask = Segmenter.from_file(tmp_path / "m.pth", device="cpu").predict(pil)
    assert np.array_equal(mask, expected)


def test_truncated_and_garbage_files_are_clear_errors(tmp_path):
    torch.save({"format": "x", "big": torch.zeros(10000)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello")
    for name in ("cut.pt", "text.pt", "missing.pt"):
        with pytest.raises(UserError, match=name):
            load_checkpoint(tmp_path / name)


class Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"state_dict": Exploit()}, handle)
    torch.save({"payload": Exploit()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(UserError, match="refuses to load"):
            load_checkpoint(tmp_path / name)
    assert "code ran" not in capsys.readouterr().out


def test_save_atomic_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    save_atomic({"a": torch.ones(3)}, target)
    save_atomic({"a": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_writer_saves_the_state_as_of_the_call_and_reports_errors(tmp_path):
    weights = torch.ones(4)
    writer = CheckpointWriter()
    writer.write({"w": weights, "step": 3, "again": {"w": weights}}, [tmp_path / "last.pt", tmp_path / "epoch_001.pt"])
    weights.add_(1)  # training goes on while the file is written
    writer.wait()
    for name in ("last.pt", "epoch_001.pt"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert torch.equal(saved["w"], torch.ones(4)) and saved["step"] == 3
        assert saved["again"]["w"].data_ptr() == saved["w"].data_ptr()  # one tensor twice: stored once
    (tmp_path / "file").write_text("")
    writer.write({"w": weights}, [tmp_path / "file" / "best.pt"])  # a folder that cannot be made
    with pytest.raises(OSError):
        writer.close()


# --- broken files: one table, every command that reads a model, exit 2 with one message and no traceback ---


def good_checkpoint() -> dict:
    """A valid unetseg checkpoint: 1-channel width-4 U-Net, 2 classes (mask values 0 and 255)."""
    torch.manual_seed(0)
    norm = {"scale": 255.0, "mean": [0.4], "std": [0.2]}
    return inference_checkpoint(UNet(1, 2, width=4).eval(), ClassMap(values=[0, 255]), norm)


def pytorch_unet(mask_values: object) -> dict:
    return UNet(1, 2, width=4).state_dict() | {"mask_values": mask_values}


def edited(change) -> dict:
    ckpt = good_checkpoint()
    change(ckpt)
    return ckpt


def wider_spec(ckpt: dict) -> None:
    ckpt["model"]["width"] = 8  # a valid spec that the width-4 weights do not fit


BROKEN_CHECKPOINTS = {
    # Pytorch-UNet files with odd mask_values
    "mv-mixed-lengths": (pytorch_unet([[0, 0, 0], [255, 255]]), "colours are [r, g, b]"),
    "mv-strings": (pytorch_unet(["background", "cell"]), "must be an integer"),
    "mv-floats": (pytorch_unet([0.0, 0.5]), "must be an integer"),
    "mv-huge-int": (pytorch_unet([0, 10**30]), "outside 0-65535"),
    "mv-negative": (pytorch_unet([-1, 0]), "outside 0-65535"),
    "mv-none-entry": (pytorch_unet([None, 1]), "must be an integer"),
    "mv-empty": (pytorch_unet([]), "mask_values is empty"),
    "mv-duplicates": (pytorch_unet([255, 255]), "repeats 255"),
    "mv-grey-and-colour": (pytorch_unet([0, [1, 2, 3]]), "mixes grey levels and colours"),
    "mv-too-many": (pytorch_unet([0, 1, 2]), "has 3 values but the model has 2 outputs"),
    "mv-a-string": (pytorch_unet("0,255"), "mask_values must be a list"),
    "pu-not-a-tensor": (pytorch_unet([0, 1]) | {"outc.conv.bias": [0.0, 0.0]}, "not a tensor"),
    "pu-missing-weight": (
        {k: v for k, v in pytorch_unet([0, 1]).items() if k != "down2.maxpool_conv.1.double_conv.0.weight"},
        "missing down2.maxpool_conv.1.double_conv.0.weight",
    ),
    # unetseg checkpoints with the right format tag but missing or mistyped fields
    "no-model": (edited(lambda c: c.pop("model")), "lacks 'model'"),
    "no-class-map": (edited(lambda c: c.pop("class_map")), "lacks 'class_map'"),
    "no-state-dict": (edited(lambda c: c.pop("state_dict")), "lacks 'state_dict'"),
    "model-a-string": (edited(lambda c: c.update(model="unet")), "model must be a mapping"),
    "model-unknown": (edited(lambda c: c["model"].update(name="resnet")), "model.name is str 'resnet'"),
    "model-extra-field": (edited(lambda c: c["model"].update(depth=5)), "unknown fields ['depth']"),
    "width-100000": (edited(lambda c: c["model"].update(width=100000)), "model.width is 100000, outside 1-256"),
    "width-zero": (edited(lambda c: c["model"].update(width=0)), "model.width is 0, outside 1-256"),
    "width-float": (edited(lambda c: c["model"].update(width=4.0)), "model.width must be an integer"),
    "classes-string": (edited(lambda c: c["model"].update(n_classes="2")), "model.n_classes must be an integer"),
    "channels-1000": (edited(lambda c: c["model"].update(n_channels=1000)), "model.n_channels is 1000"),
    "bilinear-string": (edited(lambda c: c["model"].update(bilinear="no")), "model.bilinear must be true or false"),
    "spec-weights-differ": (edited(wider_spec), "weights do not fit this model"),
    "channels-string": (edited(lambda c: c.update(channels="1")), "channels must be an integer"),
    "channels-disagree": (edited(lambda c: c.update(channels=3)), "channels is 3 but the model takes 1"),
    "norm-a-list": (edited(lambda c: c.update(norm=[255, 0.4, 0.2])), "norm must be a mapping"),
    "norm-no-std": (edited(lambda c: c["norm"].pop("std")), "norm lacks 'std'"),
    "norm-std-zero": (edited(lambda c: c["norm"].update(std=[0.0])), "norm.std is 0.0"),
    "norm-mean-nan": (edited(lambda c: c["norm"].update(mean=[float("nan")])), "norm.mean is nan"),
    "norm-mean-length": (edited(lambda c: c["norm"].update(mean=[0.4, 0.4])), "has 2 entries, expected 1"),
    "norm-scale-string": (edited(lambda c: c["norm"].update(scale="255")), "norm.scale must be a number"),
    "class-map-a-list": (edited(lambda c: c.update(class_map=[0, 255])), "class_map must be a mapping"),
    "class-map-no-values": (edited(lambda c: c["class_map"].pop("values")), "class_map lacks 'values'"),
    "class-map-duplicates": (edited(lambda c: c["class_map"].update(values=[0, 0])), "repeats 0"),
    "class-map-3-for-2": (edited(lambda c: c["class_map"].update(values=[0, 1, 2])), "has 3 values but the model"),
    "class-map-names": (edited(lambda c: c["class_map"].update(names=["bg", 7])), "class_map.names must be 2 strings"),
    "class-map-ignore": (edited(lambda c: c["class_map"].update(ignore="x")), "class_map.ignore"),
    "scale-negative": (edited(lambda c: c.update(scale=-1.0)), "scale is -1.0"),
    "scale-string": (edited(lambda c: c.update(scale="0.5")), "scale must be a number"),
    "state-dict-a-list": (edited(lambda c: c.update(state_dict=[1, 2])), "state_dict must be a mapping"),
    "state-dict-int-weights": (
        edited(lambda c: c["state_dict"].update({"outc.conv.weight": torch.zeros(2, 4, 1, 1, dtype=torch.int32)})),
        "outc.conv.weight is torch.int32",
    ),
    "version-newer": (edited(lambda c: c.update(version=99)), "checkpoint version 99 is newer"),
    "version-string": (edited(lambda c: c.update(version="1")), "version must be an integer"),
    "config-a-string": (edited(lambda c: c.update(config="lr: 1")), "config must be a mapping"),
}


@pytest.fixture(scope="module")
def broken_setup(tmp_path_factory):
    """A dataset and an image for the commands, and the broken files, written once."""
    root = tmp_path_factory.mktemp("broken")
    data = make_dataset(root / "data", count=2)
    paths = {}
    for name, (content, _) in BROKEN_CHECKPOINTS.items():
        paths[name] = root / f"{name}.pth"
        torch.save(content, paths[name])
    return root, data, paths


def commands(model: Path, root: Path, data: Path) -> dict[str, list[str]]:
    image = str(next((data / "imgs").iterdir()))
    return {
        "evaluate": ["evaluate", "-m", str(model), "--data", str(data), "--device", "cpu"],
        "predict": ["predict", "-m", str(model), "-i", image, "-o", str(root / "out"), "--device", "cpu", "--quiet"],
        "export": ["export", "-m", str(model), "-o", str(root / "m.onnx"), "--quiet"],
    }


def exits_2_with(args: list[str], needle: str, capsys) -> None:
    assert main(args) == 2, args
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", list(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_exits_2_with_one_message(broken_setup, capsys, name):
    root, data, paths = broken_setup
    needle = BROKEN_CHECKPOINTS[name][1]
    for args in commands(paths[name], root, data).values():
        exits_2_with(args, needle, capsys)
    assert not (root / "m.onnx").exists()


def test_the_good_checkpoint_of_the_table_works(broken_setup, tmp_path):
    """The table's files differ from this one only in what they break."""
    _, data, _ = broken_setup
    save_atomic(good_checkpoint(), tmp_path / "good.pt")
    torch.save(pytorch_unet([0, 255]), tmp_path / "good.pth")
    for model in (tmp_path / "good.pt", tmp_path / "good.pth"):
        args = commands(model, tmp_path, data)
        assert main(args["predict"]) == 0 and main(args["evaluate"]) == 0


def test_a_huge_width_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    ckpt = edited(lambda c: c["model"].update(width=100000))
    monkeypatch.setattr(UNet, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(UserError, match="model.width is 100000"):
        check_checkpoint(ckpt, "wide.pt")
    with pytest.raises(UserError, match="model.width is 100000"):
        build_model(ckpt)


def tamper(source: Path, target: Path, change) -> Path:
    """Copy an ONNX model with its metadata changed: ``change(dict of raw strings)``."""
    import onnx

    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    change(props)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
    return target


def set_json(key: str, value: object):
    return lambda props: props.update({key: json.dumps(value)})


BROKEN_ONNX = {
    "no-format": (lambda p: p.pop("format"), "carries no unetseg metadata"),
    "no-class-map": (lambda p: p.pop("class_map"), "metadata 'class_map' is missing"),
    "no-channels": (lambda p: p.pop("channels"), "metadata 'channels' is missing"),
    "class-map-not-json": (lambda p: p.update(class_map="{values: [0, 255"), "metadata 'class_map' is not JSON"),
    "channels-string": (set_json("channels", "one"), "metadata 'channels' must be an integer"),
    "channels-disagree": (set_json("channels", 3), "metadata 'channels' is 3 but the graph takes 1"),
    "scale-string": (set_json("scale", "1"), "scale must be a number"),
    "scale-zero": (set_json("scale", 0), "scale is 0"),
    "class-map-a-list": (set_json("class_map", [0, 255]), "class_map must be a mapping"),
    "class-map-3-for-2": (set_json("class_map", {"values": [0, 1, 2]}), "has 3 values but the model has 2 outputs"),
    "class-map-strings": (set_json("class_map", {"values": ["a", "b"]}), "must be an integer"),
    "class-map-nested": (set_json("class_map", {"values": [[0, 0], [1, 2, 3]]}), "colours are [r, g, b]"),
    "with-argmax-string": (set_json("with_argmax", "no"), "metadata 'with_argmax' must be true or false"),
    "version-newer": (set_json("version", 7), "export version 7 is newer"),
    "version-null": (set_json("version", None), "metadata 'version' must be an integer"),
}


@pytest.fixture(scope="module")
def exported(broken_setup):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module)
    root, _, _ = broken_setup
    save_atomic(good_checkpoint(), root / "good.pt")
    assert main(["export", "-m", str(root / "good.pt"), "-o", str(root / "good.onnx"), "--quiet"]) == 0
    return root / "good.onnx"


@pytest.mark.parametrize("name", list(BROKEN_ONNX))
def test_an_onnx_file_with_tampered_metadata_exits_2_with_one_message(broken_setup, exported, capsys, name):
    root, data, _ = broken_setup
    change, needle = BROKEN_ONNX[name]
    model = tamper(exported, root / f"{name}.onnx", change)
    exits_2_with(commands(model, root, data)["predict"], needle, capsys)


def test_train_offers_only_trainable_models(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", count=4)
    for model, needle in [("ensemble", "the ensemble is inference-only"), ("resnet", "unknown --model 'resnet'")]:
        args = ["train", "--data", str(data), "--model", model, "-e", "1", "--out", str(tmp_path / model)]
        exits_2_with(args, needle, capsys)
    with pytest.raises(UserError, match="known models: unet, resunet, unet-resnet18, unet-resnet34, unet-resnet50$"):
        create_model("resnet", trainable=True, n_channels=1, n_classes=2)
    with pytest.raises(UserError, match="--model unet: model.width is 100000"):
        create_model("unet", trainable=True, n_channels=1, n_classes=2, width=100000)


def test_pytorch_unet_mask_values_of_1_bit_masks_load(tmp_path):
    """Pytorch-UNet stores ``np.unique(mask).tolist()``: ``[False, True]`` for 1-bit PNG masks."""
    torch.save(pytorch_unet([False, True]), tmp_path / "bits.pth")
    assert load_checkpoint(tmp_path / "bits.pth")["class_map"]["values"] == [0, 1]

"""Checkpoint round trip, Pytorch-UNet checkpoints, and refusal of corrupt or code-carrying files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from unetseg.core.checkpoint import CheckpointWriter, build_model, load_checkpoint, save_atomic
from unetseg.errors import UserError
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

"""U-Net shapes, Pytorch-UNet layer names, and activation checkpointing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import SHARED
from unetseg.errors import UserError
from unetseg.models import create_model
from unetseg.models.unet import UNet


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (37, 51), (17, 90)])
def test_any_input_size_gives_logits_of_that_size(bilinear, size):
    model = UNet(3, 4, bilinear=bilinear, width=4).eval()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 4, *size)


def test_channels_last_matches_contiguous():
    model = UNet(1, 2, width=4).eval()
    x = torch.randn(1, 1, 40, 40)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


# Pytorch-UNet's state-dict layout (names, shapes, dtypes), copied from its checkpoints into the tests.
REFERENCE_KEYS = Path(__file__).resolve().parent / "data" / "pytorch-unet-checkpoint-keys.txt"


def test_the_copied_key_list_equals_the_shared_reference():
    shared = SHARED / "reference" / "pytorch-unet-checkpoint-keys.txt"
    if not shared.exists():
        pytest.skip("needs ../shared/reference")
    assert REFERENCE_KEYS.read_text() == shared.read_text()


def _reference_layouts() -> dict[bool, list[tuple[str, tuple[int, ...]]]]:
    text = REFERENCE_KEYS.read_text()
    layouts, current = {}, None
    for line in text.splitlines():
        header = re.match(r"# UNet\(.*bilinear=(True|False)\)", line)
        if header:
            current = header.group(1) == "True"
            layouts[current] = []
        elif line.strip() and current is not None and not line.startswith("#"):
            name, rest = line.split(" ", 1)
            shape = tuple(int(v) for v in re.findall(r"\d+", rest.rsplit(" ", 1)[0]))
            layouts[current].append((name, shape))
    return layouts


@pytest.mark.parametrize("bilinear", [False, True])
def test_state_dict_layout_equals_pytorch_unet(bilinear):
    expected = _reference_layouts()[bilinear]
    model = UNet(3, 2, bilinear=bilinear, width=64)
    actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert actual == expected


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = UNet(1, 2, width=4)
    ckpt = UNet(1, 2, width=4, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 32, 32)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_unknown_model_lists_known_names():
    with pytest.raises(
        UserError, match="known models: ensemble, resunet, unet, unet-resnet18, unet-resnet34, unet-resnet50$"
    ):
        create_model("resnet")

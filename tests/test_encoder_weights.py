"""ResNet encoder weights: torchvision's names and shapes, files in torchvision's and timm's layouts, the first
convolution adapted to 1/2/4 channels as smp does, clear messages for files that do not fit, and
``--encoder-weights imagenet`` online (a patched download returning a file's weights) and offline.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch

from conftest import make_dataset, slow_after
from unetseg.cli import main
from unetseg.core.checkpoint import load_checkpoint
from unetseg.errors import UserError
from unetseg.models import create_model
from unetseg.models.resnet import adapt_first_conv, imagenet_norm
from unetseg.models.weights import cache_path, load_encoder_weights

RESNETS = ["unet-resnet18", "unet-resnet34", "unet-resnet50"]


def small(name: str, channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, trainable=True, n_channels=channels, n_classes=2, width=8)


# torchvision's resnet.py (and timm's): blocks per stage, block kind, and the expansion of the block's output.
LAYOUT = {18: ([2, 2, 2, 2], "basic"), 34: ([3, 4, 6, 3], "basic"), 50: ([3, 4, 6, 3], "bottleneck")}


def published_resnet(depth: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of torchvision's ``resnet{depth}()`` state_dict, written out from its source
    (conv1/bn1, layerN.i.conv1..3/bn1..3, downsample.0/.1, fc), without its ``num_batches_tracked`` counters."""
    blocks, kind = LAYOUT[depth]
    expansion = 4 if kind == "bottleneck" else 1
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (c,)

    bn("bn1", 64)
    cin = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for i in range(count):
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            if kind == "basic":
                convs = [(planes, cin, 3), (planes, planes, 3)]
            else:
                convs = [(planes, cin, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            for j, (cout, c, k) in enumerate(convs, start=1):
                shapes[f"{p}.conv{j}.weight"] = (cout, c, k, k)
                bn(f"{p}.bn{j}", cout)
            if i == 0 and (stride != 1 or cin != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            cin = planes * expansion
    shapes["fc.weight"], shapes["fc.bias"] = (1000, cin), (1000,)
    return shapes


def random_state(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=gen) + 0.5 for k, s in shapes.items()}  # positive: valid running_var


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_encoder_has_torchvisions_names_and_shapes(depth):
    own = small(f"unet-resnet{depth}").encoder.state_dict()
    published = {k: v for k, v in published_resnet(depth).items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in own.items() if not k.endswith("num_batches_tracked")} == published


@pytest.mark.parametrize("name", slow_after(RESNETS, 2))  # ResNet-50 only in the full run
@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_encoder_weights_load_from_torchvision_and_timm_files(name, layout, tmp_path):
    depth = int(name.removeprefix("unet-resnet"))
    state = random_state(published_resnet(depth))
    if layout == "torchvision":  # a plain state_dict as torchvision's files hold it
        saved = state
    else:  # timm's train.py: counters kept, wrapped in "state_dict", "module." from DDP
        counters = {
            k.replace("running_mean", "num_batches_tracked"): torch.tensor(7) for k in state if "running_mean" in k
        }
        saved = {"state_dict": {f"module.{k}": v for k, v in (state | counters).items()}, "epoch": 3}
    path = tmp_path / f"{layout}.pth"
    torch.save(saved, path)
    model = small(name, 3)
    assert load_encoder_weights(model, str(path)) == str(path)
    own = model.encoder.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_first_convolution_is_adapted_from_rgb_as_smp_does(channels, tmp_path):
    state = random_state(published_resnet(18))
    torch.save(state, tmp_path / "w.pth")
    model = small("unet-resnet18", channels)
    load_encoder_weights(model, str(tmp_path / "w.pth"))
    rgb, got = state["conv1.weight"], model.encoder.conv1.weight.detach()
    assert got.shape == (64, channels, 7, 7)
    if channels == 1:
        assert torch.allclose(got[:, 0], rgb.sum(1))
    else:
        for c in range(channels):
            assert torch.allclose(got[:, c], rgb[:, c % 3] * 3 / channels)
    assert torch.equal(adapt_first_conv(rgb, 3), rgb)


def test_weights_that_do_not_fit_name_what_is_missing_extra_or_misshapen(tmp_path):
    state = random_state(published_resnet(18))
    del state["layer4.1.bn2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(UserError, match=r"missing 1: layer4\.1\.bn2\.weight; extra 1: layer5\.0\.conv1\.weight"):
        load_encoder_weights(small("unet-resnet18"), str(tmp_path / "edited.pth"))
    torch.save(random_state(published_resnet(34)), tmp_path / "r34.pth")
    with pytest.raises(UserError, match="extra .*layer1.2.conv1.weight"):
        load_encoder_weights(small("unet-resnet18"), str(tmp_path / "r34.pth"))
    torch.save(random_state(published_resnet(18)), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"shape layer1\.0\.conv1\.weight \(64, 64, 3, 3\) vs \(64, 64, 1, 1\)"):
        load_encoder_weights(small("unet-resnet50"), str(tmp_path / "r18.pth"))
    with pytest.raises(UserError, match="no such file"):
        load_encoder_weights(small("unet-resnet18"), str(tmp_path / "absent.pth"))


def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_imagenet_offline_names_the_url_the_cache_path_and_the_file_alternative(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        load_encoder_weights(small("unet-resnet34"), "imagenet")
    message = str(err.value)
    url = "https://download.pytorch.org/models/resnet34-b627a593.pth"
    assert url in message and str(cache_path(url)) in message and "--encoder-weights FILE" in message
    assert str(cache_path(url)).endswith("checkpoints/resnet34-b627a593.pth")


def test_train_offline_with_imagenet_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    data = make_dataset(tmp_path / "data", count=4)
    args = ["train", "--data", str(data), "--model", "unet-resnet18", "--encoder-weights", "imagenet"]
    assert main([*args, "-e", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "Traceback" not in err


def test_train_with_imagenet_weights_uses_imagenet_normalisation(monkeypatch, tmp_path, capsys):
    """The download returns a file's weights; the run starts from them and records ImageNet's statistics."""
    state = random_state(published_resnet(18))
    torch.save(state, tmp_path / "resnet18-f37072fd.pth")
    calls = []

    def download(url, **kwargs):
        calls.append((url, kwargs.get("check_hash")))
        return torch.load(tmp_path / "resnet18-f37072fd.pth", weights_only=True)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    data = make_dataset(tmp_path / "data", count=6)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "unet-resnet18", "--encoder-weights", "imagenet", "--width", "8"]
    assert (
        main(
            [
                *args,
                "-e",
                "1",
                "-b",
                "2",
                "-l",
                "1e-9",
                "--weight-decay",
                "0",
                "--workers",
                "1",
                "--out",
                str(run),
                "--no-plan",
            ]
        )
        == 0
    )
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", True)]
    assert "input normalised with ImageNet's mean [0.449] and std [0.226]" in capsys.readouterr().out
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["norm"] == imagenet_norm(1, 255.0)
    # at a learning rate of 1e-9 the encoder still holds the file's weights (grey input: the RGB kernels summed)
    weights = ckpt["state_dict"]
    assert torch.allclose(weights["encoder.conv1.weight"], state["conv1.weight"].sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(weights["encoder.layer3.1.conv2.weight"], state["layer3.1.conv2.weight"], atol=1e-5)


def test_encoder_weights_need_a_resnet_model(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", count=4)
    args = ["train", "--data", str(data), "--model", "resunet", "--encoder-weights", "imagenet", "-e", "1"]
    assert main([*args, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "the resunet has no pretrained encoder" in capsys.readouterr().err

"""One test base for every registered trainable model (as smp tests its models), plus encoder weight loading.

Each model in a tiny configuration: forward/backward at odd sizes, 1/3/4 input channels, checkpoint save ->
load -> same output, ONNX (with onnxruntime) and TorchScript exports equal to eager PyTorch, torch.compile (one
model, slow). ResNet weights are loaded from files written here in torchvision's and timm's key layouts.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset
from unetseg.cli import main
from unetseg.core.checkpoint import build_model, inference_checkpoint, load_checkpoint, save_atomic
from unetseg.core.device import normalize
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.models import TRAINABLE, create_model, model_spec
from unetseg.models.resnet import adapt_first_conv, imagenet_norm
from unetseg.models.weights import cache_path, load_encoder_weights

# The smallest configuration of each model; every trainable model must have one (checked below).
SMALL = {
    "unet": dict(width=4),
    "resunet": dict(width=4, depth=4, blocks=[1, 2, 1, 1]),
    "unet-resnet18": dict(width=8),
    "unet-resnet34": dict(width=8),
    "unet-resnet50": dict(width=8),
}
RESNETS = [name for name in SMALL if name.startswith("unet-resnet")]
ODD_SIZES = [(37, 51), (64, 64), (17, 33)]


def small(name: str, channels: int = 3, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, trainable=True, n_channels=channels, n_classes=classes, **SMALL[name])


def test_every_trainable_model_is_under_test():
    assert set(SMALL) == set(TRAINABLE)


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_forward_and_backward_at_odd_sizes(name, channels):
    model = small(name, channels, classes=3).train()
    for height, width in ODD_SIZES:
        model.zero_grad(set_to_none=True)
        x = torch.randn(2, channels, height, width)
        logits = model(x)
        assert logits.shape == (2, 3, height, width)
        logits.square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, missing[:3]


def settled(model: torch.nn.Module, channels: int) -> torch.nn.Module:
    """BatchNorm statistics of a few batches, so that eval-mode outputs are not all alike."""
    with torch.no_grad():
        for seed in range(3):
            model.train()(torch.randn(4, channels, 32, 32, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def write_checkpoint(model: torch.nn.Module, path: Path, channels: int) -> Path:
    rng = np.random.default_rng(0)
    norm = {
        "scale": 255.0,
        "mean": rng.uniform(0.3, 0.6, channels).round(4).tolist(),
        "std": rng.uniform(0.1, 0.3, channels).round(4).tolist(),
    }
    values = list(range(model.n_classes)) if model.n_classes > 1 else [0, 255]
    save_atomic(inference_checkpoint(model, ClassMap(values=values), norm), path)
    return path


@pytest.mark.parametrize("name", list(SMALL))
def test_save_load_gives_the_same_model(name, tmp_path):
    model = settled(small(name, 3), 3)
    ckpt = load_checkpoint(write_checkpoint(model, tmp_path / "m.pt", 3))
    assert ckpt["model"] == model_spec(model) and ckpt["model"]["name"] == name
    rebuilt = build_model(ckpt)
    x = torch.randn(2, 3, 37, 51)
    with torch.no_grad():
        expected = model(x)
        assert expected.std() > 1e-3
        assert torch.equal(rebuilt(x), expected)


@pytest.mark.parametrize(
    "name, spec, needle",
    [
        ("resunet", {"depth": 4, "blocks": [1, 1]}, "model.blocks has 2 entries, expected 4"),
        ("resunet", {"depth": 40}, "model.depth is 40, outside 2-8"),
        ("unet-resnet18", {"bilinear": True}, "unknown fields ['bilinear']"),
        ("unet-resnet34", {"width": 0}, "model.width is 0, outside 1-256"),
    ],
)
def test_bad_specs_are_refused_before_allocation(name, spec, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        create_model(name, n_channels=3, n_classes=2, **spec)


@pytest.fixture
def onnx_runtime():
    for module in ("onnx", "onnxscript"):
        pytest.importorskip(module)
    return pytest.importorskip("onnxruntime")


def pixels(shape: tuple[int, int, int], channels: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (*shape, channels)).astype(np.uint8)


def eager(ckpt_path: Path, images: np.ndarray) -> torch.Tensor:
    ckpt = load_checkpoint(ckpt_path)
    with torch.no_grad():
        x = normalize(torch.from_numpy(images), ckpt["norm"], torch.device("cpu"), channels_last=False)
        return build_model(ckpt)(x)


EXPORT_SIZES = [(1, 64, 64), (2, 37, 51)]  # neither is the size the export traces with
# The deeper ResNets export through the same code as ResNet-18 (ResNet-50 adds the Bottleneck): in the slow set.
EXPORTED = [pytest.param(n, marks=pytest.mark.slow) if n in ("unet-resnet34", "unet-resnet50") else n for n in SMALL]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_export_matches_pytorch(name, tmp_path, onnx_runtime):
    ckpt = write_checkpoint(settled(small(name, 3), 3), tmp_path / "m.pt", 3)
    out = tmp_path / "m.onnx"
    assert main(["export", "-m", str(ckpt), "-o", str(out), "--quiet"]) == 0
    session = onnx_runtime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in EXPORT_SIZES:
        images = pixels(shape, 3)
        expected = eager(ckpt, images).numpy()
        got = session.run(None, {"images": images})[0]
        assert got.shape == expected.shape == (shape[0], 2, *shape[1:])
        assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max()), shape


@pytest.mark.parametrize("name", EXPORTED)
def test_torchscript_export_matches_pytorch(name, tmp_path):
    ckpt = write_checkpoint(settled(small(name, 4), 4), tmp_path / "m.pt", 4)
    out = tmp_path / "m.ts.pt"
    assert main(["export", "-m", str(ckpt), "-o", str(out), "--format", "torchscript", "--quiet"]) == 0
    scripted = torch.jit.load(str(out))
    for shape in EXPORT_SIZES:
        images = pixels(shape, 4)
        expected = eager(ckpt, images)
        with torch.no_grad():
            got = scripted(torch.from_numpy(images))
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-3 * max(1.0, expected.abs().max().item()), shape


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = settled(small("resunet", 3), 3)
    x = torch.randn(2, 3, 37, 51)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model)(x)
    assert (got - expected).abs().max() < 1e-4


# --- ResNet encoder weights -------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("name", RESNETS)
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


# --- every command with every model ----------------------------------------------------------------------------

TINY = ["-b", "4", "--val-rounds", "1", "--workers", "1", "--quiet", "--no-plan", "--patch-size", "32"]
WIDTHS = {"resunet": "4", "unet-resnet18": "8"}  # unet's commands are covered by test_end_to_end


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WIDTHS))
def test_train_resume_evaluate_predict_export_with_the_model(name, tmp_path, onnx_runtime):
    data = make_dataset(tmp_path / "data", count=8, size=(45, 37))
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", name, "--width", WIDTHS[name], "--out", str(run), *TINY]
    assert main([*args, "-e", "1"]) == 0
    assert main(["train", "--resume", str(run), "-e", "2", "--quiet"]) == 0
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["model"]["name"] == name and last["config"]["epochs"] == 2
    best = run / "checkpoints" / "best.pt"
    report = tmp_path / "scores.json"
    assert main(["evaluate", "-m", str(best), "--data", str(data), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["images"] == 8
    for extra in ([], ["--tile", "32", "--overlap", "0.25"], ["--tta"]):
        out = tmp_path / f"pred{len(extra)}"
        assert main(["predict", "-m", str(best), "-i", str(data / "imgs"), "-o", str(out), "--quiet", *extra]) == 0
        assert len(list(out.glob("*.png"))) == 8
    onnx = tmp_path / "m.onnx"
    assert main(["export", "-m", str(best), "-o", str(onnx), "--quiet"]) == 0
    out = tmp_path / "onnx-pred"
    assert main(["predict", "-m", str(onnx), "-i", str(data / "imgs"), "-o", str(out), "--quiet"]) == 0
    assert len(list(out.glob("*.png"))) == 8


@pytest.mark.slow
def test_folds_make_an_ensemble_of_the_model(tmp_path):
    data = make_dataset(tmp_path / "data", count=6, size=(40, 36))
    out = tmp_path / "cv"
    args = ["train", "--data", str(data), "--model", "resunet", "--width", "4", "--folds", "2", "-e", "1"]
    assert main([*args, "--out", str(out), *TINY]) == 0
    ckpt = load_checkpoint(out / "ensemble.pt")
    assert [m["name"] for m in ckpt["model"]["members"]] == ["resunet", "resunet"]
    masks = tmp_path / "masks"
    assert main(["predict", "-m", str(out / "ensemble.pt"), "-i", str(data / "imgs"), "-o", str(masks), "--quiet"]) == 0
    assert len(list(masks.glob("*.png"))) == 6
    assert (
        main(
            [
                "export",
                "-m",
                str(out / "ensemble.pt"),
                "-o",
                str(tmp_path / "e.ts"),
                "--format",
                "torchscript",
                "--quiet",
            ]
        )
        == 0
    )


def test_help_and_an_unknown_name_list_the_registry(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in TRAINABLE:
        assert f"{name} (" in text
    data = make_dataset(tmp_path / "data", count=4)
    assert main(["train", "--data", str(data), "--model", "resnet34", "--out", str(tmp_path / "r")]) == 2
    assert f"unknown --model 'resnet34'; known models: {', '.join(TRAINABLE)}" in capsys.readouterr().err

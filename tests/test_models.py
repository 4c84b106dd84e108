"""One test base for every registered trainable model (as smp tests its models), plus encoder weight loading.

Each model in a tiny configuration: forward/backward at odd sizes, 1/3/4 input channels, checkpoint save ->
load -> same output, ONNX (with onnxruntime) and TorchScript exports equal to eager PyTorch, torch.compile (one
model, slow). ResNet weights are loaded from files written here in torchvision's and timm's key layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset, slow_after
from unetseg.cli import main
from unetseg.core.checkpoint import build_model, inference_checkpoint, load_checkpoint, save_atomic
from unetseg.core.device import normalize
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.models import TRAINABLE, create_model, model_spec

# The smallest configuration of each model; every trainable model must have one (checked below).
SMALL = {
    "unet": dict(width=4),
    "resunet": dict(width=4, depth=4, blocks=[1, 2, 1, 1]),
    "unet-resnet18": dict(width=8),
    "unet-resnet34": dict(width=8),
    "unet-resnet50": dict(width=8),
}
ODD_SIZES = [(37, 51), (64, 64), (17, 33)]


def small(name: str, channels: int = 3, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, trainable=True, n_channels=channels, n_classes=classes, **SMALL[name])


def test_every_trainable_model_is_under_test():
    assert set(SMALL) == set(TRAINABLE)


@pytest.mark.parametrize("name", slow_after(list(SMALL), 3))  # ResNet-34 and -50 only in the full run
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
    # channels-last, as training runs on every device (a strided 1x1 convolution with few channels crashes PyTorch's
    # CPU backward in this layout, so no model may have one)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, channels, 64, 64).contiguous(memory_format=torch.channels_last)
    model(x).square().mean().backward()


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


@pytest.mark.parametrize("name", slow_after(list(SMALL), 3))
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

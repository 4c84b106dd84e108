"""Export to ONNX and TorchScript: parity with PyTorch on unseen sizes, metadata, and torch-free ONNX prediction."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import draw_pair, make_dataset
from unetseg.cli import main
from unetseg.config import ExportConfig, build
from unetseg.core.checkpoint import build_model, load_checkpoint
from unetseg.core.checkpoint import make_checkpoint as checkpoint_dict
from unetseg.core.device import normalize
from unetseg.data.classmap import ClassMap
from unetseg.models import model_spec
from unetseg.models.unet import UNet
from unetseg.predict.segmenter import Segmenter

# Three models that between them cover every branch of the export: softmax and sigmoid outputs, bilinear and
# transposed-convolution up-sampling, RGB and grey input, 8- and 16-bit normalisation, unetseg and Pytorch-UNet files.
MODELS = {
    "rgb3": dict(channels=3, classes=3, bilinear=True, scale=0.5, values=(0, 128, 255), norm_scale=255.0),
    "pytorch_unet": dict(channels=3, classes=1, bilinear=False, values=(0, 255), pytorch_unet=True),
    "grey16": dict(channels=1, classes=2, bilinear=False, scale=1.0, values=(0, 1), norm_scale=4095.0),
}
SIZES = [(1, 16, 16), (2, 37, 51), (3, 64, 48), (1, 33, 17)]  # none is the traced size, two are odd


def make_checkpoint(
    path: Path,
    channels: int,
    classes: int,
    bilinear: bool,
    values: tuple,
    scale: float = 1.0,
    norm_scale: float = 255.0,
    pytorch_unet: bool = False,
) -> Path:
    """A width-4 U-Net whose logits are O(1) and whose classes all win somewhere, saved as a checkpoint."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    norm = {"scale": norm_scale, "mean": [0.0] * channels, "std": [1.0] * channels}  # Pytorch-UNet's
    if not pytorch_unet:
        norm["mean"] = rng.uniform(0.3, 0.6, channels).round(4).tolist()
        norm["std"] = rng.uniform(0.1, 0.3, channels).round(4).tolist()
    model = UNet(channels, classes, bilinear=bilinear, width=4)
    with torch.no_grad():
        for _ in range(3):  # BatchNorm running statistics of inputs like the tests', so eval-mode logits vary
            model(pixels_in(norm, channels, rng))
        model.eval()
        logits = model(pixels_in(norm, channels, rng))
        mean = logits.mean((0, 2, 3))
        gain = 2 / (logits - mean.view(1, -1, 1, 1)).std()  # logits centred per class, of std 2: all classes win
        model.outc.conv.weight *= gain
        model.outc.conv.bias.copy_((model.outc.conv.bias - mean) * gain)
    if pytorch_unet:
        torch.save(model.state_dict() | {"mask_values": list(values)}, path)
        return path
    names = ["background", "cell", "edge"][: len(values)]
    class_map = ClassMap(values=list(values), names=names).to_dict()
    checkpoint = checkpoint_dict(model_spec(model), model.state_dict(), channels, norm, class_map, scale)
    torch.save(checkpoint, path)
    return path


def pixels_in(norm: dict, channels: int, rng: np.random.Generator) -> torch.Tensor:
    """Normalised random images ``(4, C, 32, 32)`` of the checkpoint's pixel range."""
    images = rng.integers(0, int(norm["scale"]) + 1, (4, 32, 32, channels)).astype(np.int32)
    return normalize(torch.from_numpy(images), norm, torch.device("cpu"), channels_last=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Checkpoints and exports made once per module, on first use."""
    root = tmp_path_factory.mktemp("export")
    made: dict = {}

    def get(name: str, *args: str) -> Path:
        key = (name, *args)
        if key not in made:
            ckpt = root / f"{name}.pt"
            if not ckpt.exists():
                make_checkpoint(ckpt, **MODELS[name])
            if not args:
                return ckpt
            out = root / f"{name}-{len(made)}{'.ts.pt' if 'torchscript' in args else '.onnx'}"
            assert main(["export", "-m", str(ckpt), "-o", str(out), "--quiet", *args]) == 0
            made[key] = out
        return made[key]

    return get


@pytest.fixture
def onnx_runtime():
    for module in ("onnx", "onnxscript"):
        pytest.importorskip(module)
    return pytest.importorskip("onnxruntime")


def random_images(shape: tuple[int, int, int], channels: int, dtype: str, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 4095 if dtype == "float32" else 255
    return rng.integers(0, top + 1, (*shape, channels)).astype(dtype)


def pytorch_logits(ckpt: Path, images: np.ndarray) -> torch.Tensor:
    """The checkpoint's logits through the training-time path: core.device.normalize, then the model."""
    checkpoint = load_checkpoint(ckpt)
    with torch.no_grad():
        x = normalize(torch.from_numpy(images), checkpoint["norm"], torch.device("cpu"), channels_last=False)
        return build_model(checkpoint)(x)


def run_onnx(ort, path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_logits_match_pytorch_on_sizes_not_seen_at_export(store, onnx_runtime, name):
    path = store(name, "--format", "onnx")
    ckpt = store(name)
    dtype = "float32" if name == "grey16" else "uint8"
    for shape in SIZES:
        images = random_images(shape, MODELS[name]["channels"], dtype)
        expected = pytorch_logits(ckpt, images).numpy()
        got = run_onnx(onnx_runtime, path, images)
        assert got.shape == expected.shape == (shape[0], max(MODELS[name]["classes"], 1), *shape[1:])
        assert expected.std() > 0.1  # logits of real size, so the tolerance below means something
        assert np.abs(got - expected).max() < 1e-4, shape


@pytest.mark.parametrize("name, args", [("rgb3", []), ("pytorch_unet", ["--opset", "17"])])
def test_onnx_with_argmax_outputs_the_class_indices(store, onnx_runtime, name, args):
    path = store(name, "--with-argmax", *args)
    for shape in SIZES[1:3]:
        images = random_images(shape, 3, "uint8")
        logits = pytorch_logits(store(name), images)
        expected = (torch.sigmoid(logits[:, 0]) > 0.5).long() if logits.shape[1] == 1 else logits.argmax(1)
        got = run_onnx(onnx_runtime, path, images)
        assert got.dtype == np.int64 and got.shape == shape
        assert len(np.unique(got)) > 1 and np.array_equal(got, expected.numpy())


def test_torchscript_matches_eager_and_carries_its_metadata(store):
    logits_path = store("rgb3", "--format", "torchscript")
    argmax_path = store("rgb3", "--format", "torchscript", "--with-argmax")
    extra = {"unetseg.json": ""}
    traced = torch.jit.load(str(logits_path), _extra_files=extra)
    argmax = torch.jit.load(str(argmax_path))
    assert json.loads(extra["unetseg.json"]) == json.loads(Path(f"{logits_path}.json").read_text())
    for shape in SIZES:
        images = random_images(shape, 3, "uint8")
        expected = pytorch_logits(store("rgb3"), images)
        with torch.no_grad():
            got = traced(torch.from_numpy(images))
            indices = argmax(torch.from_numpy(images))
        assert (got - expected).abs().max() < 1e-4, shape
        assert torch.equal(indices, expected.argmax(1))


def test_metadata_and_sidecar_describe_the_model(store, onnx_runtime):
    import onnx

    path = store("rgb3", "--format", "onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert {key: json.loads(props[key]) for key in sidecar} == sidecar and sidecar["format"] == "unetseg-export"
    checkpoint = torch.load(store("rgb3"), weights_only=True)
    assert sidecar["class_map"]["values"] == [0, 128, 255]
    assert sidecar["class_map"]["names"] == ["background", "cell", "edge"]
    assert sidecar["class_map"]["colors"] == checkpoint["class_map"]["colors"]
    assert sidecar["norm"] == checkpoint["norm"] and sidecar["channels"] == 3 and sidecar["scale"] == 0.5
    assert sidecar["model"] == {"name": "unet", "n_channels": 3, "n_classes": 3, "bilinear": True, "width": 4}
    assert sidecar["input"] == {"name": "images", "shape": ["batch", "height", "width", 3], "dtype": "uint8"}
    assert sidecar["output"]["shape"] == ["batch", 3, "height", "width"] and sidecar["min_size"] == 16
    assert sidecar["opset"] == 18 and sidecar["exporter"] == "torch.onnx.export(dynamo=True)"
    legacy = json.loads(Path(f"{store('pytorch_unet', '--with-argmax', '--opset', '17')}.json").read_text())
    assert legacy["source"] == "pytorch-unet" and legacy["class_map"]["values"] == [0, 255]
    assert legacy["norm"] == {"scale": 255.0, "mean": [0.0] * 3, "std": [1.0] * 3} and legacy["scale"] == 0.5
    assert legacy["output"]["name"] == "indices" and legacy["exporter"] == "torch.onnx.export(dynamo=False)"
    assert json.loads(Path(f"{store('grey16', '--format', 'onnx')}.json").read_text())["input"]["dtype"] == "float32"


def write_images(folder: Path, name: str) -> Path:
    """Three images with shapes, of odd sizes, in the model's input kind (8-bit RGB, or 16-bit grey up to 4095)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i, (height, width) in enumerate([(75, 101), (64, 90), (41, 57)]):
        grey, _ = draw_pair(rng, (width, height), (0, 255))
        if name == "grey16":
            Image.fromarray(grey.astype(np.uint16) * 16).save(folder / f"im{i}.png")
        else:
            Image.fromarray(np.stack([grey, 255 - grey, grey // 2 + 64], axis=2)).save(folder / f"im{i}.png")
    return folder


@pytest.mark.parametrize("name, extra", [("rgb3", ["-s", "0.8"]), ("pytorch_unet", ["-t", "0.6"]), ("grey16", [])])
def test_onnx_predict_writes_the_same_masks_as_the_checkpoint(store, onnx_runtime, tmp_path, name, extra):
    import unetseg

    images = write_images(tmp_path / "imgs", name)
    common = ["-i", str(images), "--overlay", "--quiet", *extra]
    assert main(["predict", "-m", str(store(name)), "-o", str(tmp_path / "pt"), "--device", "cpu", *common]) == 0
    assert main(["predict", "-m", str(store(name, "--format", "onnx")), "-o", str(tmp_path / "ox"), *common]) == 0
    names = sorted(p.name for p in (tmp_path / "pt").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "ox").glob("*.png")) and len(names) == 6
    tables = []
    for d in ("pt", "ox"):
        with open(tmp_path / d / "predictions.csv") as handle:
            tables.append([{k: v for k, v in row.items() if k != "mask"} for row in csv.DictReader(handle)])
    assert tables[0] == tables[1]  # both runtimes write the same predictions.csv (apart from the mask paths)
    for file in names:
        expected, got = (np.asarray(Image.open(tmp_path / d / file)) for d in ("pt", "ox"))
        assert np.array_equal(expected, got), file
        if "overlay" not in file:
            assert len(np.unique(got)) > 1  # masks with more than one class, so equality means something
    onnx_model = unetseg.load(store(name, "--format", "onnx"), device="cpu")
    reference = Segmenter.from_file(store(name), device="cpu")
    image = images / "im2.png"
    assert np.abs(onnx_model.predict_proba(image) - reference.predict_proba(image)).max() < 1e-4
    assert np.array_equal(onnx_model.predict(image), reference.predict(image))


def test_onnx_predict_path_does_not_import_torch(store, onnx_runtime, tmp_path):
    images = write_images(tmp_path / "imgs", "rgb3")
    script = (
        "import sys\n"
        "from unetseg.cli import main\n"
        f"assert main(['predict', '-m', {str(store('rgb3', '--format', 'onnx'))!r}, '-i', {str(images)!r}, "
        f"'-o', {str(tmp_path / 'ox')!r}, '--quiet']) == 0\n"
        "print('torch' in sys.modules)\n"
        f"assert main(['predict', '-m', {str(store('rgb3'))!r}, '-i', {str(images)!r}, "
        f"'-o', {str(tmp_path / 'pt')!r}, '--quiet']) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # the checkpoint path, by contrast, does load torch
    assert len(list((tmp_path / "ox").glob("*.png"))) == 3 and (tmp_path / "ox" / "predictions.csv").is_file()


@pytest.mark.parametrize("size", [(9, 20), (20, 9), (37, 51), (75, 101), (16, 16)])
def test_numpy_bilinear_upsampling_matches_f_interpolate(size):
    from unetseg.predict.onnx import upsample_bilinear

    logits = np.random.default_rng(0).normal(size=(3, 18, 25)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(logits)[None], size, mode="bilinear")[0].numpy()
    assert np.abs(upsample_bilinear(logits, size) - expected).max() < 1e-6


def test_dynamo_failure_falls_back_to_the_torchscript_exporter(store, onnx_runtime, tmp_path, monkeypatch, capsys):
    real = torch.onnx.export

    def without_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_dynamo)
    out = tmp_path / "fallback.onnx"
    assert main(["export", "-m", str(store("rgb3")), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dynamo ONNX exporter failed (dynamo exporter: RuntimeError: simulated dynamo failure)" in printed
    assert "max |logit difference| from PyTorch" in printed and "on (2, 37, 51, 3) images" in printed
    assert json.loads(Path(f"{out}.json").read_text())["exporter"] == "torch.onnx.export(dynamo=False)"
    images = random_images((2, 37, 51), 3, "uint8")
    expected = pytorch_logits(store("rgb3"), images).numpy()
    assert np.abs(run_onnx(onnx_runtime, out, images) - expected).max() < 1e-4


def test_an_export_that_fails_on_other_sizes_is_refused(store, onnx_runtime, tmp_path, monkeypatch):
    """Traced at an even size, the U-Net's padding is left out of the graph: the check at 37 x 51 must catch it."""
    from unetseg import export

    monkeypatch.setattr(export, "EXAMPLE_SIZE", (32, 32))
    for fmt, needle in [("onnx", "ONNX export failed: dynamo exporter"), ("torchscript", "")]:
        out = tmp_path / f"bad.{fmt}"
        with pytest.raises(RuntimeError, match=needle):
            export.export_model(
                build(ExportConfig, {"model_path": str(store("rgb3")), "output": str(out), "format": fmt})
            )
        assert not out.exists() and not Path(f"{out}.json").exists()


def test_format_and_output_default_from_the_names(tmp_path):
    ckpt = str(tmp_path / "best.pt")
    assert build(ExportConfig, {"model_path": ckpt}).output == str(tmp_path / "best.onnx")
    torchscript = build(ExportConfig, {"model_path": ckpt, "format": "torchscript"})
    assert torchscript.output == str(tmp_path / "best.torchscript.pt")
    assert build(ExportConfig, {"model_path": ckpt, "output": "m.pt"}).format == "torchscript"
    assert build(ExportConfig, {"model_path": ckpt, "output": "m.onnx"}).format == "onnx"


def plain_onnx(path: Path) -> Path:
    """An ONNX file without unetseg metadata."""
    torch.onnx.export(torch.nn.Conv2d(1, 1, 1), (torch.rand(1, 1, 4, 4),), str(path), dynamo=False)
    return path


ONNX_CASE = pytest.mark.slow  # needs an exported model: seconds per export on 2 CPU cores


@pytest.mark.parametrize(
    "args, needle",
    [
        (["export", "-m", "{tmp}/missing.pt", "-o", "{tmp}/m.onnx"], "missing.pt: checkpoint file does not exist"),
        (["export", "-o", "{tmp}/m.onnx"], "-m/--model is required"),
        (["export", "-m", "{ckpt}", "--opset", "9"], "--opset 9: choose an opset from 13 to 23"),
        (["export", "-m", "{ckpt}", "--format", "torchscript", "--opset", "18"], "--opset applies to --format onnx"),
        (["export", "-m", "{ckpt}", "-o", "{ckpt}", "--format", "torchscript"], "is the checkpoint being exported"),
        (["export", "-m", "{ckpt}", "-o", "{tmp}"], "this is a folder; name the file to write"),
        (["predict", "-m", "{tmp}/missing.onnx", "-i", "{image}"], "missing.onnx: ONNX model file does not exist"),
        (["predict", "-m", "{garbage}", "-i", "{image}"], "garbage.onnx: not a readable ONNX model"),
        (["predict", "-m", "{plain}", "-i", "{image}"], "plain.onnx: this ONNX model carries no unetseg metadata"),
        pytest.param(["predict", "-m", "{argmax}", "-i", "{image}"], "exported with --with-argmax", marks=ONNX_CASE),
        pytest.param(
            ["predict", "-m", "{onnx}", "-i", "{image}", "--amp"],
            "--amp is not available with an ONNX model",
            marks=ONNX_CASE,
        ),
        pytest.param(
            ["predict", "-m", "{onnx}", "-i", "{image}", "--device", "mps"],
            "ONNX models run on auto, cpu, cuda",
            marks=ONNX_CASE,
        ),
        pytest.param(
            ["predict", "-m", "{onnx}", "-i", "{image}", "-s", "0.1"],
            "smaller than the 16x16 the U-Net needs",
            marks=ONNX_CASE,
        ),
        pytest.param(["predict", "-m", "{onnx}"], "-i/--input is required", marks=ONNX_CASE),
    ],
)
def test_bad_input_exits_2_with_one_message(store, onnx_runtime, tmp_path, capsys, args, needle):
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    made = {  # only what the case names: an ONNX export costs seconds
        "tmp": lambda: tmp_path,
        "ckpt": lambda: store("rgb3"),
        "onnx": lambda: store("rgb3", "--format", "onnx"),
        "argmax": lambda: store("rgb3", "--with-argmax"),
        "garbage": lambda: tmp_path / "garbage.onnx",
        "plain": lambda: plain_onnx(tmp_path / "plain.onnx"),
        "image": lambda: write_images(tmp_path / "imgs", "rgb3") / "im0.png",
    }
    names = {key: make() for key, make in made.items() if any(f"{{{key}}}" in a for a in args)}
    assert main([a.format(**names) for a in args] + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cuda_without_a_cuda_onnxruntime_is_a_clear_error(store, onnx_runtime, tmp_path, capsys):
    if "CUDAExecutionProvider" in onnx_runtime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    image = write_images(tmp_path / "imgs", "rgb3") / "im0.png"
    assert main(["predict", "-m", str(store("rgb3", "--format", "onnx")), "-i", str(image), "--device", "cuda:1"]) == 2
    assert "--device cuda:1: this onnxruntime has no CUDA support" in capsys.readouterr().err


def test_unknown_format_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "-m", "x.pt", "--format", "tflite"])
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_missing_onnx_packages_say_how_to_install_them(store, tmp_path, monkeypatch, capsys, module):
    pytest.importorskip("onnxruntime")
    # onnxruntime is missing before the file is read: any ONNX file will do
    onnx_file = plain_onnx(tmp_path / "plain.onnx") if module == "onnxruntime" else None
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    if module == "onnx":
        args = ["export", "-m", str(store("rgb3")), "-o", str(tmp_path / "m.onnx")]
    else:
        args = ["predict", "-m", str(onnx_file), "-i", str(write_images(tmp_path / "imgs", "rgb3"))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"package {module} is not installed" in err and "pip install 'unetseg[onnx]'" in err


def test_torchscript_export_does_not_need_onnx(store, tmp_path, monkeypatch):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "m.pt"
    assert main(["export", "-m", str(store("pytorch_unet")), "-o", str(out), "--quiet"]) == 0
    assert zipfile.is_zipfile(out) and json.loads(Path(f"{out}.json").read_text())["exporter"] == "torch.jit.trace"


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``unetseg ARGS`` in a fresh Python process, as a user runs it (no state left over from other tests)."""
    return subprocess.run(
        [sys.executable, "-m", "unetseg", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow  # trains, exports and predicts in subprocesses: 17-21 s each on 2 CPU cores
@pytest.mark.parametrize("train_args", [["--width", "8"], ["--precision", "bf16"]], ids=["fp32-width8", "bf16"])
def test_a_checkpoint_from_train_exports_with_the_defaults_and_predicts_the_same_masks(
    onnx_runtime, tmp_path, train_args
):
    """The user's path: train with the CLI's defaults, export with the defaults, predict with the ONNX file."""
    import unetseg

    data = make_dataset(tmp_path / "data", count=6)
    run = tmp_path / "run"
    trained = cli("train", "--data", str(data), "-e", "1", "--out", str(run), "--quiet", *train_args)
    assert trained.returncode == 0, trained.stderr
    ckpt = run / "checkpoints" / "best.pt"
    exported = cli("export", "-m", str(ckpt), "-o", str(tmp_path / "m.onnx"))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "dynamo=True" in exported.stdout and "failed" not in exported.stdout  # the default exporter, no fallback
    images = data / "imgs"
    for model, out in ((tmp_path / "m.onnx", "ox"), (ckpt, "pt")):
        assert main(["predict", "-m", str(model), "-i", str(images), "-o", str(tmp_path / out), "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "pt").glob("*.png"))
    assert len(names) == 6 and names == sorted(p.name for p in (tmp_path / "ox").glob("*.png"))
    for name in names:
        assert np.array_equal(*(np.asarray(Image.open(tmp_path / d / name)) for d in ("pt", "ox"))), name
    image = images / names[0]  # after one epoch the masks may be all one class: the probabilities must agree too
    expected = Segmenter.from_file(ckpt, device="cpu").predict_proba(image)
    assert np.abs(unetseg.load(tmp_path / "m.onnx", device="cpu").predict_proba(image) - expected).max() < 1e-4


def test_export_refuses_to_write_over_the_checkpoint(store, tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(store("rgb3").read_bytes())
    (tmp_path / "link.pt").hardlink_to(ckpt)
    before = ckpt.read_bytes()
    cases = [
        (["-o", str(ckpt), "--format", "torchscript"], "is the checkpoint being exported"),
        (["-o", str(tmp_path / "sub" / ".." / "best.pt")], "is the checkpoint being exported"),
        (["-o", str(tmp_path / "link.pt")], "is the checkpoint being exported"),
        (["-o", str(tmp_path / "best")], "side-car best.json is the checkpoint being exported"),
    ]
    (tmp_path / "sub").mkdir()
    for args, needle in cases:
        if "best.json" in needle:
            ckpt.rename(tmp_path / "best.json")
            ckpt = tmp_path / "best.json"
        assert main(["export", "-m", str(ckpt), *args, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, args
        assert ckpt.read_bytes() == before


@pytest.mark.parametrize("where", ["missing", "file", "read-only"])
def test_export_into_a_folder_that_cannot_take_the_file_exits_2_naming_it(store, tmp_path, capsys, where):
    folder = tmp_path / "out"
    if where == "file":
        folder.write_text("")
    elif where == "read-only":
        folder.mkdir()
        folder.chmod(0o555)
        probe = folder / "probe"
        try:
            probe.write_text("")  # root ignores permissions
            pytest.skip("this user can write into read-only folders")
        except PermissionError:
            pass
    try:
        assert main(["export", "-m", str(store("rgb3")), "-o", str(folder / "m.onnx"), "--quiet"]) == 2
    finally:
        if where == "read-only":
            folder.chmod(0o755)
    err = capsys.readouterr().err
    assert f"-o {folder / 'm.onnx'}" in err and str(folder) in err and "Traceback" not in err


def test_a_full_disk_or_a_folder_turned_read_only_exits_2_naming_the_file(store, tmp_path, monkeypatch, capsys):
    """ENOSPC or EACCES while the file is written (after the up-front check passed) is the user's to fix."""
    import errno

    from unetseg.core import atomic

    real_replace = atomic.os.replace
    for code, words in [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]:

        def refuse(src, dst, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(atomic.os, "replace", refuse)
        out = tmp_path / f"m{code}.pt"
        assert main(["export", "-m", str(store("pytorch_unet")), "-o", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and words in err and "Traceback" not in err
        monkeypatch.setattr(atomic.os, "replace", real_replace)
        assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

"""``unetseg export``: a checkpoint as an ONNX or TorchScript model that takes raw pixels.

The exported model takes images ``(B, H, W, C)``: uint8, or float32 holding the same pixel values (0-255 for
8-bit images, not rescaled to [0, 1]). It divides by the checkpoint's ``norm.scale``, subtracts ``norm.mean`` and
divides by ``norm.std``, as training did, and returns logits ``(B, K, H, W)`` float32; with ``--with-argmax`` it
returns class indices ``(B, H, W)`` int64 instead (sigmoid > 0.5 for one-output models). Batch, height and width
are dynamic; height and width must be at least 16 (four 2x poolings must leave one pixel). Resizing by the
training scale and mapping class indices to mask values are left to the caller: both are in the metadata.

The class map, channels, normalisation, training scale and model spec travel inside the file (ONNX
``metadata_props``, JSON values; TorchScript ``_extra_files["unetseg.json"]``) and in a side-car ``<FILE>.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetseg import __version__
from unetseg.config import ExportConfig
from unetseg.core.atomic import write_atomic
from unetseg.core.checkpoint import build_model, load_checkpoint
from unetseg.core.device import to_unit
from unetseg.core.meta import Norm
from unetseg.errors import UserError
from unetseg.predict.onnx import EXPORT_FORMAT, EXPORT_VERSION, MIN_SIZE, require

DEFAULT_OPSET = 18  # the oldest opset torch's dynamo exporter writes without a (lossy) version conversion
# Example size for tracing: odd at every U-Net level (31, 15, 7, 3) so every `Up` pads, which puts the padding
# into the graph for all sizes; not square, or the exporter may tie height to width.
EXAMPLE_SIZE = (31, 47)
CHECK_SIZE = (37, 51)  # the exported model is checked against PyTorch on a size it was not traced with
EXTRA_FILE = "unetseg.json"


class Deployable(nn.Module):
    """The U-Net with its input conversion and normalisation folded in: pixels ``(B, H, W, C)`` -> logits."""

    def __init__(self, model: nn.Module, norm: Norm, with_argmax: bool = False) -> None:
        super().__init__()
        self.model = model
        self.scale = float(norm["scale"])
        # Buffers of this module, not core.device's cached constants: torch.export traces with fake tensors, and
        # a constant first made (and cached) during tracing would be a fake tensor in every later eager call.
        self.register_buffer("mean", torch.tensor([float(m) for m in norm["mean"]]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in norm["std"]]).view(1, -1, 1, 1))
        self.with_argmax = with_argmax
        self.binary = model.n_classes == 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Training's own normalisation (core.device.normalize), traced into the graph with the statistics as
        # constants: pixels / scale, then (x - mean) / std per channel.
        x = to_unit(images, {"scale": self.scale}, images.device)  # (B, C, H, W) float32 in [0, 1]
        logits = self.model(((x - self.mean) / self.std).contiguous())  # (B, K, H, W)
        if not self.with_argmax:
            return logits
        if self.binary:
            return (torch.sigmoid(logits[:, 0]) > 0.5).to(torch.int64)
        return logits.argmax(1)


def export_info(ckpt: dict, input_dtype: str, with_argmax: bool) -> dict:
    """What a runtime needs besides the graph: class map, channels, normalisation, scale, model, tensor contract."""
    channels = int(ckpt["channels"])
    spec = ckpt["model"]
    classes = int(spec["n_classes"] if "n_classes" in spec else spec["members"][0]["n_classes"])  # an ensemble
    norm = ckpt["norm"]
    activation = "sigmoid" if classes == 1 else "softmax"
    logits = {"name": "logits", "shape": ["batch", classes, "height", "width"], "dtype": "float32"}
    indices = {"name": "indices", "shape": ["batch", "height", "width"], "dtype": "int64"}
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "unetseg_version": __version__,
        "source": ckpt.get("source", "unetseg"),
        "model": dict(ckpt["model"]),
        "channels": channels,
        "norm": {
            "scale": float(norm["scale"]),
            "mean": list(map(float, norm["mean"])),
            "std": list(map(float, norm["std"])),
        },
        "scale": float(ckpt.get("scale", 1.0)),
        "class_map": ckpt["class_map"],
        "input": {"name": "images", "shape": ["batch", "height", "width", channels], "dtype": input_dtype},
        "min_size": MIN_SIZE,
        "output": indices if with_argmax else logits | {"activation": activation},
        "with_argmax": with_argmax,
    }


def export_model(cfg: ExportConfig) -> Path:
    """``unetseg export``: write the model file and its side-car JSON; returns the model file's path."""
    ckpt = load_checkpoint(cfg.model_path)
    out = Path(cfg.output)
    check_output(out, Path(cfg.model_path))  # before the (slow) export runs
    input_dtype = cfg.input_dtype or ("uint8" if float(ckpt["norm"]["scale"]) <= 255 else "float32")
    model = Deployable(build_model(ckpt), ckpt["norm"], cfg.with_argmax).eval()
    info = export_info(ckpt, input_dtype, cfg.with_argmax)
    example = _pixels(EXAMPLE_SIZE, int(ckpt["channels"]), input_dtype)
    with _quiet_torch(), torch.no_grad():
        if cfg.format == "onnx":
            data, info, check = _onnx_bytes(model, example, info, cfg.opset or DEFAULT_OPSET, cfg.quiet)
        else:
            data, info, check = _torchscript_bytes(model, example, info)
    _write(out, data)
    _write(out.with_name(out.name + ".json"), json.dumps(info, indent=2).encode())
    if not cfg.quiet:
        print(_summary(out, info, check))
    return out


def check_output(out: Path, model_path: Path) -> None:
    """Refuse an output that would replace the checkpoint, or that cannot be written, before any work is done."""
    for target in (out, out.with_name(out.name + ".json")):  # the model file and its side-car
        same = target.resolve() == model_path.resolve()
        if same or target.exists() and model_path.exists() and os.path.samefile(target, model_path):
            what = "this" if target == out else f"its side-car {target.name}"
            raise UserError(
                f"-o {out}: {what} is the checkpoint being exported ({model_path}); write the export to another file"
            )
    if out.is_dir():
        raise UserError(f"-o {out}: this is a folder; name the file to write, e.g. -o {out / 'model.onnx'}")
    folder = out.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"-o {out}: the folder {folder} {what}; create it or write the export elsewhere")
    try:
        with tempfile.TemporaryFile(dir=folder):  # the real test: permissions, read-only mounts, quotas
            pass
    except OSError as err:
        raise UserError(f"-o {out}: cannot write in {folder} ({_reason(err)}); choose a writable folder") from None


def _write(path: Path, data: bytes) -> None:
    """Write one output atomically; a full disk or a folder that turned read-only is the user's to fix."""
    try:
        write_atomic(path, data)
    except OSError as err:
        raise UserError(
            f"-o {path}: could not write the file ({_reason(err)}); free some disk space or choose another folder"
        ) from None


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _pixels(size: tuple[int, int], channels: int, dtype: str, batch: int = 2) -> torch.Tensor:
    """Random images ``(batch, H, W, C)``; batch 2 because torch.export fixes a dimension traced at size 1."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *size, channels), generator=gen, dtype=torch.uint8)
    return images if dtype == "uint8" else images.to(torch.float32)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence the exporters' warnings and logs (tracer notes, missing torchvision): nothing the user can act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check(model: nn.Module, run: Callable[[np.ndarray], np.ndarray], info: dict) -> str:
    """Run the export on images of a size it was not traced with and compare with PyTorch; a mismatch raises."""
    images = _pixels(CHECK_SIZE, info["channels"], info["input"]["dtype"])
    expected = model(images).numpy()
    got = run(images.numpy())
    if got.shape != expected.shape:
        raise RuntimeError(f"output shape {got.shape} on {tuple(images.shape)} images, expected {expected.shape}")
    where = f"on {tuple(images.shape)} images"
    if info["with_argmax"]:
        wrong = int((got != expected).sum())
        if wrong > expected.size // 1000:  # an index may flip where two logits tie to rounding
            raise RuntimeError(f"{wrong} of {expected.size} class indices differ from PyTorch {where}")
        return f"{wrong} of {expected.size} class indices differ from PyTorch {where}"
    diff = float(np.abs(got - expected).max())
    if not diff <= 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(f"logits differ from PyTorch by up to {diff:.3g} {where}")
    return f"max |logit difference| from PyTorch {diff:.1e} {where}"


def _onnx_bytes(
    model: nn.Module, example: torch.Tensor, info: dict, opset: int, quiet: bool
) -> tuple[bytes, dict, str]:
    """Export with the dynamo exporter (opset >= 18), falling back to the TorchScript-based one if that fails."""
    exporters = ["dynamo", "torchscript"] if opset >= DEFAULT_OPSET else ["torchscript"]
    for module in ("onnx", "onnxruntime", *(["onnxscript"] if "dynamo" in exporters else [])):
        require(module)  # all three come with unetseg[onnx]; say so before any work
    problems = []
    for exporter in exporters:
        try:
            proto, check = _export_checked(model, example, info, opset, exporter == "dynamo")
            break
        except Exception as err:  # any exporter failure: try the next exporter, report all if none works
            problems.append(f"{exporter} exporter: {type(err).__name__}: {str(err)[:300]}")
            if exporter == "dynamo" and not quiet:
                print(f"note: torch's dynamo ONNX exporter failed ({problems[-1]}); using dynamo=False instead")
    else:
        raise RuntimeError("ONNX export failed: " + "; ".join(problems))
    info = info | {"exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})", "opset": opset}
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.doc_string = _contract(info)
    return proto.SerializeToString(), info, check


def _export_checked(model: nn.Module, example: torch.Tensor, info: dict, opset: int, dynamo: bool) -> tuple:
    """An ONNX ``ModelProto`` that passes the ONNX checker and matches PyTorch on ONNX Runtime, and the check."""
    import onnx
    import onnxruntime as ort

    proto = _onnx_proto(model, example, info, opset, dynamo)
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return proto, _check(model, lambda x: session.run(None, {"images": x})[0], info)


def _onnx_proto(model: nn.Module, example: torch.Tensor, info: dict, opset: int, dynamo: bool) -> object:
    """The model as an ONNX ``ModelProto`` with dynamic batch, height and width (weights inside, no .data file)."""
    import onnx

    output = info["output"]["name"]
    if dynamo:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("height", min=MIN_SIZE)}
        dims[2] = torch.export.Dim("width", min=MIN_SIZE)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=[output],
            dynamic_shapes={"images": dims},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        return program.model_proto
    axes = ["batch", "height", "width"]
    out_axes = dict(enumerate(axes)) if info["with_argmax"] else {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=["images"],
        output_names=[output],
        dynamic_axes={"images": dict(enumerate(axes)), output: out_axes},
        opset_version=opset,
    )
    return onnx.load_from_string(buffer.getvalue())


def _torchscript_bytes(model: nn.Module, example: torch.Tensor, info: dict) -> tuple[bytes, dict, str]:
    """Trace to TorchScript (the U-Net's size-dependent padding is traced as shape arithmetic) and check it."""
    info = info | {"exporter": "torch.jit.trace"}
    traced = torch.jit.trace(model, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(info)})
    loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
    check = _check(model, lambda x: loaded(torch.from_numpy(x)).numpy(), info)
    return buffer.getvalue(), info, check


def _describe(tensor: dict) -> str:
    return f"{tensor['name']} {tensor['dtype']} ({', '.join(map(str, tensor['shape']))})"


def _contract(info: dict) -> str:
    """The input/output contract in one line (the ONNX model's doc string)."""
    return (
        f"input {_describe(info['input'])}: pixel values as stored in the image file, height and width "
        f">= {info['min_size']}; output {_describe(info['output'])}"
    )


def _summary(out: Path, info: dict, check: str) -> str:
    kind = f"ONNX opset {info['opset']}" if "opset" in info else "TorchScript"
    return "\n".join(
        [
            f"wrote {out} ({kind}, {info['exporter']})",
            f"  input   {_describe(info['input'])}, pixel values as stored in the image file; "
            f"height and width >= {info['min_size']}",
            f"  output  {_describe(info['output'])}",
            f"  check   {check}",
            f"  class map and preprocessing (scale {info['scale']:g}, norm) in the file's metadata and {out.name}.json",
        ]
    )

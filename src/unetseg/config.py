"""Every option of every command, with its default, its range and the reason for it.

The command line and ``--config FILE`` (YAML) fill these dataclasses; the command line wins over the file. Every
value, from any source, passes the checks in :mod:`unetseg.options` when a config is constructed. The data and
training options live in :mod:`unetseg.data_config` and :mod:`unetseg.train_config`, re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unetseg.data_config import SCALE, DataConfig, DatasetConfig, SourceConfig
from unetseg.errors import UserError
from unetseg.options import BIG, Checked, check_names, check_suffix, check_value, from_text, option, parse_duration
from unetseg.train_config import (
    BATCH,
    LOG_FORMATS,
    MAX_SIZE,
    MIN_TILE,
    PLAN_SKIP,
    PLAN_USES,
    PRECISIONS,
    WORKERS,
    TrainConfig,
)

__all__ = [
    "LOG_FORMATS",
    "PLAN_SKIP",
    "PLAN_USES",
    "DataConfig",
    "DatasetConfig",
    "ConvertConfig",
    "DoctorConfig",
    "EvaluateConfig",
    "ExportConfig",
    "PredictConfig",
    "SourceConfig",
    "TrainConfig",
    "build",
    "check_tiling",
    "load_yaml",
    "parse_duration",
    "to_dict",
]


@dataclass
class EvaluateConfig(SourceConfig):
    """``unetseg evaluate``: scores of a checkpoint on a dataset (its class map and channels come with it)."""

    data: str | None = option(
        None, "dataset folder to score, holding imgs/ and masks/", group="data", shown="none; or --images and --masks"
    )

    model_path: str = option(
        "",
        "checkpoint to evaluate (unetseg .pt or Pytorch-UNet .pth)",
        "-m",
        long="--model",
        group="model",
        required="the checkpoint to evaluate",
    )
    scale: float | None = option(
        None, "image scale", "-s", group="model", **SCALE, shown="the scale the model was trained at"
    )
    out: str | None = option(
        None, "folder for per_image.csv, confusion.csv and confusion.png", group="output", shown="print and --json only"
    )
    json: str | None = option(None, "also write the scores to this JSON file", group="output")
    report: str | None = option(
        None,
        "folder for report.html: sortable per-class and per-image tables, confusion matrix, the --worst images "
        "with false positives and negatives coloured",
        group="output",
        shown="none",
    )
    boundary: bool = option(
        False, "also compute HD95 and average surface distance per class (needs scipy)", group="output"
    )
    worst: int = option(
        5, "list this many images with the lowest foreground Dice (0: none)", group="output", low=0, high=BIG
    )
    score: str = option(
        "auto",
        "headline score: auto (the one the model was trained with), foreground (classes 1..K-1), all (mIoU)",
        choices=("auto", "foreground", "all"),
        group="output",
    )
    batch_size: int = option(8, "images per batch (the scores do not depend on it)", "-b", group="hardware", **BATCH)
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N, mps", group="hardware")
    amp: bool = option(False, "mixed-precision inference", group="hardware")
    precision: str = option(
        "auto",
        "auto (as training chooses it, so scores equal the logged validation scores), fp32, bf16, fp16",
        choices=PRECISIONS,
        group="hardware",
    )


@dataclass
class DoctorConfig(DatasetConfig):
    """``unetseg doctor``: checks a dataset and says what is wrong and how to fix it."""

    workers: int | None = option(
        None, "threads that read the files", group="hardware", **WORKERS, shown="twice the CPU cores, at most 8"
    )


@dataclass
class ConvertConfig(DatasetConfig):
    """``unetseg convert``: an annotation source into a plain folder dataset, or a dataset into COCO JSON."""

    out: str = option("", "folder to write", "-o", group="output", required="the folder to write (-o DIR)")
    format: str = option(
        "folder",
        "what to write: folder (imgs/, masks/, classes.yaml) or coco (images/, annotations.json with RLE masks)",
        choices=("folder", "coco"),
        group="output",
    )
    overwrite: bool = option(False, "replace an existing, non-empty output folder", group="output")


# Lossless types that hold masks; JPEG and WebP would change mask values.
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif", ".npy")


def check_mask_suffix(name: str, text: str) -> None:
    """Mask files are written losslessly, under a plain extension (no folders or names: they stay inside -o)."""
    check_suffix(name, text)
    if text.lower() not in MASK_SUFFIXES:
        raise UserError(
            f"{name} {text!r}: must be a mask file type, one of {', '.join(MASK_SUFFIXES)} "
            "(an extension only: no folders or names)"
        )


@dataclass
class PredictConfig(Checked):
    """``unetseg predict``: masks for image files, folders or globs."""

    SUFFIXES = MASK_SUFFIXES

    model_path: str = option(
        "",
        "checkpoint (unetseg .pt or Pytorch-UNet .pth), or an ONNX file written by unetseg export",
        "-m",
        long="--model",
        group="input and output",
        required="the checkpoint (or ONNX export) to predict with",
    )
    input: list[str] = option(
        None, "image files, folders or globs", "-i", group="input and output", required="the images to segment"
    )
    output: list[str] | None = option(
        None,
        "output folder, a file name when there is one input, or one file name per input as Pytorch-UNet takes them",
        "-o",
        group="input and output",
        shown="predictions/ in the current folder",
    )
    overwrite: bool = option(
        False,
        "replace existing files that unetseg predict did not write (inputs are never written over)",
        group="input and output",
    )
    scale: float | None = option(
        None, "input scale", "-s", group="inference", **SCALE, shown="the scale the model was trained at"
    )
    threshold: float = option(
        0.5,
        "probability threshold for one-output (sigmoid) models",
        "-t",
        "--mask-threshold",
        group="inference",
        low=0,
        low_open=True,
        high=1,
        high_open=True,
    )
    format: str = option(
        "value",
        "mask format: value (the training masks' own values; palette PNGs for palette masks), "
        "index (class indices 0..K-1), color (RGB colours of the class map)",
        choices=("value", "index", "color"),
        group="input and output",
    )
    viz: bool = option(
        False,
        "also write an overlay of the mask on the image (<name>_overlay.png)",
        "-v",
        "--overlay",
        group="input and output",
    )
    save: bool = option(
        True,
        "write the masks; -n/--no-save writes only overlays, probabilities and predictions.csv",
        group="input and output",
    )
    classes: int | None = option(
        None,
        "the model's number of classes, checked against the checkpoint (Pytorch-UNet's flag)",
        "-c",
        group="inference",
        low=1,
        high=255,
        shown="the checkpoint's",
    )
    bilinear: bool | None = option(
        None,
        "whether the model upsamples bilinearly, checked against the checkpoint (Pytorch-UNet's flag)",
        group="inference",
        shown="the checkpoint's",
    )
    probs: bool = option(
        False,
        "also write class probabilities: <name>_probs.png (16-bit foreground probability) for binary models, "
        "<name>_probs.npy (float16, K x H x W) otherwise",
        group="input and output",
    )
    tile: int | None = option(
        None,
        "sliding-window inference on tiles of this many pixels (of the scaled image), Gaussian-blended",
        group="inference",
        low=MIN_TILE,
        high=4 * MAX_SIZE,
        unit="a tile size",
        hint="the U-Net halves a window 4 times",
        shown="whole images",
    )
    overlap: float = option(
        0.5,
        "share of a tile that neighbouring tiles overlap (with --tile)",
        group="inference",
        low=0,
        high=1,
        high_open=True,
        unit="a share",
        hint="e.g. 0.5 (half a tile shared by neighbours)",
    )
    tta: str | None = option(
        None,
        "test-time augmentation: --tta (flips, 4 views) or --tta full (flips and 90-degree turns, 8 views)",
        choices=("flips", "full"),
        const="flips",
        group="inference",
        shown="off",
    )
    suffix: str = option(
        ".png",
        "file type of the written masks: .png, .tif, .tiff, .bmp, .gif or .npy",
        group="input and output",
        check=check_mask_suffix,
    )
    batch_size: int = option(
        8, "images per batch on the device (windows per batch with --tile)", "-b", group="hardware", **BATCH
    )
    workers: int | None = option(
        None,
        "threads that decode images, and as many that write results",
        group="hardware",
        **WORKERS,
        shown="half the CPU cores",
    )
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N, mps", group="hardware")
    amp: bool = option(False, "mixed-precision inference (bf16 where supported)", group="hardware")
    quiet: bool = option(False, "print nothing but errors", group="input and output")

    def check_together(self) -> None:
        if self.output is not None and not all(self.output):
            raise UserError("-o/--output: an empty name; give a folder or file names")


EXPORT_FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
OPSET_RANGE = (13, 23)  # 13-20 written by torch's TorchScript-based exporter, 18-23 by its dynamo exporter


@dataclass
class ExportConfig(Checked):
    """``unetseg export``: a deployable model that takes raw pixels and carries its class map."""

    model_path: str = option(
        "",
        "checkpoint to export (unetseg .pt or Pytorch-UNet .pth)",
        "-m",
        long="--model",
        required="the checkpoint to export",
    )
    format: str | None = option(
        None,
        "onnx (runs with onnxruntime, no PyTorch needed) or torchscript",
        choices=EXPORT_FORMATS,
        shown="torchscript when -o ends in .pt/.pth/.ts, else onnx",
    )
    output: str | None = option(
        None, "file to write", "-o", shown="beside the checkpoint, <name>.onnx or <name>.torchscript.pt"
    )
    with_argmax: bool = option(False, "output class indices (B, H, W) instead of logits (B, K, H, W)")
    opset: int | None = option(
        None,
        "ONNX operator set; 18 is the oldest that torch's default (dynamo) exporter writes; below 18 the "
        "TorchScript-based exporter is used",
        low=OPSET_RANGE[0],
        high=OPSET_RANGE[1],
        unit="an opset",
        shown="18",
    )
    input_dtype: str | None = option(
        None,
        "input tensor type: uint8, or float32 holding the same pixel values (not rescaled to [0, 1])",
        choices=("uint8", "float32"),
        shown="uint8 for 8-bit models, float32 for 16-bit ones",
    )
    quiet: bool = option(False, "print nothing but errors")

    def check_together(self) -> None:
        if self.format is None:
            suffix = Path(self.output).suffix.lower() if self.output else ""
            self.format = "torchscript" if suffix in TORCHSCRIPT_SUFFIXES else "onnx"
        if self.opset is not None and self.format != "onnx":
            raise UserError(f"--opset applies to --format onnx only; leave it out for --format {self.format}")
        if self.output is None:
            model = Path(self.model_path)
            self.output = str(model.with_suffix(".onnx" if self.format == "onnx" else ".torchscript.pt"))


def check_tiling(tile: int | None, overlap: float) -> None:
    """Clear errors for a tile too small for the U-Net and an overlap outside [0, 1) (Python API of predict)."""
    fields = {f.name: f for f in dataclasses.fields(PredictConfig)}
    check_value(fields["tile"], tile)
    check_value(fields["overlap"], overlap)


def load_yaml(path: str | Path, cls: type | None = None, skip: tuple[str, ...] = (), command: str = "") -> dict:
    """Options from a YAML file, as a dict of field names (dashes allowed).

    With ``cls``, every key must be an option of ``cls`` that the command uses (not in ``skip``), and every value
    passes the same checks as on the command line; errors name the file.
    """
    path = Path(path)
    where = f"--config {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where}: file does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{where}: this is a folder; pass a YAML file of option: value lines") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as err:
        raise UserError(f"{where}: cannot read it ({err.strerror or err}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of option: value, found {type(data).__name__}")
    values = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise UserError(f"{where}: option names are text, not {key!r}")
        if isinstance(value, dict):
            raise UserError(f"{where}: {key} holds a nested mapping; options are flat, e.g. {key}: VALUE")
        values[key.lstrip("-").replace("-", "_")] = value
    if cls is not None:
        try:
            check_names(cls, values, skip, command)
            fields = {f.name: f for f in dataclasses.fields(cls)}
            for name, value in values.items():
                check_value(fields[name], from_text(fields[name], value))
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    return values


def build(cls: type, values: dict, skip: tuple[str, ...] = (), command: str = "") -> Any:
    """Instantiate ``cls`` from a dict (YAML text converted), naming any unknown option or one in ``skip``.

    An option in ``skip`` is refused only when it differs from its default (a run's own config.yaml may hold it).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_names(cls, values, skip, command)
    return cls(**{k: from_text(fields[k], v) for k, v in values.items()})


def to_dict(config: Any) -> dict:
    """A plain dict of the config (YAML- and checkpoint-safe)."""
    return dataclasses.asdict(config)

"""Every option of every command, with its default and the reason for it.

The command line and ``--config FILE`` (YAML) fill these dataclasses; the command line wins over the file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unetseg.errors import UserError

LOG_FORMATS = ("text", "json")


def option(default: Any, help: str, *flags: str, choices: tuple | None = None, const: Any = None) -> Any:
    """A dataclass field that the CLI turns into ``--name`` (plus ``flags``).

    ``const`` makes the value optional on the command line: ``--name`` alone means ``const``.
    """
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices, "const": const})


@dataclass
class DataConfig:
    """Where the data is and how it is read."""

    data: str | None = option(
        None, "dataset folder holding imgs/ (or images/) and masks/ (or labels/); default: the bundled nuclei sample"
    )
    images: str | None = option(None, "image folder (with --masks), instead of --data")
    masks: str | None = option(None, "mask folder (with --images), instead of --data")
    val_data: str | None = option(None, "explicit validation dataset folder instead of a random split")
    scale: float = option(1.0, "downscaling factor of the images (bicubic) and masks (nearest), as Pytorch-UNet", "-s")
    validation: float = option(10.0, "percent of the data used for validation (deterministic given --seed)", "-v")
    classes: int | None = option(
        None, "number of classes (1 = binary with one sigmoid output); default: the number of mask values found", "-c"
    )
    channels: int | None = option(None, "input channels (1, 3 or 4); default: from the images", choices=(1, 3, 4))
    classes_file: str | None = option(
        None,
        "YAML file naming each class's mask value or colour, and an optional ignore value; "
        "default: classes.yaml in the dataset folder when there is one",
    )
    resize_to_mask: bool = option(
        False, "resize images whose size differs from their mask's to the mask's size (aspect ratios must agree)"
    )
    cache: bool = option(
        True,
        "keep a scan index and the decoded arrays (memory-mapped) so later starts read no image twice; "
        "--no-cache decodes into memory and writes nothing",
    )
    cache_dir: str | None = option(
        None, "folder for the index and decoded cache; default: DIR/.unetseg, or ~/.cache/unetseg when DIR is read-only"
    )


@dataclass
class TrainConfig(DataConfig):
    """``unetseg train``: every knob of the training run."""

    config: str | None = option(None, "YAML file with options; the command line wins over it")
    out: str | None = option(None, "run directory (default: runs/<date>-<time>)")
    overwrite: bool = option(False, "allow writing into an existing run directory")
    load: str | None = option(None, "initialise weights from a checkpoint (unetseg or Pytorch-UNet .pth)", "-f")
    epochs: int = option(5, "number of epochs (Pytorch-UNet's default)", "-e")
    batch_size: int = option(8, "images per optimizer step; 8 keeps BatchNorm statistics stable", "-b")
    learning_rate: float = option(1e-3, "peak learning rate; 1e-3 suits AdamW, use ~1e-5 with RMSprop", "-l")
    optimizer: str = option(
        "adamw",
        "optimizer: adamw (converges fast without tuning), adam, sgd, rmsprop",
        choices=("adamw", "adam", "sgd", "rmsprop"),
    )
    weight_decay: float = option(1e-4, "weight decay (Pytorch-UNet's RMSprop used 1e-8)")
    momentum: float = option(0.9, "momentum for sgd and rmsprop (Pytorch-UNet's RMSprop used 0.999)")
    scheduler: str = option(
        "cosine",
        "learning-rate schedule: cosine (smooth decay to the end of the run), poly (nnU-Net's (1 - t)^0.9), "
        "plateau (ReduceLROnPlateau on validation Dice, as Pytorch-UNet), constant",
        choices=("cosine", "poly", "plateau", "constant"),
    )
    warmup_steps: int = option(20, "linear warm-up steps; avoids the early blow-ups of a cold Adam")
    loss: str = option(
        "ce+dice",
        "loss: ce+dice (CE/BCE plus soft Dice per class), ce, focal, focal+dice, tversky, ce+tversky",
        choices=("ce+dice", "ce", "focal", "focal+dice", "tversky", "ce+tversky"),
    )
    class_weights: str = option("none", "per-class loss weights: none, auto (1/sqrt of pixel share), or e.g. 1,5")
    grad_clip: float = option(1.0, "clip the gradient norm (after unscaling) at this value; 0 turns it off")
    amp: bool = option(False, "mixed precision: bf16 where supported, else fp16 with a grad scaler")
    precision: str = option(
        "auto",
        "auto (bf16 where the GPU or CPU runs it natively, else fp32), fp32, bf16, fp16; --amp forces mixed",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    bilinear: bool = option(False, "bilinear up-sampling instead of transposed convolutions")
    width: int = option(64, "channels of the first U-Net level (64 as in Pytorch-UNet)")
    model: str = option("unet", "model architecture")
    patch_size: int | None = option(
        None, "train on random crops of this size; default: whole images when all have one size, else 256"
    )
    augment: str = option(
        "default",
        "augmentation preset: none, flips (flips and 90-degree turns), light (+ mild intensity), default (+ random "
        "scale/rotation/shift, brightness, contrast, gamma, noise, blur), heavy (+ elastic, stronger)",
        choices=("none", "flips", "light", "default", "heavy"),
    )
    foreground_crops: float = option(
        0.33, "share of random crops centred on a foreground pixel (nnU-Net's choice), so small objects are seen"
    )
    accumulate: int = option(1, "accumulate gradients over this many batches per optimizer step")
    ema: float | None = option(
        None, "evaluate and save an exponential moving average of the weights with this decay (e.g. 0.999)"
    )
    patience: int | None = option(None, "early stopping: stop after this many validation rounds without improvement")
    score: str = option(
        "auto",
        "validation score that picks best.pt: auto (mIoU over all classes when class 0 is a real class, else the "
        "foreground Dice), foreground (classes 1..K-1), all (mIoU over every class)",
        choices=("auto", "foreground", "all"),
    )
    val_rounds: int = option(
        5, "validation rounds per epoch (at least one always runs); --plan chooses it from the cost of a round"
    )
    val_every: int = option(
        1, "validate every N epochs (the last one always validates), for epochs much shorter than a validation round"
    )
    val_batch_size: int = option(16, "images per validation batch (inference needs far less memory than training)")
    seed: int = option(0, "random seed for the split, the initial weights and the batch order")
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N, mps")
    workers: int = option(4, "threads that decode the dataset")
    save_every: int | None = option(None, "also write last.pt every N optimizer steps")
    save_epochs: bool = option(
        False, "also keep a checkpoint of every epoch (checkpoints/epoch_NNN.pt); last.pt and best.pt are always kept"
    )
    time_budget: str | None = option(None, "stop cleanly after this long, e.g. 30m, 2h, 90s")
    max_steps: int | None = option(None, "stop after this many optimizer steps")
    compile: bool | None = option(
        None, "torch.compile the training step; default: on for CUDA (faster steps after a one-off compile), off on CPU"
    )
    checkpointing: bool = option(False, "activation checkpointing: recompute activations in backward to save memory")
    channels_last: bool = option(True, "channels-last memory format (faster convolutions on GPU and CPU)")
    logger: str = option(
        "csv",
        "loggers, comma-separated: csv (metrics.csv, train.log, plots/; always on), tensorboard, wandb "
        "(offline unless you are logged in)",
    )
    log_format: str = option(
        "text", "console output: text, or json (one JSON object per line on stdout, for scripts)", choices=LOG_FORMATS
    )
    max_bad_steps: int = option(20, "stop after this many consecutive steps with a non-finite loss or gradient")
    deterministic: bool = option(False, "deterministic kernels on GPU (slower); CPU runs are repeatable anyway")
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across processes under multi-GPU training")
    nproc: int | None = option(None, "start this many training processes with torchrun (one per GPU)")
    log_every: int = option(10, "read the loss and update progress every N steps (reading forces a device sync)")
    folds: int | None = option(
        None,
        "cross-validation: train this many models on deterministic folds, then "
        "report out-of-fold scores and write ensemble.pt",
    )
    fold: int | None = option(None, "with --folds: train only this fold (0-based), e.g. one per machine")
    plan: bool = option(
        True,
        "choose patch size, batch, width, class weights, the validation schedule (and epochs for --time-budget) "
        "from the data and the device; options you give still win; --no-plan uses the fixed defaults",
    )
    quiet: bool = option(False, "print nothing but errors")

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "-e/--epochs must be at least 1"),
            (self.batch_size >= 1, "-b/--batch-size must be at least 1"),
            (self.learning_rate > 0, "-l/--learning-rate must be positive"),
            (0 < self.scale <= 16, "-s/--scale must be in (0, 16]"),
            (0 <= self.validation < 100, "-v/--validation is a percent in [0, 100)"),
            (self.classes is None or self.classes >= 1, "-c/--classes must be at least 1"),
            (self.width >= 1, "--width must be at least 1"),
            (self.val_rounds >= 1, "--val-rounds must be at least 1"),
            (self.val_every >= 1, "--val-every must be at least 1"),
            (self.patch_size is None or self.patch_size >= 16, "--patch-size must be at least 16"),
            (self.save_every is None or self.save_every >= 1, "--save-every must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.accumulate >= 1, "--accumulate must be at least 1"),
            (0 <= self.foreground_crops <= 1, "--foreground-crops is a share in [0, 1]"),
            (self.ema is None or 0 < self.ema < 1, "--ema is a decay in (0, 1), e.g. 0.999"),
            (self.patience is None or self.patience >= 1, "--patience must be at least 1"),
            (self.max_bad_steps >= 1, "--max-bad-steps must be at least 1"),
            (self.log_every >= 1, "--log-every must be at least 1"),
            (self.folds is None or self.folds >= 2, "--folds must be at least 2"),
            (self.fold is None or self.folds is not None, "--fold needs --folds K"),
            (self.log_format in LOG_FORMATS, f"--log-format must be one of {', '.join(LOG_FORMATS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.time_budget is not None:
            parse_duration(self.time_budget)


@dataclass
class EvaluateConfig(DataConfig):
    """``unetseg evaluate``: scores of a checkpoint on a dataset."""

    model_path: str = option("", "checkpoint to evaluate (unetseg .pt or Pytorch-UNet .pth)", "-m")
    out: str | None = option(
        None, "folder for per_image.csv, confusion.csv and confusion.png (default: print and --json only)"
    )
    json: str | None = option(None, "also write the scores to this JSON file")
    boundary: bool = option(False, "also compute HD95 and average surface distance per class (needs scipy)")
    worst: int = option(5, "list this many images with the lowest foreground Dice (0: none)")
    score: str = option(
        "auto",
        "headline score: auto (the one the model was trained with), foreground (classes 1..K-1), all (mIoU)",
        choices=("auto", "foreground", "all"),
    )
    batch_size: int = option(8, "images per batch (the scores do not depend on it)", "-b")
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N, mps")
    amp: bool = option(False, "mixed-precision inference")
    precision: str = option(
        "auto",
        "auto (as training chooses it, so scores equal the logged validation scores), fp32, bf16, fp16",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    scale: float | None = option(None, "image scale; default: the scale the model was trained at", "-s")

    def __post_init__(self) -> None:
        if self.worst < 0:
            raise UserError("--worst must be 0 or more")
        if self.batch_size < 1:
            raise UserError("-b/--batch-size must be at least 1")
        if self.scale is not None and not 0 < self.scale <= 16:
            raise UserError("-s/--scale must be in (0, 16]")


@dataclass
class DoctorConfig(DataConfig):
    """``unetseg doctor``: checks a dataset and says what is wrong and how to fix it."""

    workers: int | None = option(None, "threads that read the files; default: twice the CPU cores, at most 8")


@dataclass
class PredictConfig:
    """``unetseg predict``: masks for image files, folders or globs."""

    # Lossless types that hold masks; JPEG and WebP would change mask values.
    SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif", ".npy")

    model_path: str = option(
        "", "checkpoint (unetseg .pt or Pytorch-UNet .pth), or an ONNX file written by unetseg export", "-m"
    )
    input: list[str] = option(None, "image files, folders or globs", "-i")
    output: list[str] | None = option(
        None,
        "output folder (default: predictions/ in the current folder), a file name when there is one input, "
        "or one file name per input as Pytorch-UNet takes them",
        "-o",
    )
    overwrite: bool = option(
        False, "replace existing files that unetseg predict did not write (inputs are never written over)"
    )
    scale: float | None = option(None, "input scale; default: the scale the model was trained at", "-s")
    threshold: float = option(0.5, "probability threshold for one-output (sigmoid) models", "-t", "--mask-threshold")
    format: str = option(
        "value",
        "mask format: value (the training masks' own values; palette PNGs for palette masks), "
        "index (class indices 0..K-1), color (RGB colours of the class map)",
        choices=("value", "index", "color"),
    )
    viz: bool = option(False, "also write an overlay of the mask on the image (<name>_overlay.png)", "-v", "--overlay")
    save: bool = option(True, "write the masks; -n/--no-save writes only overlays, probabilities and predictions.csv")
    classes: int | None = option(
        None, "the model's number of classes, checked against the checkpoint (Pytorch-UNet's flag)", "-c"
    )
    bilinear: bool | None = option(
        None, "whether the model upsamples bilinearly, checked against the checkpoint (Pytorch-UNet's flag)"
    )
    probs: bool = option(
        False,
        "also write class probabilities: <name>_probs.png (16-bit foreground probability) for binary models, "
        "<name>_probs.npy (float16, K x H x W) otherwise",
    )
    tile: int | None = option(
        None, "sliding-window inference on tiles of this many pixels (of the scaled image), Gaussian-blended"
    )
    overlap: float = option(0.5, "share of a tile that neighbouring tiles overlap (with --tile)")
    tta: str | None = option(
        None,
        "test-time augmentation: --tta (flips, 4 views) or --tta full (flips and 90-degree turns, 8 views)",
        choices=("flips", "full"),
        const="flips",
    )
    suffix: str = option(".png", "file type of the written masks: .png, .tif, .tiff, .bmp, .gif or .npy")
    batch_size: int = option(8, "images per batch on the device (windows per batch with --tile)", "-b")
    workers: int | None = option(None, "threads that decode images, and as many that write results (default: cores/2)")
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N, mps")
    amp: bool = option(False, "mixed-precision inference (bf16 where supported)")
    quiet: bool = option(False, "print nothing but errors")

    def __post_init__(self) -> None:
        if isinstance(self.output, (str, Path)):
            self.output = [str(self.output)]  # one folder or file, as the Python API and YAML files give it
        checks = [
            (self.scale is None or 0 < self.scale <= 16, "-s/--scale must be in (0, 16]"),
            (0 < self.threshold < 1, "-t/--threshold must be in (0, 1)"),
            (self.batch_size >= 1, "-b/--batch-size must be at least 1"),
            (self.workers is None or self.workers >= 1, "--workers must be at least 1"),
            (self.classes is None or self.classes >= 1, "-c/--classes must be at least 1"),
            (
                self.suffix.lower() in self.SUFFIXES,
                f"--suffix {self.suffix!r}: must be a mask file type, one of {', '.join(self.SUFFIXES)} "
                "(an extension only: no folders or names)",
            ),
            (not self.output or all(self.output), "-o/--output: an empty name; give a folder or file names"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        check_tiling(self.tile, self.overlap)


EXPORT_FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
OPSET_RANGE = (13, 23)  # 13-20 written by torch's TorchScript-based exporter, 18-23 by its dynamo exporter


@dataclass
class ExportConfig:
    """``unetseg export``: a deployable model that takes raw pixels and carries its class map."""

    model_path: str = option("", "checkpoint to export (unetseg .pt or Pytorch-UNet .pth)", "-m")
    format: str | None = option(
        None,
        "onnx (runs with onnxruntime, no PyTorch needed) or torchscript; default: torchscript when -o ends in "
        ".pt/.pth/.ts, else onnx",
        choices=EXPORT_FORMATS,
    )
    output: str | None = option(
        None, "file to write; default: beside the checkpoint, <name>.onnx or <name>.torchscript.pt", "-o"
    )
    with_argmax: bool = option(False, "output class indices (B, H, W) instead of logits (B, K, H, W)")
    opset: int | None = option(
        None,
        f"ONNX operator set, {OPSET_RANGE[0]}-{OPSET_RANGE[1]}; default 18, the oldest that torch's default "
        "(dynamo) exporter writes; below 18 the TorchScript-based exporter is used",
    )
    input_dtype: str | None = option(
        None,
        "input tensor type: uint8, or float32 holding the same pixel values (not rescaled to [0, 1]); "
        "default: uint8 for 8-bit models, float32 for 16-bit ones",
        choices=("uint8", "float32"),
    )
    quiet: bool = option(False, "print nothing but errors")

    def __post_init__(self) -> None:
        if not self.model_path:
            raise UserError("-m/--model is required: the checkpoint to export")
        if self.format is None:
            suffix = Path(self.output).suffix.lower() if self.output else ""
            self.format = "torchscript" if suffix in TORCHSCRIPT_SUFFIXES else "onnx"
        if self.opset is not None and self.format != "onnx":
            raise UserError(f"--opset applies to --format onnx only; leave it out for --format {self.format}")
        if self.opset is not None and not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise UserError(f"--opset {self.opset}: choose an opset from {OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
        if self.output is None:
            model = Path(self.model_path)
            self.output = str(model.with_suffix(".onnx" if self.format == "onnx" else ".torchscript.pt"))


MIN_TILE = 16  # the U-Net halves its input 4 times


def check_tiling(tile: int | None, overlap: float) -> None:
    """Clear errors for a tile too small for the U-Net and an overlap outside [0, 1) (CLI and Python API)."""
    if tile is not None and tile < MIN_TILE:
        raise UserError(f"--tile {tile}: windows must be at least {MIN_TILE} pixels (the U-Net halves them 4 times)")
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap {overlap}: must be in [0, 1), e.g. 0.5 (half a tile shared by neighbours)")


def parse_duration(text: str) -> float:
    """'90s', '30m', '1.5h', '1h30m' or plain seconds -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise UserError(f"--time-budget {text}: not a duration; write e.g. 90s, 30m, 2h or 1h30m")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * unit[u] for n, u in parts)


def load_yaml(path: str | Path) -> dict:
    """Options from a YAML file, as a dict of field names (dashes allowed)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"--config {path}: file does not exist") from None
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build(cls: type, values: dict) -> Any:
    """Instantiate ``cls`` from a dict, naming any unknown option."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    values = {k: _coerce(k, v, types[k]) for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise UserError(f"bad options: {err}") from None


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """YAML reads 1e-3 as text and users write "8" for 8: convert to the field's type or name the option."""
    if value is None or not isinstance(value, str):
        return value
    kind = annotation.split("|")[0].strip()
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "bool":
            return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[value.lower()]
    except (ValueError, KeyError):
        raise UserError(f"option {name}: '{value}' is not a valid {kind}") from None
    return value


def to_dict(config: Any) -> dict:
    """A plain dict of the config (YAML- and checkpoint-safe)."""
    return dataclasses.asdict(config)

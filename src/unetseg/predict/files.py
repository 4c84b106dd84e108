"""The runtime-independent half of prediction: inputs, outputs and image handling, without PyTorch.

Both the PyTorch checkpoint path (``unetseg.predict.segmenter``) and the ONNX Runtime path (``unetseg.predict.onnx``)
use these, so the two give the same files for the same masks. Nothing here may import torch.
"""

from __future__ import annotations

import csv
import glob
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from unetseg.config import PredictConfig
from unetseg.data.classmap import ClassMap
from unetseg.data.io import IMAGE_SUFFIXES, is_image_file, read_image, to_image_dtype, write_mask
from unetseg.data.samples import match_channels
from unetseg.errors import UserError


class Predictor(Protocol):
    """What :func:`predict_to_files` needs of a loaded model."""

    class_map: ClassMap
    channels: int

    def predict_index(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray: ...


def as_image_array(image: object, channels: int, top: float | None = None) -> np.ndarray:
    """A path, PIL image or NumPy array as ``(H, W, channels)`` uint8/uint16, channels matched to the model.

    ``top`` is the value range the model was trained on (its normalisation scale, 255 for 8-bit images): floats in
    [0, 1] are taken as a share of it. Without ``top`` they become 16-bit values.
    """
    name = image if isinstance(image, (str, Path)) else "image"
    if isinstance(image, (str, Path)):
        array = read_image(image)
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB") if image.mode in ("P", "CMYK") else image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise UserError(f"cannot predict on a {type(image).__name__}; pass a path, a PIL image or a NumPy array")
    array = np.asarray(array)
    if (
        top
        and np.issubdtype(array.dtype, np.floating)
        and array.size
        and 0 <= np.nanmin(array) <= np.nanmax(array) <= 1
    ):
        array = np.round(array * top).astype(np.uint8 if top <= 255 else np.uint16)
    array = to_image_dtype(array, name)
    if array.ndim not in (2, 3):
        raise UserError(f"{name}: expected an H x W or H x W x C image, got an array of shape {array.shape}")
    return match_channels(array[:, :, None] if array.ndim == 2 else array, channels, name)


def check_predict_args(cfg: PredictConfig) -> None:
    """The two options ``unetseg predict`` cannot do without."""
    if not cfg.model_path:
        raise UserError("-m/--model is required: the checkpoint to predict with")
    if not cfg.input:
        raise UserError("-i/--input is required: image files, folders or globs")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their image files) and globs -> image paths, in order, without duplicates."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if is_image_file(p))
        elif path.is_file():
            found.append(path)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [p for p in matches if is_image_file(p)]
            if not matches:
                raise UserError(f"-i {item}: the pattern matches no files")
        else:
            raise UserError(f"-i {item}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"-i {' '.join(inputs)}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return unique


def output_paths(inputs: list[Path], output: str | None, suffix: str) -> list[Path]:
    """Where each mask goes: ``<OUT>/<stem>.png``, a single named file, or ``<stem>_OUT.png`` beside the input.

    Two inputs that would write the same file (same stem in two folders) are an error, not a silent overwrite.
    """
    if output and len(inputs) == 1 and Path(output).suffix.lower() in IMAGE_SUFFIXES:
        return [Path(output)]
    if output:
        targets = [Path(output) / f"{p.stem}{suffix}" for p in inputs]
    else:
        targets = [p.with_name(f"{p.stem}_OUT{suffix}") for p in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target in seen:
            raise UserError(
                f"{seen[target]} and {source} would both be written to {target}; "
                "predict them into separate -o folders or rename one"
            )
        seen[target] = source
    return targets


def sidecar(target: Path, kind: str, suffix: str) -> Path:
    """``<OUT>/<stem>_<kind><suffix>`` beside a mask."""
    return target.with_name(f"{target.stem}_{kind}{suffix}")


def write_mask_file(target: Path, mask: np.ndarray) -> None:
    """A mask; PNGs with fast compression (masks compress well even at level 1, which is several times faster)."""
    if target.suffix.lower() == ".png" and (mask.dtype == np.uint8 or mask.max(initial=0) <= 255):
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8)).save(target, compress_level=1)
    else:
        write_mask(target, mask)


def overlay(image: np.ndarray, index: np.ndarray, class_map: ClassMap, alpha: float = 0.5) -> np.ndarray:
    """The image in grey/RGB with each foreground class blended in its colour."""
    base = image.astype(np.float32)
    if image.dtype != np.uint8:
        base = base / max(float(base.max()), 1.0) * 255
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base[:, :, :3]
    colors = np.array(class_map.colors, dtype=np.float32)[index]
    blend = np.where((index > 0)[:, :, None], (1 - alpha) * base + alpha * colors, base)
    return blend.clip(0, 255).astype(np.uint8)


def prediction_row(source: Path, target: Path, size: tuple[int, int], counts: list[int], class_map: ClassMap) -> dict:
    """One row of ``predictions.csv``: the files, the size, and the share of pixels of each foreground class."""
    height, width = size
    pixels = max(height * width, 1)
    row = {"image": str(source), "mask": str(target), "height": height, "width": width}
    return row | {f"fraction_{n}": counts[k] / pixels for k, n in enumerate(class_map.names) if k}


def finish(cfg: PredictConfig, rows: list[dict], outputs: list[Path]) -> Path:
    """Write ``predictions.csv`` beside the masks, warn when every mask is empty, and say where the files went."""
    table = outputs[0].parent / "predictions.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    empty = sum(1 for row in rows if not any(v for k, v in row.items() if k.startswith("fraction_")))
    if empty == len(rows):
        print(
            f"warning: all {empty} predicted masks are empty (background only); check --scale, --threshold "
            "and that the model was trained on images like these",
            file=sys.stderr,
        )
    if not cfg.quiet:
        where = outputs[0].parent if len(outputs) > 1 else outputs[0]
        print(f"wrote {len(outputs)} mask(s) to {where}; per-image foreground fractions in {table}")
    return table


def predict_to_files(cfg: PredictConfig, predictor: Predictor) -> list[Path]:
    """One mask per input, one image at a time (the ONNX Runtime path; PyTorch has the batched pipeline of
    :mod:`unetseg.predict.pipeline`), with the same files: masks, --overlay, ``predictions.csv``."""
    inputs = expand_inputs(cfg.input)
    outputs = output_paths(inputs, cfg.output, cfg.suffix)
    rows = []
    num_classes = predictor.class_map.num_classes
    for source, target in tqdm(list(zip(inputs, outputs)), desc="predict", unit="img", disable=cfg.quiet):
        image = read_image(source)
        index = predictor.predict_index(image, cfg.scale, cfg.threshold)
        write_mask_file(target, predictor.class_map.decode(index))
        if cfg.viz:
            shown = match_channels(image, predictor.channels)
            Image.fromarray(overlay(shown, index, predictor.class_map)).save(sidecar(target, "overlay", ".png"))
        counts = np.bincount(index.ravel(), minlength=num_classes)[:num_classes].tolist()
        rows.append(prediction_row(source, target, index.shape, counts, predictor.class_map))
    finish(cfg, rows, outputs)
    return outputs

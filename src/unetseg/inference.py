"""The runtime-independent half of prediction: inputs, outputs and image handling, without PyTorch.

Both the PyTorch checkpoint path (``unetseg.predict``) and the ONNX Runtime path (``unetseg.onnx_predict``)
use these, so the two give the same files for the same masks. Nothing here may import torch.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from unetseg.config import PredictConfig
from unetseg.data.classmap import ClassMap
from unetseg.data.dataset import match_channels
from unetseg.data.io import IMAGE_SUFFIXES, is_image_file, read_image, to_image_dtype, write_mask
from unetseg.errors import UserError


class Predictor(Protocol):
    """What :func:`predict_to_files` needs of a loaded model."""

    class_map: ClassMap
    channels: int

    def predict_index(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray: ...


def as_image_array(image: object, channels: int) -> np.ndarray:
    """A path, PIL image or NumPy array as ``(H, W, channels)`` uint8/uint16, channels matched to the model."""
    if isinstance(image, (str, Path)):
        array = read_image(image)
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB") if image.mode in ("P", "CMYK") else image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise UserError(f"cannot predict on a {type(image).__name__}; pass a path, a PIL image or a NumPy array")
    array = to_image_dtype(np.asarray(array), "image")
    return match_channels(array[:, :, None] if array.ndim == 2 else array, channels)


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
    """Where each mask goes: ``<OUT>/<stem>.png``, a single named file, or ``<stem>_OUT.png`` beside the input."""
    if output and len(inputs) == 1 and Path(output).suffix.lower() in IMAGE_SUFFIXES:
        return [Path(output)]
    if output:
        return [Path(output) / f"{p.stem}{suffix}" for p in inputs]
    return [p.with_name(f"{p.stem}_OUT{suffix}") for p in inputs]


def overlay(image: np.ndarray, index: np.ndarray, class_map: ClassMap, alpha: float = 0.5) -> np.ndarray:
    """The image in grey/RGB with each foreground class blended in its colour."""
    base = image.astype(np.float32)
    if image.dtype != np.uint8:
        base = base / max(float(base.max()), 1.0) * 255
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base[:, :, :3]
    colors = np.array(class_map.colors, dtype=np.float32)[index]
    blend = np.where((index > 0)[:, :, None], (1 - alpha) * base + alpha * colors, base)
    return blend.clip(0, 255).astype(np.uint8)


def predict_to_files(cfg: PredictConfig, predictor: Predictor) -> list[Path]:
    """One mask per input, at the input's resolution, in the training masks' values (plus overlays with --overlay)."""
    inputs = expand_inputs(cfg.input)
    outputs = output_paths(inputs, cfg.output, cfg.suffix)
    empty = 0
    for source, target in tqdm(list(zip(inputs, outputs)), desc="predict", unit="img", disable=cfg.quiet):
        image = read_image(source)
        index = predictor.predict_index(image, cfg.scale, cfg.threshold)
        empty += int(not index.any())
        write_mask(target, predictor.class_map.decode(index))
        if cfg.viz:
            shown = match_channels(image, predictor.channels)
            Image.fromarray(overlay(shown, index, predictor.class_map)).save(
                target.with_name(f"{target.stem}_overlay.png")
            )
    if empty == len(inputs) and not cfg.quiet:
        print(
            f"warning: all {empty} predicted masks are empty (background only); check --scale, --threshold "
            "and that the model was trained on images like these"
        )
    if not cfg.quiet:
        where = outputs[0].parent if len(outputs) > 1 else outputs[0]
        print(f"wrote {len(outputs)} mask(s) to {where}")
    return outputs

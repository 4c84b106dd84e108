"""The runtime-independent half of prediction: inputs, outputs and image handling, without PyTorch.

Both the PyTorch checkpoint path (``unetseg.predict.segmenter``) and the ONNX Runtime path (``unetseg.predict.onnx``)
use these, so the two give the same files for the same masks. Nothing here may import torch.
"""

from __future__ import annotations

import csv
import glob
import io
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from unetseg.config import PredictConfig
from unetseg.data.classmap import ClassMap
from unetseg.data.io import IMAGE_SUFFIXES, is_image_file, read_image, to_image_dtype
from unetseg.data.samples import match_channels
from unetseg.errors import UserError
from unetseg.predict.outputs import (
    MANIFEST,
    Plan,
    Planned,
    is_own_output,
    mask_colours,
    plan_outputs,
    save_array,
    save_bytes,
)


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
    manifests: dict[Path, dict] = {}
    own = [p for p in unique if is_own_output(p, manifests)]
    unique = [p for p in unique if p not in own]  # predict's own masks are never read back in as images
    if own and not unique:
        raise UserError(
            f"-i {' '.join(inputs)}: every image found was written by unetseg predict (listed in {MANIFEST}); "
            "give the original images"
        )
    if not unique:
        raise UserError(f"-i {' '.join(inputs)}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return unique


def overlay(image: np.ndarray, index: np.ndarray, class_map: ClassMap, alpha: float = 0.5) -> np.ndarray:
    """The image in grey/RGB with each foreground class blended in its colour."""
    base = image.astype(np.float32)
    if image.dtype != np.uint8:
        base = base / max(float(base.max()), 1.0) * 255
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base[:, :, :3]
    colors = np.array(class_map.colors, dtype=np.float32)[index]
    blend = np.where((index > 0)[:, :, None], (1 - alpha) * base + alpha * colors, base)
    return blend.clip(0, 255).astype(np.uint8)


def prediction_row(
    source: Path, target: Path | None, size: tuple[int, int], counts: list[int], class_map: ClassMap
) -> dict:
    """One row of ``predictions.csv``: the files, the size, and the share of pixels of each foreground class."""
    height, width = size
    pixels = max(height * width, 1)
    row = {"image": str(source), "mask": "" if target is None else str(target), "height": height, "width": width}
    return row | {f"fraction_{n}": counts[k] / pixels for k, n in enumerate(class_map.names) if k}


def check_model_flags(
    cfg: PredictConfig, class_map: ClassMap, outputs: int | None, bilinear: bool | None, source: str
) -> None:
    """Pytorch-UNet's ``-c/--classes`` and ``--bilinear``, checked against the model (they cannot change it)."""
    if cfg.classes is not None and cfg.classes not in (class_map.num_classes, outputs):
        shown = f"{class_map.num_classes} classes" + (f" ({outputs} output channels)" if outputs else "")
        raise UserError(
            f"-c/--classes {cfg.classes}: the model {source} has {shown}; pass -c {outputs or class_map.num_classes} "
            "or leave -c out (predict takes the classes from the model)"
        )
    if cfg.bilinear is not None and bilinear is None:
        raise UserError(f"--bilinear: the model {source} records no bilinear setting to check; leave the option out")
    if cfg.bilinear is not None and cfg.bilinear != bilinear:
        given = "--bilinear" if cfg.bilinear else "--no-bilinear"
        raise UserError(
            f"{given} (bilinear={cfg.bilinear}) disagrees with the model {source} (bilinear={bilinear}); "
            "leave the option out (predict takes it from the model)"
        )


def finish(cfg: PredictConfig, rows: list[dict], plan: Plan) -> Path:
    """Write ``predictions.csv`` beside the masks, warn when every mask is empty, and say where the files went."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = table.getvalue().encode()
    save_bytes(plan.table, data)
    plan.ledger.record(plan.table, data)
    empty = sum(1 for row in rows if not any(v for k, v in row.items() if k.startswith("fraction_")))
    if empty == len(rows):
        print(
            f"warning: all {empty} predicted masks are empty (background only); check --scale, --threshold "
            "and that the model was trained on images like these",
            file=sys.stderr,
        )
    if not cfg.quiet:
        names = [item.name for item in plan.items]
        where = names[0].parent if len(names) > 1 else names[0]
        what = f"wrote {len(names)} mask(s) to {where}" if cfg.save else f"wrote no masks (--no-save) for {len(names)}"
        print(f"{what}; per-image foreground fractions in {plan.table}")
    return plan.table


def write_files(
    plan: Plan, item: Planned, cfg: PredictConfig, class_map: ClassMap, index: np.ndarray, mask: np.ndarray, image
) -> None:
    """The mask and the overlay of one image (``image``: the full-size input, needed for the overlay only)."""
    if item.mask is not None:
        save_array(item.mask, mask, plan.ledger, mask_colours(class_map, cfg.format))
    if item.overlay is not None:
        save_array(item.overlay, overlay(image, index, class_map), plan.ledger)


def predict_to_files(cfg: PredictConfig, predictor: Predictor) -> list[Path]:
    """One mask per input, one image at a time (the ONNX Runtime path; PyTorch has the batched pipeline of
    :mod:`unetseg.predict.pipeline`), with the same files: masks, --overlay, ``predictions.csv``."""
    inputs = expand_inputs(cfg.input)
    plan = plan_outputs(inputs, cfg, predictor.class_map.num_classes, [Path(cfg.model_path)])
    rows = []
    num_classes = predictor.class_map.num_classes
    try:
        for source, item in tqdm(list(zip(inputs, plan.items)), desc="predict", unit="img", disable=cfg.quiet):
            image = read_image(source)
            index = predictor.predict_index(image, cfg.scale, cfg.threshold)
            shown = match_channels(image, predictor.channels) if cfg.viz else None
            write_files(plan, item, cfg, predictor.class_map, index, predictor.class_map.decode(index), shown)
            counts = np.bincount(index.ravel(), minlength=num_classes)[:num_classes].tolist()
            rows.append(prediction_row(source, item.mask, index.shape, counts, predictor.class_map))
        finish(cfg, rows, plan)
    finally:
        plan.ledger.save()
    return [item.name for item in plan.items]

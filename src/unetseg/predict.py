"""Prediction: a loaded model that turns images into masks, and the ``unetseg predict`` command."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from unetseg.config import PredictConfig
from unetseg.data.classmap import ClassMap
from unetseg.data.dataset import match_channels, resize_image, scaled_size
from unetseg.data.io import IMAGE_SUFFIXES, is_image_file, read_image, to_image_dtype, write_mask
from unetseg.engine.checkpoint import build_model, load_checkpoint
from unetseg.engine.precision import autocast, choose_dtype, normalize, resolve_device
from unetseg.errors import UserError


class Segmenter:
    """A model ready to predict: ``unetseg.load("best.pt").predict(image)``.

    ``image`` is a path, a PIL image, or a NumPy array (H x W or H x W x C; uint8, uint16 or float in [0, 1]).
    """

    def __init__(self, checkpoint: dict, device: str = "auto", amp: bool = False) -> None:
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.dtype = choose_dtype("fp32", amp, self.device)
        self.model = build_model(checkpoint).to(self.device)
        self.class_map = ClassMap.from_dict(checkpoint["class_map"])
        self.norm = checkpoint["norm"]
        self.channels = int(checkpoint["channels"])
        self.scale = float(checkpoint.get("scale", 1.0))
        self.channels_last = self.device.type != "mps"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", amp: bool = False) -> Segmenter:
        return cls(load_checkpoint(path), device, amp)

    def _as_array(self, image: object) -> np.ndarray:
        if isinstance(image, (str, Path)):
            array = read_image(image)
        elif isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB") if image.mode in ("P", "CMYK") else image)
        elif isinstance(image, np.ndarray):
            array = image
        else:
            raise UserError(f"cannot predict on a {type(image).__name__}; pass a path, a PIL image or a NumPy array")
        array = to_image_dtype(np.asarray(array), "image")
        return match_channels(array[:, :, None] if array.ndim == 2 else array, self.channels)

    @torch.inference_mode()
    def predict_proba(self, image: object, scale: float | None = None) -> np.ndarray:
        """Class probabilities ``(K, H, W)`` float32 at the input's own size (K = 1 for sigmoid models)."""
        logits = self._logits(self._as_array(image), scale)
        probs = torch.sigmoid(logits) if logits.shape[0] == 1 else logits.softmax(0)
        return probs.cpu().numpy()

    def _logits(self, array: np.ndarray, scale: float | None) -> torch.Tensor:
        """Resize by ``scale`` (bicubic), run the model, and bring logits back to the input size (bilinear)."""
        height, width = array.shape[:2]
        scale = self.scale if scale is None else scale
        resized = resize_image(array, scaled_size(height, width, scale))
        x = normalize(torch.from_numpy(np.array(resized))[None], self.norm, self.device, self.channels_last)
        with autocast(self.device, self.dtype):
            logits = self.model(x).float()
        return F.interpolate(logits, (height, width), mode="bilinear")[0]  # (K, H, W), as Pytorch-UNet

    @torch.inference_mode()
    def predict_index(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray:
        """Class indices ``(H, W)``."""
        logits = self._logits(self._as_array(image), scale)
        if logits.shape[0] == 1:
            return (torch.sigmoid(logits[0]) > threshold).cpu().numpy().astype(np.uint8)
        return logits.argmax(0).cpu().numpy().astype(np.uint8)

    def predict(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray | list:
        """The mask in the training masks' own values; a list of images gives a list of masks."""
        if isinstance(image, list):
            return [self.predict(i, scale, threshold) for i in image]
        return self.class_map.decode(self.predict_index(image, scale, threshold))


def load(path: str | Path, device: str = "auto", amp: bool = False) -> Segmenter:
    """Load a unetseg or Pytorch-UNet checkpoint for prediction."""
    return Segmenter.from_file(path, device, amp)


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


def predict_files(cfg: PredictConfig) -> list[Path]:
    """``unetseg predict``: one mask per input, at the input's resolution, in the training masks' values."""
    if not cfg.model_path:
        raise UserError("-m/--model is required: the checkpoint to predict with")
    if not cfg.input:
        raise UserError("-i/--input is required: image files, folders or globs")
    segmenter = load(cfg.model_path, cfg.device, cfg.amp)
    inputs = expand_inputs(cfg.input)
    outputs = output_paths(inputs, cfg.output, cfg.suffix)
    empty = 0
    for source, target in tqdm(list(zip(inputs, outputs)), desc="predict", unit="img", disable=cfg.quiet):
        image = read_image(source)
        index = segmenter.predict_index(image, cfg.scale, cfg.threshold)
        empty += int(not index.any())
        write_mask(target, segmenter.class_map.decode(index))
        if cfg.viz:
            shown = match_channels(image, segmenter.channels)
            Image.fromarray(overlay(shown, index, segmenter.class_map)).save(
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

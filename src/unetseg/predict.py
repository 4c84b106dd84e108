"""Prediction: a loaded model that turns images into masks, and the ``unetseg predict`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unetseg.config import PredictConfig
from unetseg.data.classmap import ClassMap
from unetseg.data.dataset import resize_image, scaled_size
from unetseg.engine.checkpoint import build_model, load_checkpoint
from unetseg.engine.precision import autocast, choose_dtype, normalize, resolve_device
from unetseg.inference import as_image_array, check_predict_args, predict_to_files


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
        return as_image_array(image, self.channels)

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


def predict_files(cfg: PredictConfig) -> list[Path]:
    """``unetseg predict``: one mask per input, at the input's resolution, in the training masks' values."""
    check_predict_args(cfg)
    segmenter = load(cfg.model_path, cfg.device, cfg.amp)
    return predict_to_files(cfg, segmenter)

"""Prediction from Python: ``model = unetseg.load("best.pt")``, then ``model.predict(image)``.

Images are resized by the scale the model was trained at (bicubic), run through the model, and the logits are
resized back to the input size (bilinear) before softmax/sigmoid, exactly as Pytorch-UNet's ``predict.py`` does.
``tile`` runs the model on overlapping windows (:mod:`unetseg.predict.tiling`), ``tta`` averages flipped/turned views
in probability space (:mod:`unetseg.predict.tta`). A list of images is predicted in batches of same-size images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unetseg.config import check_tiling
from unetseg.core.checkpoint import build_model, load_checkpoint
from unetseg.core.device import autocast, choose_dtype, normalize, resolve_device
from unetseg.data.classmap import ClassMap
from unetseg.data.samples import resize_image, scaled_size
from unetseg.errors import UserError
from unetseg.predict import tta as tta_views
from unetseg.predict.files import as_image_array
from unetseg.predict.tiling import sliding_window

FORMATS = ("value", "index", "color")


class Segmenter:
    """A model ready to predict: ``unetseg.load("best.pt").predict(image)``.

    ``image`` is a path, a PIL image, or a NumPy array (H x W or H x W x C; uint8, uint16 or float in [0, 1]),
    or a list of them. Options of :meth:`predict` and :meth:`predict_proba`: ``scale`` (default: the training
    scale), ``tile`` and ``overlap`` (sliding windows of ``tile`` pixels of the scaled image), ``tta``
    (``"flips"`` or ``"full"``), ``batch_size`` (images, or windows when tiling, per forward pass).
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

    def prepare(self, image: object) -> np.ndarray:
        """Any supported image -> ``(H, W, C)`` uint8/uint16 with the model's channel count.

        Floats in [0, 1] are a share of the value range the model was trained on (255 for 8-bit images).
        """
        return as_image_array(image, self.channels, top=float(self.norm["scale"]))

    def model_input(self, array: np.ndarray, scale: float | None = None) -> np.ndarray:
        """A prepared image resized by ``scale`` (default: the training scale), bicubic as Pytorch-UNet."""
        scale = self.scale if scale is None else scale
        return resize_image(array, scaled_size(array.shape[0], array.shape[1], scale))

    @torch.inference_mode()
    def infer(
        self,
        pixels: torch.Tensor,
        size: tuple[int, int],
        tile: int | None = None,
        overlap: float = 0.5,
        tta: str | None = None,
        batch_size: int = 8,
    ) -> torch.Tensor:
        """Probabilities ``(B, K, *size)`` float32 for uint pixels ``(B, h, w, C)`` of model-input size.

        K is 1 for a sigmoid model. The result is on the device, or on the host when tiles were stitched there.
        """
        x = normalize(pixels, self.norm, self.device, self.channels_last)

        def probabilities(view: torch.Tensor, view_size: tuple[int, int]) -> torch.Tensor:
            if tile:
                classes = self.class_map.num_classes  # sizes the blend, to choose where it fits
                logits = sliding_window(self._logits, view, tile, overlap, batch_size, num_classes=classes)
            else:
                logits = self._logits(view).float()
            # Resize logits, not probabilities, as Pytorch-UNet does: its masks stay identical to ours.
            logits = F.interpolate(logits, view_size, mode="bilinear")
            return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)

        return tta_views.average(probabilities, x, size, tta)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # flipped and turned views are strided copies
        with autocast(self.device, self.dtype):
            return self.model(x)

    def to_index(self, probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Class indices ``(B, H, W)`` uint8: argmax, or probability > ``threshold`` for a sigmoid model."""
        if probs.shape[1] == 1:
            return (probs[:, 0] > threshold).to(torch.uint8)
        # A running maximum over the few classes: argmax(dim=1) on the CPU is ~30x slower for (B, K, H, W).
        # Strict ">" keeps the first of equal scores, as argmax does.
        best, index = probs[:, 0], torch.zeros(probs[:, 0].shape, dtype=torch.uint8, device=probs.device)
        for k in range(1, probs.shape[1]):
            better = probs[:, k] > best
            index = torch.where(better, k, index)
            best = torch.maximum(best, probs[:, k])
        return index

    def encode(self, index: np.ndarray, format: str = "value") -> np.ndarray:
        """Class indices -> the mask to hand out: training mask values, indices, or RGB colours."""
        if format == "value":
            return self.class_map.decode(index)
        if format == "index":
            return index
        if format == "color":
            return np.asarray(self.class_map.colors, dtype=np.uint8)[index]
        raise UserError(f"--format {format}: unknown; use one of {', '.join(FORMATS)}")

    def batches(
        self, images: list, scale: float | None, batch_size: int, **options: object
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Probabilities for ``images`` in batches of same-size images: (positions in ``images``, probs)."""
        if batch_size < 1:
            raise UserError("batch_size must be at least 1")
        check_tiling(options.get("tile"), options.get("overlap", 0.5))
        tta_views.views(options.get("tta"))  # an unknown mode fails before any image is read
        arrays = [self.prepare(image) for image in images]
        groups: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault((array.shape, array.dtype.str), []).append(i)
        for positions in groups.values():
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                pixels = torch.from_numpy(np.stack([self.model_input(arrays[i], scale) for i in chunk]))
                size = arrays[chunk[0]].shape[:2]
                yield chunk, self.infer(pixels, size, batch_size=batch_size, **options)

    def predict_proba(
        self,
        image: object,
        scale: float | None = None,
        tile: int | None = None,
        overlap: float = 0.5,
        tta: str | None = None,
        batch_size: int = 8,
    ) -> np.ndarray | list[np.ndarray]:
        """Class probabilities ``(K, H, W)`` float32 at the input's own size (K = 1 for sigmoid models)."""
        options = {"tile": tile, "overlap": overlap, "tta": tta}
        return self._each(image, scale, batch_size, options, lambda probs: probs.cpu().numpy())

    def predict(
        self,
        image: object,
        scale: float | None = None,
        threshold: float = 0.5,
        tile: int | None = None,
        overlap: float = 0.5,
        tta: str | None = None,
        batch_size: int = 8,
        format: str = "value",
    ) -> np.ndarray | list[np.ndarray]:
        """The mask ``(H, W)`` (``(H, W, 3)`` for colours) in the training masks' own values, or ``format``
        ``"index"`` (class indices) or ``"color"`` (the class map's colours); a list gives a list of masks."""
        if format not in FORMATS:
            raise UserError(f"format {format!r}: unknown; use one of {', '.join(FORMATS)}")
        options = {"tile": tile, "overlap": overlap, "tta": tta}

        def masks(probs: torch.Tensor) -> list[np.ndarray]:
            return [self.encode(index, format) for index in self.to_index(probs, threshold).cpu().numpy()]

        return self._each(image, scale, batch_size, options, masks)

    def _each(
        self,
        image: object,
        scale: float | None,
        batch_size: int,
        options: dict,
        convert: Callable[[torch.Tensor], list],
    ) -> object:
        """Run ``convert`` on each batch's probabilities; one result per image, in the given order."""
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        results: list = [None] * len(images)
        for positions, probs in self.batches(images, scale, batch_size, **options):
            for i, result in zip(positions, convert(probs)):
                results[i] = result
        return results if isinstance(image, (list, tuple)) else results[0]

    def predict_index(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray:
        """Class indices ``(H, W)`` uint8."""
        return self.predict(image, scale, threshold, format="index")


def load(path: str | Path, device: str = "auto", amp: bool = False) -> Segmenter:
    """Load a unetseg or Pytorch-UNet checkpoint for prediction."""
    return Segmenter.from_file(path, device, amp)

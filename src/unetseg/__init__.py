"""unetseg: train, evaluate, run and export U-Net segmentation models from folders of images and masks."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, device: str = "auto", amp: bool = False):  # noqa: ANN201 - returns unetseg.predict.Segmenter
    """Load a checkpoint for prediction: ``unetseg.load("best.pt").predict(image)``."""
    from unetseg.predict import load as _load

    return _load(path, device, amp)


__all__ = ["__version__", "load"]

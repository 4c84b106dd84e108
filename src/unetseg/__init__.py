"""unetseg: train, evaluate, run and export U-Net segmentation models from folders of images and masks."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, device: str = "auto", amp: bool = False):  # noqa: ANN201 - a Segmenter or an OnnxSegmenter
    """Load a checkpoint, or an ONNX export, for prediction: ``unetseg.load("best.pt").predict(image)``.

    A ``.onnx`` file runs on ONNX Runtime without importing PyTorch.
    """
    if str(path).lower().endswith(".onnx"):
        from unetseg.errors import UserError
        from unetseg.predict.onnx import load as load_onnx

        if amp:
            raise UserError(f"{path}: amp applies to PyTorch checkpoints; an ONNX model runs as it was exported")
        return load_onnx(path, device)
    from unetseg.predict.segmenter import load as _load

    return _load(path, device, amp)


__all__ = ["__version__", "load"]

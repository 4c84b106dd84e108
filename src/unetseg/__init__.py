"""unetseg: train, evaluate, run and export U-Net segmentation models from folders of images and masks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unetseg.evaluation.api import Report
    from unetseg.training.api import TrainResult

__version__ = "0.1.0"


def train(data: str | Path | None = None, **options: Any) -> TrainResult:
    """Train a model as ``unetseg train`` does: ``unetseg.train(data="DIR", epochs=1, width=8, out="run")``.

    Options take the command's long names with underscores; the result names the run directory, the best
    validation score and the checkpoints. See docs/api.md.
    """
    from unetseg.training.api import train as _train

    return _train(data, **options)


def evaluate(model: str | Path, data: str | Path | None = None, **options: Any) -> Report:
    """Score a checkpoint on a dataset as ``unetseg evaluate`` does; returns the report that ``--json`` writes, as
    a typed :class:`~unetseg.evaluation.api.Report`.

    ``unetseg.evaluate("run/checkpoints/best.pt", "DIR").dice_fg``; options as the command's
    (``images=..., masks=..., out=..., boundary=True``).
    """
    from unetseg.config import EvaluateConfig, build
    from unetseg.evaluation.api import Report, evaluate_checkpoint

    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None}
    values |= {"model_path": str(model)} | ({"data": str(data)} if data is not None else {})
    return Report.from_dict(evaluate_checkpoint(build(EvaluateConfig, values)))


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


__all__ = ["__version__", "evaluate", "load", "train"]

"""Prediction with an exported ONNX model on ONNX Runtime; PyTorch is not imported on this path.

The steps mirror :class:`unetseg.predict.segmenter.Segmenter` so both give the same masks: the same channel matching and
Pillow bicubic resize by the training scale, the graph (which holds the normalisation), then logits brought back
to the input size with the same bilinear interpolation as ``F.interpolate(mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np

from unetseg.config import PredictConfig
from unetseg.core.meta import UNET_LIMITS, as_int, check_class_map, check_scale, class_count, damaged
from unetseg.data.classmap import ClassMap
from unetseg.data.samples import resize_image, scaled_size
from unetseg.errors import UserError
from unetseg.predict.files import as_image_array, check_model_flags, check_predict_args, predict_to_files

EXPORT_FORMAT = "unetseg-export"
EXPORT_VERSION = 1  # of the metadata layout
MIN_SIZE = 16  # four 2x max-poolings must leave at least one pixel
# PredictConfig fields this runtime honours; any other field set away from its default is refused by name.
ONNX_OPTIONS = {
    *("model_path", "input", "output", "overwrite", "scale", "threshold", "viz", "save", "classes", "bilinear"),
    *("suffix", "batch_size", "device", "quiet"),
}


def require(module: str) -> ModuleType:
    """Import an optional dependency of ONNX export/prediction, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"the Python package {module} is not installed; ONNX export and prediction need it: "
            "pip install 'unetseg[onnx]'"
        ) from None


def providers(ort: ModuleType, device: str) -> list:
    """ONNX Runtime execution providers for ``--device``: auto (CUDA when available, else CPU), cpu, cuda[:N]."""
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:") and device[5:].isdigit():
        if not cuda:
            raise UserError(
                f"--device {device}: this onnxruntime has no CUDA support; install onnxruntime-gpu or use --device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": int(device[5:] or 0)}), "CPUExecutionProvider"]
    raise UserError(f"--device {device}: ONNX models run on auto, cpu, cuda or cuda:N")


def read_metadata(session: object, path: Path) -> dict:
    """The export description stored in the model's ``metadata_props`` (JSON values), checked against the graph."""
    raw = session.get_modelmeta().custom_metadata_map
    if raw.get("format") != json.dumps(EXPORT_FORMAT):
        raise UserError(
            f"{path}: this ONNX model carries no unetseg metadata; export it with unetseg export, "
            "or predict with the checkpoint it came from"
        )
    info = {key: json.loads(value) for key, value in raw.items() if _is_json(value)}  # others: the exporter's own
    for key in ("version", "channels", "scale", "class_map"):
        if key not in info:
            raise damaged(path, f"metadata '{key}'", "is not JSON" if key in raw else "is missing")
    version = info["version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > EXPORT_VERSION:
        raise UserError(f"{path}: export version {version} is newer than this unetseg reads; upgrade unetseg")
    as_int(version, path, "metadata 'version'", 1, EXPORT_VERSION)
    with_argmax = info.get("with_argmax", False)
    if not isinstance(with_argmax, bool):
        raise damaged(path, "metadata 'with_argmax'", "must be true or false")
    channels = as_int(info["channels"], path, "metadata 'channels'", *UNET_LIMITS["n_channels"])
    inputs, outputs = _graph_dims(session, path, with_argmax)
    if isinstance(inputs, int) and inputs != channels:
        raise damaged(path, "metadata 'channels'", f"is {channels} but the graph takes {inputs} channels")
    return info | {
        "channels": channels,
        "scale": check_scale(info["scale"], path),
        "class_map": check_class_map(info["class_map"], outputs, path),
        "with_argmax": with_argmax,
    }


def _graph_dims(session: object, path: Path, with_argmax: bool) -> tuple[int | None, int | None]:
    """Input channels and output classes of the graph (None where the graph leaves them dynamic)."""
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    if len(model_input.shape) != 4 or model_input.type not in ("tensor(uint8)", "tensor(float)"):
        raise damaged(
            path, "the graph's input", f"is {model_input.type} {model_input.shape}, not images (batch, H, W, C)"
        )
    if with_argmax:
        return _static(model_input.shape[3]), None
    if len(model_output.shape) != 4:
        raise damaged(path, "the graph's output", f"has shape {model_output.shape}, not (batch, classes, H, W)")
    return _static(model_input.shape[3]), _static(model_output.shape[1])


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def upsample_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(K, h, w)`` float32 -> ``(K, H, W)``, as ``F.interpolate(mode="bilinear", align_corners=False)`` on CPU.

    Same taps and weights as PyTorch's kernel and the same order (width, then height); results agree to a few
    float32 rounding steps.
    """
    if x.shape[1:] == tuple(size):
        return x  # scale 1: every source coordinate is exact, PyTorch returns the input values
    h0, h1, hw = _linear_taps(x.shape[1], size[0])
    w0, w1, ww = _linear_taps(x.shape[2], size[1])
    rows = x[:, :, w0] * (1 - ww) + x[:, :, w1] * ww  # (K, h, W)
    return rows[:, h0] * (1 - hw)[:, None] + rows[:, h1] * hw[:, None]


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel: the two input pixels and the weight of the second (half-pixel centres)."""
    scale = np.float32(in_size) / np.float32(out_size)  # float32, as PyTorch computes it for float tensors
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # PyTorch's CPU build fuses scale * centre - 0.5 into one multiply-add: round once, from float64.
    source = np.maximum((np.float64(scale) * centres - 0.5).astype(np.float32), 0)
    first = np.minimum(source.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
    return first, second, weight


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88: the result, 0, is still right
        return (1 / (1 + np.exp(-x))).astype(np.float32)


class OnnxSegmenter:
    """An exported ONNX model ready to predict, with the methods of :class:`unetseg.predict.segmenter.Segmenter`."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX model file does not exist; check the path")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ONNX Runtime's warnings are about its own graph rewrites
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers(ort, device))
        except UserError:
            raise
        except Exception as err:  # ONNX Runtime raises its own exception types for unreadable models
            raise UserError(f"{self.path}: not a readable ONNX model ({str(err)[:200]}); export it again") from None
        self.info = read_metadata(self.session, self.path)
        if self.info.get("with_argmax"):
            raise UserError(
                f"{self.path}: exported with --with-argmax, so it outputs class indices at the resized size; "
                "unetseg predict needs its logits: export again without --with-argmax"
            )
        self.class_map = ClassMap.from_dict(self.info["class_map"])
        self.channels = int(self.info["channels"])
        self.scale = float(self.info["scale"])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.uint8 if model_input.type == "tensor(uint8)" else np.float32

    def _logits(self, array: np.ndarray, scale: float | None) -> np.ndarray:
        """Resize by ``scale`` (bicubic), run the model, and bring logits back to the input size (bilinear)."""
        height, width = array.shape[:2]
        scale = self.scale if scale is None else scale
        size = scaled_size(height, width, scale)
        if min(size) < MIN_SIZE:
            raise UserError(
                f"a {width}x{height} image at scale {scale} is {size[1]}x{size[0]} pixels, smaller than the "
                f"{MIN_SIZE}x{MIN_SIZE} the U-Net needs; use a larger --scale"
            )
        resized = resize_image(array, size)
        if self.input_dtype == np.uint8 and resized.dtype != np.uint8:
            raise UserError(
                f"{self.path} takes 8-bit images but this image is {resized.dtype}; "
                "export the model again with --input-dtype float32"
            )
        batch = resized[None].astype(self.input_dtype)  # (1, h, w, C)
        logits = self.session.run(None, {self.input_name: batch})[0][0]  # (K, h, w)
        if logits.ndim != 3 or class_count(logits.shape[0]) != self.class_map.num_classes:
            raise damaged(
                self.path, "the graph", f"outputs {logits.shape} for one image, not one map per class of the class map"
            )
        return upsample_bilinear(logits, (height, width))

    def predict_proba(self, image: object, scale: float | None = None) -> np.ndarray:
        """Class probabilities ``(K, H, W)`` float32 at the input's own size (K = 1 for sigmoid models)."""
        logits = self._logits(as_image_array(image, self.channels), scale)
        if logits.shape[0] == 1:
            return sigmoid(logits)
        exp = np.exp(logits - logits.max(0, keepdims=True))
        return exp / exp.sum(0, keepdims=True)

    def predict_index(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray:
        """Class indices ``(H, W)``."""
        logits = self._logits(as_image_array(image, self.channels), scale)
        if logits.shape[0] == 1:
            return (sigmoid(logits[0]) > threshold).astype(np.uint8)
        return logits.argmax(0).astype(np.uint8)

    def predict(self, image: object, scale: float | None = None, threshold: float = 0.5) -> np.ndarray | list:
        """The mask in the training masks' own values; a list of images gives a list of masks."""
        if isinstance(image, list):
            return [self.predict(i, scale, threshold) for i in image]
        return self.class_map.decode(self.predict_index(image, scale, threshold))


def load(path: str | Path, device: str = "auto") -> OnnxSegmenter:
    """Load a model written by ``unetseg export --format onnx``."""
    return OnnxSegmenter(path, device)


def predict_files(cfg: PredictConfig) -> list[Path]:
    """``unetseg predict -m model.onnx``: the same files as with the PyTorch checkpoint."""
    check_predict_args(cfg)
    for f in dataclasses.fields(cfg):
        if f.name not in ONNX_OPTIONS and getattr(cfg, f.name) != f.default:
            flags = [*f.metadata.get("flags", ()), "--" + f.name.replace("_", "-")]
            flag = next(flag for flag in flags if flag.startswith("--"))
            raise UserError(
                f"{flag} is not available with an ONNX model ({cfg.model_path}); "
                "leave it out, or predict with the PyTorch checkpoint"
            )
    model = load(cfg.model_path, cfg.device)
    spec = model.info.get("model") if isinstance(model.info.get("model"), dict) else {}
    check_model_flags(cfg, model.class_map, spec.get("n_classes"), spec.get("bilinear"), cfg.model_path)
    return predict_to_files(cfg, model)

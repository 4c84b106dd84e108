"""Self-describing checkpoints: written atomically, read with ``weights_only=True``.

A unetseg checkpoint is a dict of plain types and tensors: model spec and weights, channels, normalisation,
class map, the resolved config, and (for resuming) the training state. Pytorch-UNet checkpoints (a state_dict
plus ``mask_values``) are read too and converted to the same shape.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from unetseg.core.atomic import write_atomic
from unetseg.core.meta import (
    DAMAGED,
    UNET_LIMITS,
    Norm,
    as_dict,
    as_int,
    check_class_map,
    check_mask_values,
    check_model_spec,
    check_norm,
    check_scale,
    damaged,
    spec_io,
)
from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError
from unetseg.models import create_model, model_spec

FORMAT = "unetseg-checkpoint"
VERSION = 1
PYTORCH_UNET_SCALE = 0.5  # Pytorch-UNet's train.py and predict.py default --scale
LOAD_HINT = "match --width, --bilinear, --classes and the input channels to the checkpoint"


def save_atomic(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    write_atomic(path, lambda handle: torch.save(obj, handle))


def snapshot(obj: object, copies: dict | None = None) -> object:
    """``obj`` with every tensor copied to host memory: safe to serialise while training changes the originals.

    A tensor that appears twice (the weights in ``state_dict`` and in ``train_state``) is copied once, and
    ``torch.save`` then stores it once.
    """
    copies = {} if copies is None else copies
    if isinstance(obj, torch.Tensor):
        if id(obj) not in copies:
            copies[id(obj)] = obj.detach().to("cpu", copy=True)
        return copies[id(obj)]
    if isinstance(obj, dict):
        return {k: snapshot(v, copies) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v, copies) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on a background thread, so that training does not wait for serialisation and fsync.

    ``write`` takes a host snapshot at once (the state as of the call) and returns; at most one write is in flight
    (a new one first waits for the last, so at most two snapshots are held), an error in a write is raised by the
    next call, and ``close`` waits for the last. Each file still appears atomically, as with :func:`save_atomic`.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unetseg-checkpoint")
        self._pending: Future | None = None

    def write(self, ckpt: dict, paths: list[Path]) -> None:
        self.wait()
        self._pending = self._pool.submit(self._serialise, snapshot(ckpt), paths)

    @staticmethod
    def _serialise(ckpt: dict, paths: list[Path]) -> None:
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        for path in paths:  # one serialisation for several names (last.pt and epoch_NNN.pt)
            write_atomic(path, buffer.getbuffer())

    def check(self) -> None:
        """Re-raise the error of a write that has already failed, without waiting for one still running."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()


def read_file(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` with clear errors for missing, corrupt and code-carrying files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"{path}: this file holds pickled Python objects beyond tensors and plain data, "
                "which unetseg refuses to load because loading them can run code; "
                "re-save only the state_dict if you trust its source"
            ) from None
        raise UserError(f"{path}: not a readable checkpoint ({err}); the file is corrupt or truncated") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err)[:200]}); "
            "the file is corrupt or truncated, use another checkpoint (e.g. checkpoints/best.pt)"
        ) from None


def _is_pytorch_unet(state: dict) -> bool:
    return "inc.double_conv.0.weight" in state and "outc.conv.weight" in state


def _from_pytorch_unet(state: dict, path: object) -> dict:
    """Wrap a Pytorch-UNet state_dict (with or without ``mask_values``) as a unetseg checkpoint."""
    state = dict(state)
    mask_values = state.pop("mask_values", None)
    check_state_dict(state, path)
    inc, outc = state["inc.double_conv.0.weight"], state["outc.conv.weight"]
    if inc.dim() != 4 or outc.dim() != 4:
        raise damaged(
            path, "the weights", f"have convolution kernels of shapes {tuple(inc.shape)}, {tuple(outc.shape)}"
        )
    n_classes, channels = outc.shape[0], inc.shape[1]
    if isinstance(mask_values, torch.Tensor):
        mask_values = mask_values.tolist()
    if mask_values is None:
        mask_values = [0, 1] if n_classes == 1 else list(range(n_classes))
    spec = {
        "name": "unet",
        "n_channels": channels,
        "n_classes": n_classes,
        "bilinear": "up1.up.weight" not in state,
        "width": inc.shape[0],
    }
    return make_checkpoint(
        spec,
        state,
        channels,
        # Pytorch-UNet divides by 255 (when any value exceeds 1) and does not centre.
        {"scale": 255.0, "mean": [0.0] * channels, "std": [1.0] * channels},
        {"values": check_mask_values(mask_values, path, "mask_values", n_classes)},
        PYTORCH_UNET_SCALE,
        source="pytorch-unet",
    )


def check_state_dict(state: object, path: object) -> dict:
    """Weights: a mapping of parameter names to plain tensors."""
    state = as_dict(state, path, "state_dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise damaged(path, "state_dict", f"holds {key!r}: {type(value).__name__}, not a tensor")
    return state


def check_checkpoint(data: dict, path: object) -> dict:
    """A unetseg checkpoint's inference fields, checked (types, ranges, agreement) before any model is built."""
    version = data.get("version", VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise UserError(f"{path}: checkpoint version {version} is newer than this unetseg reads; upgrade unetseg")
    as_int(version, path, "version", 1, VERSION)
    missing = [key for key in ("model", "state_dict", "channels", "norm", "class_map") if key not in data]
    if missing:
        raise damaged(path, "the checkpoint", f"lacks {', '.join(repr(k) for k in missing)}")
    spec = check_model_spec(data["model"], path)
    n_channels, n_classes = spec_io(spec)
    channels = as_int(data["channels"], path, "channels", *UNET_LIMITS["n_channels"])
    if channels != n_channels:
        raise damaged(path, "channels", f"is {channels} but the model takes {n_channels}")
    checked = {
        "norm": check_norm(data["norm"], channels, path),
        "class_map": check_class_map(data["class_map"], n_classes, path),
        "scale": check_scale(data.get("scale", 1.0), path),
        "config": as_dict(data.get("config", {}), path, "config"),
        "state_dict": check_state_dict(data["state_dict"], path),
    }
    check_fit(spec, checked["state_dict"], path)
    return data | checked


def check_fit(spec: dict, state: dict, source: object, **overrides: object) -> None:
    """Compare the weights with the model ``spec`` describes, built on the meta device: no memory, no time."""
    spec = dict(spec)
    name = spec.pop("name")
    with torch.device("meta"):
        check_weights(create_model(name, **spec, **overrides), state, source, DAMAGED)


def make_checkpoint(
    spec: dict,
    state_dict: dict,
    channels: int,
    norm: Norm,
    class_map: dict,
    scale: float = 1.0,
    config: dict | None = None,
    source: str = "unetseg",
    **extra: object,
) -> dict:
    """The self-describing checkpoint (DESIGN.md), the one layout every writer uses: the model's name and
    hyperparameters, its weights, the input channels, normalisation, class map, training scale and configuration;
    ``extra`` adds e.g. ``score`` or ``train_state``."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "model": spec,
        "state_dict": state_dict,
        "channels": channels,
        "norm": norm,
        "class_map": class_map,
        "scale": scale,
        "config": config or {},
        **extra,
    }


def inference_checkpoint(model: nn.Module, class_map: ClassMap, norm: Norm, scale: float = 1.0) -> dict:
    """A checkpoint for prediction and evaluation only (no training state): for tests, benchmarks, conversions."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return make_checkpoint(model_spec(model), weights, model.n_channels, norm, class_map.to_dict(), scale)


def load_checkpoint(path: str | Path) -> dict:
    """A unetseg or Pytorch-UNet checkpoint as a checked unetseg checkpoint dict; a bad one is a UserError."""
    data = read_file(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return check_checkpoint(data, path)
    if isinstance(data, dict) and _is_pytorch_unet(data):
        return check_checkpoint(_from_pytorch_unet(data, path), path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict) and _is_pytorch_unet(data["state_dict"]):
        return check_checkpoint(
            _from_pytorch_unet(data["state_dict"] | {"mask_values": data.get("mask_values")}, path), path
        )
    raise UserError(
        f"{path}: not a unetseg or Pytorch-UNet checkpoint (no U-Net weights inside); "
        "pass a file written by unetseg train or Pytorch-UNet's train.py"
    )


def build_model(checkpoint: dict, **overrides: object) -> nn.Module:
    """The checkpoint's model with its weights loaded (on the CPU, eval mode).

    The spec is checked and compared with the weights first, so a damaged spec never allocates a model.
    """
    check_fit(checkpoint["model"], checkpoint["state_dict"], "checkpoint", **overrides)
    spec = dict(checkpoint["model"])
    name = spec.pop("name")
    model = create_model(name, **spec, **overrides)
    model.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if k != "mask_values"})
    return model.eval()


def load_weights(model: nn.Module, state: dict, source: object) -> None:
    """Load a state dict, with a message that names the mismatch instead of a wall of keys."""
    state = {k: v for k, v in state.items() if k != "mask_values"}
    check_weights(model, state, source)
    model.load_state_dict(state)


def check_weights(model: nn.Module, state: dict, source: object, hint: str = LOAD_HINT) -> None:
    """Raise a UserError naming what does not fit: missing or unexpected names, shapes, integer for float."""
    state = {k: v for k, v in state.items() if k != "mask_values"}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    kinds = [f"{k} is {state[k].dtype}" for k, v in own.items() if k in state and _kind(state[k]) != _kind(v)]
    if missing or unexpected or shapes or kinds:
        detail = "; ".join(
            filter(
                None,
                [
                    f"missing {', '.join(missing[:3])}" if missing else "",
                    f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                    f"shape {', '.join(shapes[:3])}" if shapes else "",
                    f"type {', '.join(kinds[:3])}" if kinds else "",
                ],
            )
        )
        raise UserError(f"{source}: weights do not fit this model ({detail}); {hint}")


def _kind(tensor: torch.Tensor) -> str:
    """Floating weights may arrive in another float type (bf16 is cast on load); integers must stay integers."""
    return "float" if tensor.is_floating_point() else "complex" if tensor.is_complex() else "int"

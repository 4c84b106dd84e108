"""Checks of what a model file says about itself: model spec, channels, normalisation, scale, class map.

Checkpoints, Pytorch-UNet files and exported ONNX models all carry these values; a damaged or edited file must
fail here with one message naming the file and the field, not later inside PyTorch or NumPy. No torch import:
the ONNX prediction path uses these checks too.
"""

from __future__ import annotations

import math
from typing import TypedDict

from unetseg.errors import UserError

# Ranges of the U-Net's hyperparameters. Width 256 is already a ~500M-parameter model (the paper's is 64);
# anything wider is a damaged file, and checking first avoids allocating it before the weights are compared.
UNET_LIMITS = {"n_channels": (1, 64), "n_classes": (1, 255), "width": (1, 256)}
MAX_MASK_VALUE = 65535  # masks are 8- or 16-bit images
MAX_SCALE = 16.0  # as -s/--scale


class Norm(TypedDict):
    """How pixel values become model input, the one normalisation record every file and function passes around:
    ``x / scale``, then ``(x - mean) / std`` per channel."""

    scale: float  # the data's range: 255 for 8-bit images, 65535 for 16-bit, 1 for floats in [0, 1]
    mean: list[float]
    std: list[float]


DAMAGED = "the file is damaged or was edited: use it as unetseg or Pytorch-UNet wrote it, or train (or export) again"


def damaged(where: object, field: str, problem: str, hint: str = DAMAGED) -> UserError:
    """The one message for a bad field: which file, which field, what is wrong, and what to do."""
    return UserError(f"{where}: {field} {problem}; {hint}")


def as_int(value: object, where: object, field: str, low: int, high: int, hint: str = DAMAGED) -> int:
    """An integer in ``[low, high]`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise damaged(where, field, f"must be an integer from {low} to {high}, not {_show(value)}", hint)
    if not low <= value <= high:
        raise damaged(where, field, f"is {value}, outside {low}-{high}", hint)
    return value


def as_number(value: object, where: object, field: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number ``low < value <= high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise damaged(where, field, f"must be a number, not {_show(value)}")
    if not (math.isfinite(value) and low < value <= high):
        bounds = f"above {low:g}" + (f" and at most {high:g}" if math.isfinite(high) else "")
        raise damaged(where, field, f"is {value!r}; it must be finite and {bounds}")
    return float(value)


def as_dict(value: object, where: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise damaged(where, field, f"must be a mapping, not {_show(value)}")
    return value


def as_list(value: object, where: object, field: str, length: int | None = None) -> list:
    if not isinstance(value, (list, tuple)):
        raise damaged(where, field, f"must be a list, not {_show(value)}")
    if length is not None and len(value) != length:
        raise damaged(where, field, f"has {len(value)} entries, expected {length}")
    return list(value)


# Every model's constructor arguments: an integer range, "bool", or "blocks" (a list of block counts, one per
# stage). The first two are required. Widths above 256 and depths above 8 are damaged files, refused before
# anything is allocated.
_IO = {"n_channels": UNET_LIMITS["n_channels"], "n_classes": UNET_LIMITS["n_classes"]}
_RESNET = _IO | {"width": UNET_LIMITS["width"], "checkpointing": "bool"}
MODEL_FIELDS: dict[str, dict] = {
    "unet": _IO | {"bilinear": "bool", "width": UNET_LIMITS["width"], "checkpointing": "bool"},
    "resunet": _IO | {"width": UNET_LIMITS["width"], "depth": (2, 8), "blocks": "blocks", "checkpointing": "bool"},
    "unet-resnet18": _RESNET,
    "unet-resnet34": _RESNET,
    "unet-resnet50": _RESNET,
}
# What --help says of each trainable model (from the registry's names, in its order).
MODEL_HELP = {
    "unet": "the classic U-Net with Pytorch-UNet's layers",
    "resunet": "residual encoder and plain decoder after nnU-Net's ResEnc",
    "unet-resnet18": "U-Net decoder on a ResNet-18 encoder, as smp's Unet",
    "unet-resnet34": "the same on ResNet-34",
    "unet-resnet50": "the same on ResNet-50; for these three --width is the decoder's stride-4 level (64: smp's "
    "decoder) and --encoder-weights loads ImageNet weights",
}
MAX_BLOCKS = 16  # residual blocks per stage (nnU-Net ResEnc XL has 6 per stage in 2-D)


def check_model_name(name: str) -> None:
    """``train --model``: a registered trainable model; the message lists them."""
    if name == "ensemble":
        raise UserError(
            "--model ensemble: the ensemble is inference-only (train --folds K builds one from K trained models); "
            f"models that can be trained: {', '.join(MODEL_FIELDS)}"
        )
    if name not in MODEL_FIELDS:
        raise UserError(f"unknown --model '{name}'; known models: {', '.join(MODEL_FIELDS)}")


def check_spec(name: str, spec: dict, where: object = "model", hint: str = DAMAGED) -> dict:
    """A registered model's constructor arguments, checked for type and range before anything is allocated."""
    fields = MODEL_FIELDS[name]
    unknown = sorted(set(spec) - set(fields) - {"name"})
    if unknown:
        shown = ", ".join(f for f in fields if f != "checkpointing")
        what = "a U-Net" if name == "unet" else f"a {name}"
        raise damaged(where, "model", f"has unknown fields {unknown}; {what} has {shown}", hint)
    missing = [k for k in ("n_channels", "n_classes") if k not in spec]
    if missing:
        raise damaged(where, "model", f"lacks {', '.join(missing)}", hint)
    checked = {}
    for key, kind in fields.items():
        if key not in spec:
            continue
        value = spec[key]
        if kind == "bool":
            if not isinstance(value, bool):
                raise damaged(where, f"model.{key}", f"must be true or false, not {_show(value)}", hint)
        elif kind == "blocks":
            depth = spec.get("depth", 6)
            items = as_list(value, where, f"model.{key}", depth if isinstance(depth, int) else None)
            checked[key] = [as_int(v, where, f"model.{key} entry", 1, MAX_BLOCKS, hint) for v in items]
        else:
            checked[key] = as_int(value, where, f"model.{key}", *kind, hint)
    return {k: spec[k] for k in spec if k != "name"} | checked


def check_unet_spec(spec: dict, where: object = "model", hint: str = DAMAGED) -> dict:
    """The U-Net's constructor arguments (see :func:`check_spec`)."""
    return check_spec("unet", spec, where, hint)


def check_model_spec(spec: object, where: object) -> dict:
    """A checkpoint's ``model`` entry: a registered model, or an ensemble of them with one normalisation each."""
    spec = as_dict(spec, where, "model")
    name = spec.get("name")
    if name in MODEL_FIELDS:
        check_spec(name, spec, where)
    elif name == "ensemble":
        members = as_list(spec.get("members"), where, "model.members")
        if not members:
            raise damaged(where, "model.members", "is empty")
        for member in members:
            kind = as_dict(member, where, "model.members[]").get("name", "unet")
            if kind not in MODEL_FIELDS:
                raise damaged(where, "model.members[].name", f"is {_show(kind)}; known: {', '.join(MODEL_FIELDS)}")
            check_spec(kind, member, where)
        if len({(m["n_channels"], m["n_classes"]) for m in members}) > 1:
            raise damaged(where, "model.members", "disagree on input channels or classes")
        channels = members[0]["n_channels"]
        norms = as_list(spec.get("norms"), where, "model.norms", len(members))
        for norm in [*norms, spec.get("norm")]:
            check_norm(norm, channels, where, "model.norms")
    else:
        known = ", ".join(sorted([*MODEL_FIELDS, "ensemble"]))
        raise damaged(where, "model.name", f"is {_show(name)}; known models: {known}")
    return spec


def spec_io(spec: dict) -> tuple[int, int]:
    """Input channels and output channels of a checked spec."""
    first = spec["members"][0] if spec.get("name") == "ensemble" else spec
    return first["n_channels"], first["n_classes"]


def check_norm(norm: object, channels: int, where: object, field: str = "norm") -> Norm:
    """``{"scale", "mean", "std"}``: a positive finite scale and one finite mean and positive std per channel."""
    norm = as_dict(norm, where, field)
    for key in ("scale", "mean", "std"):
        if key not in norm:
            raise damaged(where, field, f"lacks '{key}'")
    scale = as_number(norm["scale"], where, f"{field}.scale")
    mean = [
        as_number(m, where, f"{field}.mean", -math.inf) for m in as_list(norm["mean"], where, f"{field}.mean", channels)
    ]
    std = [as_number(s, where, f"{field}.std") for s in as_list(norm["std"], where, f"{field}.std", channels)]
    return {"scale": scale, "mean": mean, "std": std}


def check_scale(value: object, where: object) -> float:
    return as_number(value, where, "scale", 0.0, MAX_SCALE)


def class_count(outputs: int) -> int:
    """Classes (mask values) a model with ``outputs`` output channels tells apart: one sigmoid output is two."""
    return 2 if outputs == 1 else outputs


def check_mask_values(values: object, where: object, field: str, classes: int | None = None) -> list:
    """Mask values in class order: distinct grey levels, or distinct ``[r, g, b]`` colours, one per class."""
    values = as_list(values, where, field)
    if not values:
        raise damaged(where, field, "is empty; it needs one mask value per class")
    colour = isinstance(values[0], (list, tuple))
    checked = [_colour(v, where, field) if colour else _grey(v, where, field) for v in values]
    keys = [tuple(v) if colour else v for v in checked]
    if len(set(keys)) != len(keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        raise damaged(where, field, f"repeats {repeated[0]}; each class needs its own mask value")
    if classes is not None and len(checked) != class_count(classes):
        outputs = f"{classes} output{'s' if classes > 1 else ''}"
        raise damaged(where, field, f"has {len(checked)} values but the model has {outputs} ({class_count(classes)})")
    return checked


def _grey(value: object, where: object, field: str) -> int:
    if isinstance(value, (list, tuple)):
        raise damaged(where, field, "mixes grey levels and colours")
    if isinstance(value, bool):  # Pytorch-UNet on 1-bit PNG masks stores [False, True]
        return int(value)
    return as_int(value, where, f"{field} entry", 0, MAX_MASK_VALUE)


def _colour(value: object, where: object, field: str) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise damaged(where, field, f"mixes colours and grey levels ({_show(value)})")
    if len(value) != 3:
        raise damaged(where, field, f"holds the colour {_show(value)}; colours are [r, g, b]")
    return [as_int(c, where, f"{field} colour channel", 0, 255) for c in value]


def check_class_map(data: object, classes: int | None, where: object, field: str = "class_map") -> dict:
    """A class map as ``ClassMap.to_dict`` writes it, agreeing with the model's ``classes`` outputs."""
    data = as_dict(data, where, field)
    if "values" not in data:
        raise damaged(where, field, "lacks 'values'")
    values = check_mask_values(data["values"], where, f"{field}.values", classes)
    names = as_list(data.get("names", []), where, f"{field}.names")
    if names and (len(names) != len(values) or not all(isinstance(n, str) for n in names)):
        raise damaged(where, f"{field}.names", f"must be {len(values)} strings, one per mask value")
    colors = as_list(data.get("colors", []), where, f"{field}.colors")
    if colors and len(colors) != len(values):
        raise damaged(where, f"{field}.colors", f"must be {len(values)} colours, one per mask value")
    for c in colors:
        _colour(c, where, f"{field}.colors")
    if not isinstance(data.get("snap", False), bool):
        raise damaged(where, f"{field}.snap", f"must be true or false, not {_show(data['snap'])}")
    ignore = data.get("ignore")
    if ignore is not None:
        check = _colour if isinstance(values[0], list) else _grey
        check(ignore, where, f"{field}.ignore")
    return data | {"values": values, "names": names, "colors": [list(c) for c in colors]}


def _show(value: object) -> str:
    """A short description of a bad value for a message."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"

"""Segmentation models, built by name from a small registry; each describes itself with :func:`model_spec`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from unetseg.core.meta import DAMAGED, MODEL_FIELDS, check_model_spec, check_spec
from unetseg.errors import UserError
from unetseg.models.ensemble import Ensemble
from unetseg.models.resunet import ResUNet
from unetseg.models.unet import UNet
from unetseg.models.unet_resnet import UNetResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "resunet": ResUNet,
    "unet-resnet18": partial(UNetResNet, 18),
    "unet-resnet34": partial(UNetResNet, 34),
    "unet-resnet50": partial(UNetResNet, 50),
    "ensemble": Ensemble,
}
# Models `unetseg train --model` can train. The ensemble is inference-only: `train --folds K` assembles it from
# K trained models, each with its own normalisation.
TRAINABLE = tuple(MODEL_FIELDS)  # every registered model but the ensemble
TRAIN_HINT = "match --width, --classes and the input channels to what the model supports"


def create_model(name: str, trainable: bool = False, **kwargs: object) -> nn.Module:
    """Build a registered model; an unknown name lists the known ones. ``trainable``: only models train can fit.

    The arguments are checked (types and ranges) before anything is allocated.
    """
    known = TRAINABLE if trainable else tuple(sorted(MODELS))
    if name not in known:
        if trainable and name in MODELS:
            raise UserError(
                f"--model {name}: the {name} is inference-only (train --folds K builds one from K trained models); "
                f"models that can be trained: {', '.join(TRAINABLE)}"
            )
        what = "--model" if trainable else "model"
        raise UserError(f"unknown {what} '{name}'; known models: {', '.join(known)}")
    if name == "ensemble":
        check_model_spec({"name": name, **kwargs}, "model")
    else:
        check_spec(name, kwargs, f"--model {name}" if trainable else "model", TRAIN_HINT if trainable else DAMAGED)
    return MODELS[name](**kwargs)


def model_spec(model: nn.Module) -> dict:
    """What it takes to rebuild ``model`` with :func:`create_model` (stored in checkpoints)."""
    if isinstance(model, Ensemble):
        return {"name": "ensemble", "members": model.specs, "norms": model.norms, "norm": model.norm}
    io = {"n_channels": model.n_channels, "n_classes": model.n_classes}
    if isinstance(model, UNet):
        return {"name": "unet", **io, "bilinear": model.bilinear, "width": model.width}
    if isinstance(model, ResUNet):
        return {"name": "resunet", **io, "width": model.width, "depth": model.depth, "blocks": list(model.blocks)}
    if isinstance(model, UNetResNet):
        return {"name": f"unet-resnet{model.encoder.depth}", **io, "width": model.width}
    raise TypeError(f"no spec for {type(model).__name__}")


__all__ = [
    "MODELS",
    "TRAINABLE",
    "Ensemble",
    "ResUNet",
    "UNet",
    "UNetResNet",
    "create_model",
    "model_spec",
]

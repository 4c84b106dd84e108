"""Segmentation models, built by name from a small registry."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from unetseg.core.meta import DAMAGED, check_model_spec, check_unet_spec
from unetseg.errors import UserError
from unetseg.models.ensemble import Ensemble
from unetseg.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {"unet": UNet, "ensemble": Ensemble}
# Models `unetseg train --model` can train. The ensemble is inference-only: `train --folds K` assembles it from
# K trained U-Nets, each with its own normalisation.
TRAINABLE = ("unet",)
TRAIN_HINT = "match --width, --classes and the input channels to what a U-Net supports"


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
    if name == "unet":
        check_unet_spec(kwargs, "--model unet" if trainable else "model", TRAIN_HINT if trainable else DAMAGED)
    else:
        check_model_spec({"name": name, **kwargs}, "model")
    return MODELS[name](**kwargs)


def model_spec(model: nn.Module) -> dict:
    """What it takes to rebuild ``model`` with :func:`create_model` (stored in checkpoints)."""
    if isinstance(model, Ensemble):
        return {"name": "ensemble", "members": model.specs, "norms": model.norms, "norm": model.norm}
    if isinstance(model, UNet):
        return {
            "name": "unet",
            "n_channels": model.n_channels,
            "n_classes": model.n_classes,
            "bilinear": model.bilinear,
            "width": model.width,
        }
    raise TypeError(f"no spec for {type(model).__name__}")


__all__ = ["MODELS", "TRAINABLE", "Ensemble", "UNet", "create_model", "model_spec"]

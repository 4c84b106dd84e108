"""Segmentation models, built by name from a small registry."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from unetseg.errors import UserError
from unetseg.models.ensemble import Ensemble
from unetseg.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {"unet": UNet, "ensemble": Ensemble}


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; an unknown name lists the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


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


__all__ = ["MODELS", "Ensemble", "UNet", "create_model", "model_spec"]

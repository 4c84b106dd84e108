"""The pieces a run is built from: seeding, the model, the patch shape and the loss weights."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn

from unetseg.config import TrainConfig
from unetseg.core import distributed
from unetseg.core.checkpoint import load_checkpoint, load_weights
from unetseg.data.prepare import Dataset, class_frequencies
from unetseg.errors import UserError
from unetseg.models import UNetResNet, create_model
from unetseg.models.weights import load_encoder_weights


def patch_shape(cfg: TrainConfig, data: Dataset) -> tuple[int, int]:
    """--patch-size, else the common image size, else 256 x 256 crops."""
    if cfg.patch_size:
        return cfg.patch_size, cfg.patch_size
    sizes = {s.image.shape[:2] for s in data.train}
    return next(iter(sizes)) if len(sizes) == 1 else (256, 256)


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable GEMMs
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune convolutions: input sizes repeat in training


def build_model(
    cfg: TrainConfig, data: Dataset, device: torch.device, info: distributed.DistInfo, resumed: bool = False
) -> tuple[nn.Module, str | None]:
    """The --model with its initial weights; also what pretrained encoder weights were loaded (None: none).

    A resumed run takes every weight from its checkpoint, so it never fetches encoder weights again.
    """
    out_channels = 1 if cfg.classes == 1 else data.class_map.num_classes
    options = {"width": cfg.width, "checkpointing": cfg.checkpointing}
    if cfg.model == "unet":
        options["bilinear"] = cfg.bilinear
    elif cfg.bilinear:
        raise UserError(f"--bilinear: only the unet up-samples bilinearly; drop it for --model {cfg.model}")
    model = create_model(cfg.model, trainable=True, n_channels=data.channels, n_classes=out_channels, **options)
    pretrained = None
    if cfg.encoder_weights != "none":
        if not isinstance(model, UNetResNet):
            raise UserError(
                f"--encoder-weights {cfg.encoder_weights}: the {cfg.model} has no pretrained encoder; "
                "use --model unet-resnet18, unet-resnet34 or unet-resnet50, or drop --encoder-weights"
            )
        if not resumed:
            with distributed.main_first(info):  # one process downloads into torch's cache, the others read it
                pretrained = load_encoder_weights(model, cfg.encoder_weights)
    if cfg.load:
        load_weights(model, load_checkpoint(cfg.load)["state_dict"], cfg.load)
    if cfg.sync_bn and info.enabled:
        if device.type != "cuda":
            raise UserError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU); drop it")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    return model, pretrained


def class_weights(option: str, data: Dataset) -> torch.Tensor | None:
    """Per-class loss weights: none, auto (1 / sqrt(pixel share), mean 1), or a comma-separated list."""
    k = data.class_map.num_classes
    if option == "none":
        return None
    if option == "auto":
        freq = torch.tensor(class_frequencies(data.train, k), dtype=torch.float32).clamp_min(1e-4)
        weights = freq.rsqrt()
        return weights / weights.mean()
    try:
        weights = torch.tensor([float(v) for v in option.split(",")])
    except ValueError:
        raise UserError(f"--class-weights {option}: write none, auto, or {k} numbers such as 1,3") from None
    if len(weights) != k or (weights < 0).any():
        raise UserError(f"--class-weights {option}: give {k} non-negative weights, one per class")
    return weights

"""The options of ``unetseg train`` and ``unetseg plan`` (the dataset options are in :mod:`unetseg.data_config`).

Re-exported by :mod:`unetseg.config`; every value passes the checks in :mod:`unetseg.options` on construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from unetseg.core.meta import MODEL_HELP, check_model_name
from unetseg.data_config import SCALE, DataConfig
from unetseg.errors import UserError
from unetseg.options import (
    BIG,
    check_class_weights,
    check_duration,
    check_names_list,
    option,
)

LOG_FORMATS = ("text", "json")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_TILE = 16  # the U-Net halves its input 4 times
MAX_SIZE = 4096  # patch sizes above this exhaust any GPU's memory at batch 1; tile the images instead
WORKERS = {"low": 1, "high": 256}
BATCH = {"low": 1, "high": 4096}
FOREGROUND_CROPS = 0.33  # share of crops centred on a foreground pixel where the plan keeps it (nnU-Net's)
RARE_CLASS_SHARE = 0.05  # below this pixel share a class is rare: the plan weighs the loss toward it
RARE_IMAGE_SHARE = 0.25  # a class held by fewer of the training images is rare in images (weights; balanced draws)


@dataclass
class TrainConfig(DataConfig):
    """``unetseg train``: every knob of the training run."""

    config: str | None = option(None, "YAML file with options; the command line wins over it", group="run")
    out: str | None = option(None, "run directory", group="run", shown="runs/<date>-<time>")
    overwrite: bool = option(False, "allow writing into an existing run directory", group="run")
    load: str | None = option(
        None, "initialise weights from a checkpoint (unetseg or Pytorch-UNet .pth)", "-f", group="run"
    )
    seed: int = option(
        0, "random seed for the split, the initial weights and the batch order", group="run", low=0, high=2**32 - 1
    )
    plan: bool = option(
        True,
        "choose the options marked 'planned' from the data and the device; options you give still win; "
        "--no-plan uses the fixed defaults",
        group="run",
    )
    pilot: bool = option(
        True,
        "where the plan is unsure (a resolution traded for epochs, the learning rate), short pilot runs on 20% of "
        "the time budget pick the recipe that scores best on the validation split, and it continues from its weights",
        group="run",
    )
    scale: float = option(
        1.0,
        "downscaling factor of the images (bicubic) and masks (nearest), as Pytorch-UNet; predict and evaluate resize "
        "back and score at the images' own size",
        "-s",
        group="data",
        planned=True,
        **SCALE,
    )
    model: str = option(
        "unet",
        "model architecture: " + "; ".join(f"{name} ({text})" for name, text in MODEL_HELP.items()),
        group="model",
        check=lambda name, value: check_model_name(value),
        planned=True,
    )
    encoder_weights: str = option(
        "none",
        "initial weights of a unet-resnet* encoder: none (random), imagenet (torchvision's, downloaded once into "
        "torch's hub cache), or a local .pth file in torchvision or timm key layout; pretrained weights switch "
        "the input normalisation to ImageNet's mean and std",
        group="model",
    )
    width: int = option(
        64, "channels of the first U-Net level (64 as in Pytorch-UNet)", group="model", low=1, high=512, planned=True
    )
    bilinear: bool = option(False, "bilinear up-sampling instead of transposed convolutions", group="model")
    patch_size: int | None = option(
        None,
        "train on random crops of this size",
        group="sampling and augmentation",
        low=16,
        high=MAX_SIZE,
        unit="a size",
        hint="tile larger images or lower -s/--scale",
        planned=True,
        shown="whole images when all have one size, else 256",
    )
    augment: str = option(
        "default",
        "augmentation preset: none, flips (flips and 90-degree turns), light (+ mild intensity), default (+ random "
        "scale/rotation/shift, brightness, contrast, gamma, noise, blur), heavy (+ elastic, stronger)",
        choices=("none", "flips", "light", "default", "heavy"),
        group="sampling and augmentation",
        planned=True,
    )
    flips: str = option(
        "all",
        "random flips: all (left-right, up-down, 90-degree turns: microscopy, aerial views) or horizontal (left-right "
        "only: photos and scenes, which have an up and a down)",
        choices=("all", "horizontal"),
        group="sampling and augmentation",
        planned=True,
    )
    foreground_crops: float = option(
        FOREGROUND_CROPS,
        "share of random crops centred on a foreground pixel (nnU-Net's choice), so small objects are seen; "
        "planned 0 for thin structures",
        group="sampling and augmentation",
        low=0,
        high=1,
        unit="a share",
        planned=True,
    )
    image_sampling: str = option(
        "uniform",
        "how an epoch draws its images: uniform (each once) or balanced (images holding a class that under 25% of "
        "the images hold drawn more often, by sqrt(25% / share): LVIS's repeat factors)",
        choices=("uniform", "balanced"),
        group="sampling and augmentation",
    )
    epochs: int = option(
        5,
        "number of epochs (Pytorch-UNet's default)",
        "-e",
        group="schedule and stopping",
        low=1,
        high=BIG,
        planned="under --time-budget",
    )
    batch_size: int = option(
        8,
        "images per optimizer step; 8 keeps BatchNorm statistics stable",
        "-b",
        group="optimisation",
        **BATCH,
        planned=True,
    )
    learning_rate: float = option(
        1e-3,
        "peak learning rate (planned by optimizer: 1e-3 adamw/adam, 1e-2 sgd, 1e-5 rmsprop)",
        "-l",
        group="optimisation",
        planned=True,
        low=0,
        low_open=True,
        high=10,
        hint="e.g. 1e-3",
    )
    encoder_lr_scale: float = option(
        1.0,
        "learning rate of a unet-resnet* encoder as a share of --learning-rate (planned: 0.1 with pretrained "
        "--encoder-weights, so that a random decoder's first large gradients do not wreck the learnt features)",
        group="optimisation",
        planned=True,
        low=0,
        low_open=True,
        high=1,
    )
    optimizer: str = option(
        "adamw",
        "optimizer: adamw (converges fast without tuning), adam, sgd, rmsprop",
        choices=("adamw", "adam", "sgd", "rmsprop"),
        group="optimisation",
    )
    weight_decay: float = option(
        1e-4, "weight decay (Pytorch-UNet's RMSprop used 1e-8)", group="optimisation", low=0, high=1
    )
    momentum: float = option(
        0.9,
        "momentum for sgd and rmsprop (Pytorch-UNet's RMSprop used 0.999)",
        group="optimisation",
        low=0,
        high=1,
        high_open=True,
    )
    loss: str = option(
        "ce+dice",
        "loss: ce+dice (CE/BCE plus soft Dice per class), ce, focal, focal+dice, tversky, ce+tversky",
        choices=("ce+dice", "ce", "focal", "focal+dice", "tversky", "ce+tversky"),
        group="optimisation",
    )
    class_weights: str = option(
        "none",
        "per-class loss weights: none, auto (rare classes up by sqrt(5% / share)), or e.g. 1,5",
        group="optimisation",
        check=check_class_weights,
        planned=True,
    )
    grad_clip: float = option(
        1.0,
        "clip the gradient norm (after unscaling) at this value; 0 turns it off",
        group="optimisation",
        low=0,
        high=1e6,
    )
    accumulate: int = option(
        1, "accumulate gradients over this many batches per optimizer step", group="optimisation", low=1, high=1024
    )
    ema: float | None = option(
        None,
        "evaluate and save an exponential moving average of the weights with this decay (e.g. 0.999)",
        group="optimisation",
        low=0,
        low_open=True,
        high=1,
        high_open=True,
        unit="a decay",
        hint="e.g. 0.999",
        shown="off",
    )
    max_bad_steps: int = option(
        20,
        "stop after this many consecutive steps with a non-finite loss or gradient",
        group="optimisation",
        low=1,
        high=BIG,
    )
    scheduler: str = option(
        "cosine",
        "learning-rate schedule: cosine (smooth decay to the end of the run), poly (nnU-Net's (1 - t)^0.9), "
        "plateau (ReduceLROnPlateau on validation Dice, as Pytorch-UNet), constant",
        choices=("cosine", "poly", "plateau", "constant"),
        group="schedule and stopping",
    )
    warmup_steps: int = option(
        20,
        "linear warm-up steps; avoids the early blow-ups of a cold Adam",
        group="schedule and stopping",
        low=0,
        high=BIG,
    )
    time_budget: str | None = option(
        None,
        "stop cleanly after this long, e.g. 30m, 2h, 90s",
        group="schedule and stopping",
        check=check_duration,
        shown="no limit",
    )
    max_steps: int | None = option(
        None, "stop after this many optimizer steps", group="schedule and stopping", low=1, high=BIG, shown="no limit"
    )
    patience: int | None = option(
        None,
        "early stopping: stop after this many validation rounds without improvement",
        group="schedule and stopping",
        low=1,
        high=BIG,
        shown="off",
    )
    score: str = option(
        "auto",
        "validation score that picks best.pt: auto (mIoU over all classes when class 0 is a real class, else the "
        "foreground Dice), foreground (classes 1..K-1), all (mIoU over every class)",
        choices=("auto", "foreground", "all"),
        group="validation",
    )
    val_rounds: int = option(
        5, "validation rounds per epoch (at least one always runs)", group="validation", low=1, high=1000, planned=True
    )
    val_every: int = option(
        1,
        "validate every N epochs (the last one always validates), for epochs much shorter than a validation round",
        group="validation",
        low=1,
        high=BIG,
        planned=True,
    )
    val_batch_size: int = option(
        16, "images per validation batch (inference needs far less memory than training)", group="validation", **BATCH
    )
    folds: int | None = option(
        None,
        "cross-validation: train this many models on deterministic folds, then "
        "report out-of-fold scores and write ensemble.pt",
        group="validation",
        low=2,
        high=100,
        shown="off",
    )
    fold: int | None = option(
        None,
        "with --folds: train only this fold (0-based), e.g. one per machine",
        group="validation",
        low=0,
        high=99,
        shown="every fold",
    )
    save_every: int | None = option(
        None, "also write last.pt every N optimizer steps", group="checkpoints", low=1, high=BIG, shown="off"
    )
    save_epochs: bool = option(
        False,
        "also keep a checkpoint of every epoch (checkpoints/epoch_NNN.pt); last.pt and best.pt are always kept",
        group="checkpoints",
    )
    logger: str = option(
        "csv",
        "loggers, comma-separated: csv (metrics.csv, train.log, plots/, report.html; always on), tensorboard, wandb "
        "(offline unless you are logged in), mlflow (<run dir>/mlruns unless MLFLOW_TRACKING_URI is set)",
        group="logging",
        check=check_names_list,
    )
    log_format: str = option(
        "text",
        "console output: text, or json (one JSON object per line on stdout, for scripts)",
        choices=LOG_FORMATS,
        group="logging",
    )
    log_every: int = option(
        10,
        "read the loss and update progress every N steps (reading forces a device sync)",
        group="logging",
        low=1,
        high=BIG,
    )
    quiet: bool = option(False, "print nothing but errors", group="logging")
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N, mps", group="hardware")
    workers: int = option(4, "threads that decode the dataset", group="hardware", **WORKERS)
    amp: bool = option(False, "mixed precision: bf16 where supported, else fp16 with a grad scaler", group="hardware")
    precision: str = option(
        "auto",
        "auto (bf16 where the GPU or CPU runs it natively, else fp32), fp32, bf16, fp16; --amp forces mixed",
        choices=PRECISIONS,
        group="hardware",
    )
    compile: bool | None = option(
        None,
        "torch.compile the training step (faster steps after a one-off compile)",
        group="hardware",
        shown="on for CUDA, off on CPU",
    )
    checkpointing: bool = option(
        False, "activation checkpointing: recompute activations in backward to save memory", group="hardware"
    )
    channels_last: bool = option(
        True, "channels-last memory format (faster convolutions on GPU and CPU)", group="hardware"
    )
    deterministic: bool = option(
        False, "deterministic kernels on GPU (slower); CPU runs are repeatable anyway", group="hardware"
    )
    nproc: int | None = option(
        None,
        "start this many training processes with torchrun (one per GPU)",
        group="distributed",
        low=1,
        high=1024,
        shown="one process",
    )
    sync_bn: bool = option(
        False, "synchronise BatchNorm statistics across processes under multi-GPU training", group="distributed"
    )

    def check_together(self) -> None:
        super().check_together()
        if self.fold is not None and self.folds is None:
            raise UserError("--fold needs --folds K")
        if self.fold is not None and self.fold >= self.folds:
            raise UserError(f"--fold {self.fold}: with --folds {self.folds} choose a fold from 0 to {self.folds - 1}")


# What `unetseg plan` reads: the data, the split, the device and the budget, plus the options it plans (which it
# reports as "you gave"). Everything else of TrainConfig means nothing to planning and is refused.
PLAN_USES = (
    *(f.name for f in dataclasses.fields(DataConfig)),
    *("config", "seed", "device", "workers", "time_budget", "folds", "fold"),
    *("pilot", "optimizer", "load", "model", "encoder_weights", "max_steps"),  # constraints on the plan
    *(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("planned")),
)
PLAN_SKIP = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in PLAN_USES)

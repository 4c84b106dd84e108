"""A run, built: the run directory first, then seeding, the data, the model and its optimizer, the resumed state."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unetseg.config import TrainConfig, parse_duration, to_dict
from unetseg.core import distributed
from unetseg.core.atomic import write_atomic
from unetseg.core.checkpoint import load_checkpoint, load_weights
from unetseg.core.device import choose_dtype, resolve_device
from unetseg.data.augment import get_spec
from unetseg.data.prepare import Dataset, class_frequencies, prepare_for, repeat_factors
from unetseg.data.sampler import TrainBatches
from unetseg.errors import UserError
from unetseg.models import UNetResNet, create_model
from unetseg.models.resnet import imagenet_norm
from unetseg.models.weights import load_encoder_weights
from unetseg.tracking.runlog import RunLog
from unetseg.train_config import RARE_CLASS_SHARE, RARE_IMAGE_SHARE
from unetseg.training.ema import EMA
from unetseg.training.losses import build_loss
from unetseg.training.optim import Schedule, build_optimizer
from unetseg.training.rundir import default_run_dir, open_run_dir
from unetseg.training.state import Clock, Feed, Hardware, Learner, Output, Run, RunningStats, restore


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
    """Per-class loss weights: none, auto, or a comma-separated list.

    ``auto`` weighs up only the rare classes, by sqrt(RARE_CLASS_SHARE / pixel share); every other class keeps
    weight 1. Weighing the common classes down instead (1 / sqrt(share) for all) makes the pixels of a dominant
    class next to a rare one cheap to get wrong: the rare class grows into them and its IoU falls.
    """
    k = data.class_map.num_classes
    if option == "none":
        return None
    if option == "auto":
        freq = torch.tensor(class_frequencies(data.train, k), dtype=torch.float32).clamp_min(1e-4)
        return (RARE_CLASS_SHARE / freq).sqrt().clamp_min(1)
    try:
        weights = torch.tensor([float(v) for v in option.split(",")])
    except ValueError:
        raise UserError(f"--class-weights {option}: write none, auto, or {k} numbers such as 1,3") from None
    if len(weights) != k or (weights < 0).any():
        raise UserError(f"--class-weights {option}: give {k} non-negative weights, one per class")
    return weights


def build_run(cfg: TrainConfig, resume: dict | None) -> Run:
    """Data, model, optimizer, schedule and state, restored from ``resume`` when given.

    The run directory is created, checked writable and locked first (rank 0), before any data is read.
    """
    device = resolve_device(cfg.device)
    info = distributed.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir()
    lock, notes = open_run_dir(run_dir, resume is not None, cfg.overwrite) if info.is_main else (None, [])
    try:
        run = assemble(cfg, resume, run_dir, device, info)
    except BaseException:
        if lock:
            lock.release()
        raise
    run.out.lock, run.out.notes = lock, notes
    return run


def assemble(
    cfg: TrainConfig, resume: dict | None, run_dir: Path, device: torch.device, info: distributed.DistInfo
) -> Run:
    """Everything but the run directory: log, data, model, optimizer, schedule, scaler, EMA; the resumed state."""
    log = RunLog(run_dir if info.is_main else None, cfg.quiet or not info.is_main, cfg.logger, cfg.log_format)
    if info.is_main:
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    seed_everything(cfg.seed, cfg.deterministic, device)
    with distributed.main_first(info):  # one process scans and builds the data cache; the others then read it
        data = prepare_for(cfg, fold=(cfg.fold, cfg.folds) if cfg.folds and cfg.fold is not None else None)
    if resume is not None:
        data.norm = resume["norm"]  # the original run's statistics, whatever the data says now
    model, pretrained = build_model(cfg, data, device, info, resumed=resume is not None)
    if pretrained:  # the encoder learnt on ImageNet-normalised images: feed it the same statistics
        data.norm = imagenet_norm(data.channels, data.norm["scale"])
    k = data.class_map.num_classes
    repeats = repeat_factors(data.train, k, RARE_IMAGE_SHARE) if cfg.image_sampling == "balanced" else None
    batches = TrainBatches(
        data.train,
        cfg.batch_size,
        patch_shape(cfg, data),
        cfg.seed,
        info.rank,
        info.world,
        cfg.foreground_crops,
        repeats,
    )
    hw = Hardware(device, choose_dtype(cfg.precision, cfg.amp, device), info)
    learner = build_learner(cfg, data, model, steps_per_epoch(len(batches), cfg.accumulate), hw)
    learner.pretrained = pretrained
    feed = Feed(data, batches, get_spec(cfg.augment, cfg.flips))
    clock = Clock(parse_duration(cfg.time_budget) if cfg.time_budget else None)
    run = Run(cfg, learner, feed, hw, Output(run_dir, log), clock)
    if resume is not None:
        run.state = restore(learner, resume)
        clock.before = run.state.elapsed
        log.truncate_after(run.state.step)
        if resume.get("score", {}).get("name", "dice_fg") != run.choice.name:  # the best so far was another score
            run.state.best = run.state.peak = -math.inf
            run.state.peak_counts, run.state.rounds_since_best = None, 0
    return run


def build_learner(cfg: TrainConfig, data: Dataset, model: nn.Module, epoch_steps: int, hw: Hardware) -> Learner:
    """The model's step wrappers (DDP, torch.compile), optimizer, schedule, grad scaler, loss and EMA."""
    device = hw.device
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if hw.dist.enabled
        else model
    )
    compiled = bool(cfg.compile or (cfg.compile is None and device.type == "cuda"))
    if compiled:
        net = torch.compile(net)
    optimizer = build_optimizer(
        cfg.optimizer, model, cfg.learning_rate, cfg.weight_decay, cfg.momentum, device, cfg.encoder_lr_scale
    )
    steps = cfg.max_steps or cfg.epochs * epoch_steps
    schedule = Schedule(optimizer, cfg.scheduler, cfg.learning_rate, steps, cfg.warmup_steps)
    # On GPUs the scaler also skips non-finite steps without a host sync (fused optimizers read its flag).
    scaler = torch.amp.GradScaler(device.type, enabled=hw.dtype == torch.float16 or device.type == "cuda")
    return Learner(
        model,
        net,
        optimizer,
        schedule,
        scaler,
        build_loss(cfg.loss, class_weights(cfg.class_weights, data)),
        RunningStats(model),
        EMA(model, cfg.ema) if cfg.ema else None,
        compile_pending=compiled,
    )


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (the last group may be shorter)."""
    return math.ceil(batches / accumulate)

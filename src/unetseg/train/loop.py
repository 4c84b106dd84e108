"""The training loop: build -> (resume) -> epochs of steps with validation rounds -> checkpoints.

``fit`` only sequences; each stage is a named helper.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from unetseg.config import TrainConfig, parse_duration, to_dict
from unetseg.core import distributed
from unetseg.core.checkpoint import load_checkpoint, load_weights
from unetseg.core.device import autocast, choose_dtype, resolve_device, standardize, to_unit
from unetseg.data.augment import augment_batch, get_spec
from unetseg.data.prepare import Dataset, class_frequencies, prepare_for
from unetseg.data.sampler import TrainBatches, prefetch
from unetseg.errors import UserError
from unetseg.evaluation.scoring import device_batches, evaluate
from unetseg.models import create_model
from unetseg.tracking.runlog import RunLog
from unetseg.train.ema import EMA
from unetseg.train.losses import build_loss
from unetseg.train.optim import Schedule, build_optimizer
from unetseg.train.signals import StopSignal
from unetseg.train.state import Run, restore, save
from unetseg.train.summary import gallery, report_end, report_round, summary


class StopTraining(Exception):
    """A stopping rule fired; carries the reason and the exit status."""

    def __init__(self, reason: str, exit_code: int = 0) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


def make_run_dir(cfg: TrainConfig, resuming: bool, is_main: bool) -> Path:
    """The run directory; an existing, non-empty one is used only with --resume or --overwrite."""
    path = Path(cfg.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if is_main:
        if path.exists() and any(path.iterdir()) and not (resuming or cfg.overwrite):
            raise UserError(
                f"--out {path}: run directory exists and is not empty; pass --resume {path} to continue it, "
                "--overwrite to write into it, or another --out"
            )
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


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


def build_model(cfg: TrainConfig, data: Dataset, device: torch.device, info: distributed.DistInfo) -> nn.Module:
    out_channels = 1 if cfg.classes == 1 else data.class_map.num_classes
    model = create_model(
        cfg.model,
        trainable=True,
        n_channels=data.channels,
        n_classes=out_channels,
        bilinear=cfg.bilinear,
        width=cfg.width,
        checkpointing=cfg.checkpointing,
    )
    if cfg.load:
        load_weights(model, load_checkpoint(cfg.load)["state_dict"], cfg.load)
    if cfg.sync_bn and info.enabled:
        if device.type != "cuda":
            raise UserError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU); drop it")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)


def build_run(cfg: TrainConfig, resume: dict | None) -> Run:
    """Data, model, optimizer, schedule and state, restored from ``resume`` when given."""
    device = resolve_device(cfg.device)
    info = distributed.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    run_dir = make_run_dir(cfg, resume is not None, info.is_main)
    log = RunLog(run_dir if info.is_main else None, cfg.quiet or not info.is_main, cfg.logger, cfg.log_format)
    if info.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    seed_everything(cfg.seed, cfg.deterministic, device)
    with distributed.main_first(info):  # one process scans and builds the data cache; the others then read it
        data = prepare_for(cfg, fold=(cfg.fold, cfg.folds) if cfg.folds and cfg.fold is not None else None)
    if resume is not None:
        data.norm = resume["norm"]  # the original run's statistics, whatever the data says now
    model = build_model(cfg, data, device, info)
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )
    compiled = bool(cfg.compile or (cfg.compile is None and device.type == "cuda"))
    if compiled:
        net = torch.compile(net)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.learning_rate, cfg.weight_decay, cfg.momentum, device)
    batches = TrainBatches(
        data.train, cfg.batch_size, patch_shape(cfg, data), cfg.seed, info.rank, info.world, cfg.foreground_crops
    )
    steps_per_epoch = math.ceil(len(batches) / cfg.accumulate)
    schedule = Schedule(
        optimizer, cfg.scheduler, cfg.learning_rate, cfg.max_steps or cfg.epochs * steps_per_epoch, cfg.warmup_steps
    )
    dtype = choose_dtype(cfg.precision, cfg.amp, device)
    # On GPUs the scaler also skips non-finite steps without a host sync (fused optimizers read its flag).
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 or device.type == "cuda")
    ema = EMA(model, cfg.ema) if cfg.ema else None
    run = Run(cfg, run_dir, log, data, model, net, optimizer, schedule, scaler, batches, device, dtype, info, ema)
    run.compile_pending = compiled
    run.augment = get_spec(cfg.augment)
    run.loss_fn = build_loss(cfg.loss, class_weights(cfg.class_weights, data))
    if resume is not None:
        restore(run, resume)
        log.truncate_after(run.state.step)
    return run


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


def train_step(run: Run, images: torch.Tensor, masks: torch.Tensor, group: int, last: bool) -> tuple:
    """Forward and backward one batch; on the last batch of an accumulation group, the optimizer step.

    Returns (loss, bad) as device tensors; ``bad`` is None between optimizer steps.
    """
    cfg, state = run.cfg, run.state
    if state.batch % cfg.accumulate == 0:
        # Cleared here, not after the step: the last step's gradients stay readable for the histograms that
        # loggers draw at validation rounds, at no cost (they are freed before this forward, as before).
        run.optimizer.zero_grad(set_to_none=True)
    x = to_unit(images, run.data.norm, run.device)
    y = masks.to(run.device, non_blocking=True).long()
    if run.augment is not None:
        seed = cfg.seed * 1_000_003 + state.epoch * 100_003 + state.batch
        offset = run.dist.rank * run.batches.batch_size
        x, y = augment_batch(x, y, seed, offset, run.batches.global_batch, run.augment)
    x = standardize(x, run.data.norm, cfg.channels_last)
    ddp = getattr(run.net, "_orig_mod", run.net)  # torch.compile wraps the DDP module
    sync = last or not isinstance(ddp, DistributedDataParallel)
    with ddp.no_sync() if not sync else contextlib.nullcontext(), autocast(run.device, run.dtype):
        logits = run.net(x)
        loss = run.loss_fn(logits, y)
    run.scaler.scale(loss / group).backward()
    if not last:
        return loss.detach(), None
    budget = parse_duration(cfg.time_budget) if cfg.time_budget else math.inf
    run.schedule.set_step(state.step, run.elapsed() / budget)
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    bad = ~torch.isfinite(norm)
    if run.scaler.is_enabled():
        run.scaler.step(run.optimizer)  # skips non-finite steps itself
        run.scaler.update()
    elif not bad.item():  # host sync; only on the CPU path, where it costs nothing
        run.optimizer.step()
    if run.ema:
        run.ema.update(run.model)
    state.step += 1
    return loss.detach(), bad


def compiled_step(run: Run, images: torch.Tensor, masks: torch.Tensor, group: int, last: bool) -> tuple:
    """The first compiled step compiles: time it, and fall back to eager mode if compilation fails."""
    started = time.monotonic()
    try:
        result = train_step(run, images, masks, group, last)
    except Exception as err:  # inductor/dynamo failures come in many types
        run.log.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); continuing without it")
        run.net, run.compile_pending = run.net._orig_mod, False
        run.optimizer.zero_grad(set_to_none=True)
        return train_step(run, images, masks, group, last)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    run.log.info(f"  compile     first step with torch.compile took {time.monotonic() - started:.1f} s")
    run.compile_pending = False
    return result


class Progress:
    """Loss and throughput accumulated on the device between reads (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()
        self.bad_total = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_streak = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Start a new window (each validation round reports its own window)."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.batches, self.images, self.tick = 0, 0, time.monotonic()

    def add(self, loss: torch.Tensor, bad: torch.Tensor | None, images: int) -> None:
        self.loss_sum += torch.nan_to_num(loss.float(), nan=0.0, posinf=0.0)
        self.batches, self.images = self.batches + 1, self.images + images
        if bad is not None:
            self.bad_total += bad
            self.bad_streak.mul_(bad).add_(bad)  # consecutive count: reset to 0 by a good step

    def read(self) -> dict:
        """Host values (one sync): mean loss and img/s since the window began."""
        return {
            "train_loss": self.loss_sum.item() / max(self.batches, 1),
            "img_s": self.images / max(time.monotonic() - self.tick, 1e-9),
        }


def validation_points(steps: int, rounds: int) -> set[int]:
    """Batch indices after which to validate: ``rounds`` evenly spaced, always including the epoch's last."""
    rounds = min(rounds, steps)
    return {round((k + 1) * steps / rounds) - 1 for k in range(rounds)}


def validate(run: Run) -> dict:
    """One validation round on every rank (images sharded); returns the row, with the best checkpoint saved."""
    cfg, state = run.cfg, run.state
    started = time.monotonic()
    with run.ema.applied(run.model) if run.ema else contextlib.nullcontext():
        if run.val_batches is None and run.device.type == "cuda":
            run.val_batches = device_batches(run.data.val, cfg.val_batch_size, run.device, run.dist) or []
        result = evaluate(
            run.model,
            run.data.val,
            run.data.norm,
            run.data.class_map.num_classes,
            run.device,
            run.dtype,
            cfg.val_batch_size,
            cfg.channels_last,
            dist_info=run.dist,
            batches=run.val_batches or None,
        )
        score = result["dice_fg"]
        run.schedule.observe(score)
        improved = not math.isnan(score) and score > state.best
        state.rounds_since_best = 0 if improved else state.rounds_since_best + 1
        if improved:
            state.best, state.best_step = score, state.step
            save(run, "best.pt", with_train_state=False)
        panels = gallery(run) if run.dist.is_main and (improved or run.log.wants_images) else None
    names = run.data.class_map.names
    row = {
        "step": state.step,
        "epoch": state.epoch + 1,
        "lr": run.optimizer.param_groups[0]["lr"],
        "dice_fg": score,
        "iou_fg": result["iou_fg"],
    }
    row |= {f"dice_{n}": d for n, d in zip(names, result["dice"])}
    row |= {f"iou_{n}": d for n, d in zip(names, result["iou"])}
    run.val_cost = time.monotonic() - started
    row |= {"val_s": run.val_cost, "elapsed_s": run.elapsed()}
    return row | {"best": state.best, "improved": improved, "panels": panels}


def check_limits(run: Run, stop: StopSignal, progress: Progress, read_now: bool) -> None:
    """Stopping rules, checked after every optimizer step; device counters are read only when ``read_now``."""
    cfg, state = run.cfg, run.state
    if read_now:
        state.skipped_steps, state.bad_streak = int(progress.bad_total), int(progress.bad_streak)
        if state.bad_streak >= cfg.max_bad_steps:
            raise StopTraining(
                f"training diverged: {state.bad_streak} consecutive steps had a non-finite loss or gradient; "
                "try a lower -l/--learning-rate, --grad-clip 1, or --precision fp32 (best.pt is intact)",
                exit_code=2,
            )
        if distributed.any_rank(stop.received is not None, run.dist, run.device):
            stop.received = stop.received or 15
            raise StopTraining("interrupted", exit_code=stop.exit_code)
    if cfg.max_steps and state.step >= cfg.max_steps:
        raise StopTraining(f"reached --max-steps {cfg.max_steps}")
    if cfg.time_budget:
        # Leave room for the final validation and checkpoint inside the budget. Processes' clocks differ a little:
        # under multi-process training they decide together, so all stop after the same step.
        over = run.elapsed() + run.val_cost >= parse_duration(cfg.time_budget)
        if run.dist.enabled:
            over = read_now and distributed.any_rank(over, run.dist, run.device)
        if over:
            raise StopTraining(f"reached --time-budget {cfg.time_budget}")
    if cfg.patience and state.rounds_since_best >= cfg.patience:
        raise StopTraining(f"early stopping: no improvement in {cfg.patience} validation rounds")


def train_one_epoch(run: Run, stop: StopSignal, progress: Progress) -> None:
    """Steps over one epoch (from the saved batch on a resume), with validation rounds at fixed points."""
    cfg, state, batches = run.cfg, run.state, run.batches
    validating = (state.epoch + 1) % cfg.val_every == 0 or state.epoch + 1 == cfg.epochs
    points = validation_points(len(batches), cfg.val_rounds) if validating else set()
    run.model.train()
    bar = tqdm(
        total=len(batches) * batches.global_batch,
        initial=state.batch * batches.global_batch,
        desc=f"epoch {state.epoch + 1}" + ("" if cfg.time_budget else f"/{cfg.epochs}"),
        unit="img",
        disable=not run.log.bars,
        leave=False,
    )
    source = batches.epoch(state.epoch, state.batch)
    if run.device.type == "cuda":
        source = prefetch(source, pin=True)
    for images, masks in source:
        index = state.batch
        group_start = index - index % cfg.accumulate
        group = min(cfg.accumulate, len(batches) - group_start)
        last = index + 1 == group_start + group
        loss, bad = (
            compiled_step(run, images, masks, group, last)
            if run.compile_pending
            else train_step(run, images, masks, group, last)
        )
        state.batch += 1
        progress.add(loss, bad, len(images) * run.dist.world)
        bar.update(len(images) * run.dist.world)
        if not last:
            continue
        read_now = state.step % cfg.log_every == 0 or index in points or stop.received is not None
        if read_now:
            values = progress.read()
            bar.set_postfix(loss=f"{values['train_loss']:.4f}", img_s=f"{values['img_s']:.1f}")
            run.log.scalars(state.step, values | {"lr": run.optimizer.param_groups[0]["lr"]})
        if index in points and run.data.val:
            report_round(run, validate(run) | progress.read())
            run.last_val_step = state.step
            progress.reset()
        if cfg.save_every and state.step % cfg.save_every == 0:
            save(run, "last.pt")
        check_limits(run, stop, progress, read_now or run.device.type == "cpu")
    bar.close()


def run_epochs(run: Run, stop: StopSignal, progress: Progress) -> None:
    """Epoch after epoch, with last.pt (and epoch_NNN.pt) at the end of each."""
    cfg, state = run.cfg, run.state
    while state.epoch < cfg.epochs:
        train_one_epoch(run, stop, progress)
        state.epoch, state.batch = state.epoch + 1, 0
        save(run, "last.pt", *([f"epoch_{state.epoch:03d}.pt"] if cfg.save_epochs else []))
        if not run.data.val:
            state.best_step = state.step
            save(run, "best.pt", with_train_state=False)


def fit(cfg: TrainConfig, resume: dict | None = None, started: float | None = None) -> dict:
    """Train a model; returns the best score, the run directory and the exit status.

    A time budget covers set-up (data decoding, model build) too, counted from ``started`` (``time.monotonic()``)
    when given: the command passes the moment it began, so that planning counts as well.
    """
    started = time.monotonic() if started is None else started
    run = build_run(cfg, resume)
    summary(run)
    stop, progress = StopSignal(), Progress(run.device)
    progress.bad_total.fill_(run.state.skipped_steps)
    progress.bad_streak.fill_(run.state.bad_streak)
    run.started, run.last_val_step = started, run.state.step
    reason, code = "finished all epochs", 0
    with stop.installed():
        try:
            run_epochs(run, stop, progress)
        except StopTraining as stopped:
            reason, code = str(stopped), stopped.exit_code
            if code == 0 and run.data.val and run.last_val_step != run.state.step:
                report_round(run, validate(run) | progress.read())  # a last round for the final weights
            save(run, "last.pt")
        except torch.OutOfMemoryError:
            raise UserError(
                f"out of memory on {run.device} with batch {run.batches.batch_size} and patch "
                f"{run.batches.patch[0]}x{run.batches.patch[1]}; try a smaller -b/--batch-size, --amp, a smaller "
                "--patch-size, or --checkpointing"
            ) from None
    return finish(run, reason, code)


def finish(run: Run, reason: str, code: int) -> dict:
    """Final summary lines, and what the caller needs."""
    run.writer.close()  # every checkpoint on disk before the run is reported finished
    run.state.elapsed = run.elapsed()
    best = run.dir / "checkpoints" / "best.pt"
    report_end(run, reason, code, best)
    run.log.close()
    distributed.cleanup(run.dist, finished=True)
    return {
        "best_dice_fg": run.state.best,
        "best_step": run.state.best_step,
        "run_dir": str(run.dir),
        "best_checkpoint": str(best),
        "steps": run.state.step,
        "skipped_steps": run.state.skipped_steps,
        "reason": reason,
        "exit_code": code,
    }

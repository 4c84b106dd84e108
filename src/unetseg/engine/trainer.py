"""The training loop: build -> (resume) -> epochs of steps with validation rounds -> checkpoints.

``fit`` only sequences; each stage is a named helper.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from unetseg.config import TrainConfig, parse_duration, to_dict
from unetseg.data.dataset import TrainBatches
from unetseg.data.prepare import Dataset, class_frequencies, prepare
from unetseg.engine.checkpoint import FORMAT, VERSION, load_checkpoint, load_weights, save_atomic
from unetseg.engine.evaluation import evaluate
from unetseg.engine.optim import Schedule, build_optimizer
from unetseg.engine.precision import autocast, choose_dtype, normalize, resolve_device
from unetseg.errors import UserError
from unetseg.loggers import RunLog
from unetseg.losses import get_loss
from unetseg.models import create_model, model_spec
from unetseg.transforms import augment_batch


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint so a resume continues exactly."""

    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken
    best: float = -math.inf  # best validation foreground Dice
    best_step: int = -1
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    elapsed: float = 0.0  # training seconds spent before this process started


@dataclass
class Run:
    """Everything the loop works on."""

    cfg: TrainConfig
    dir: Path
    log: RunLog
    data: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    batches: TrainBatches
    device: torch.device
    dtype: torch.dtype
    state: TrainState
    started: float = field(default_factory=time.monotonic)  # when this process began training

    def elapsed(self) -> float:
        """Training seconds across resumes."""
        return self.state.elapsed + time.monotonic() - self.started


def make_run_dir(cfg: TrainConfig, resuming: bool) -> Path:
    """The run directory; an existing, non-empty one is used only with --resume or --overwrite."""
    path = Path(cfg.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
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


def build_run(cfg: TrainConfig, resume: dict | None) -> Run:
    """Data, model, optimizer, schedule and state, restored from ``resume`` when given."""
    run_dir = make_run_dir(cfg, resume is not None)
    log = RunLog(run_dir, cfg.quiet, cfg.logger)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device = resolve_device(cfg.device)
    dtype = choose_dtype(cfg.precision, cfg.amp, device)
    seed_everything(cfg.seed)
    data = prepare(
        cfg.data,
        cfg.images,
        cfg.masks,
        cfg.val_data,
        cfg.classes,
        cfg.channels,
        cfg.scale,
        cfg.validation,
        cfg.seed,
        cfg.workers,
    )
    if resume is not None:
        data.norm = resume["norm"]  # statistics of the original run, whatever the data now says
    out_channels = 1 if cfg.classes == 1 else data.class_map.num_classes
    model = create_model(
        cfg.model,
        n_channels=data.channels,
        n_classes=out_channels,
        bilinear=cfg.bilinear,
        width=cfg.width,
        checkpointing=cfg.checkpointing,
    )
    if cfg.load and resume is None:
        load_weights(model, load_checkpoint(cfg.load)["state_dict"], cfg.load)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.learning_rate, cfg.weight_decay, cfg.momentum, device)
    batches = TrainBatches(data.train, cfg.batch_size, patch_shape(cfg, data), cfg.seed)
    total = cfg.max_steps or cfg.epochs * len(batches)
    schedule = Schedule(optimizer, cfg.scheduler, cfg.learning_rate, total, cfg.warmup_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run = Run(cfg, run_dir, log, data, model, optimizer, schedule, scaler, batches, device, dtype, TrainState())
    if resume is not None:
        restore(run, resume)
    return run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def restore(run: Run, ckpt: dict) -> None:
    """Load weights, optimizer, schedule, scaler, RNG and loop position from a checkpoint."""
    load_weights(run.model, ckpt["state_dict"], "resume checkpoint")
    train = ckpt.get("train_state")
    if not train:
        raise UserError(
            "--resume: this checkpoint has no training state (a weights-only file); "
            "resume from the run's checkpoints/last.pt, or start a new run with -f/--load"
        )
    run.optimizer.load_state_dict(train["optimizer"])
    run.schedule.load_state_dict(train["schedule"])
    run.scaler.load_state_dict(train["scaler"])
    run.state = TrainState(**train["state"])
    torch.set_rng_state(train["rng"]["torch"])
    if torch.cuda.is_available() and train["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(train["rng"]["cuda"])


def checkpoint_dict(run: Run, with_train_state: bool = True) -> dict:
    """The self-describing checkpoint (see DESIGN.md)."""
    state_dict = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "source": "unetseg",
        "model": model_spec(run.model),
        "state_dict": state_dict,
        "channels": run.data.channels,
        "norm": run.data.norm,
        "class_map": run.data.class_map.to_dict(),
        "scale": run.cfg.scale,
        "config": to_dict(run.cfg),
        "score": {"dice_fg": run.state.best, "step": run.state.best_step},
    }
    if with_train_state:
        ckpt["train_state"] = {
            "optimizer": run.optimizer.state_dict(),
            "schedule": run.schedule.state_dict(),
            "scaler": run.scaler.state_dict(),
            "state": asdict(run.state) | {"elapsed": run.elapsed()},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
    return ckpt


def train_step(run: Run, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor | None:
    """One optimizer step; returns the loss (on the device), or None when the step was skipped as non-finite."""
    cfg, model = run.cfg, run.model
    x = normalize(images, run.data.norm, run.device, cfg.channels_last)
    y = masks.to(run.device, non_blocking=True).long()
    if cfg.augment != "none":
        x, y = augment_batch(x, y, seed=cfg.seed * 1_000_003 + run.state.step)
    run.schedule.set_step(run.state.step)
    with autocast(run.device, run.dtype):
        logits = model(x)
    loss = get_loss(cfg.loss)(logits, y)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    finite = bool(torch.isfinite(norm) & torch.isfinite(loss))  # host sync: one per step
    if run.scaler.is_enabled():
        run.scaler.step(run.optimizer)  # the scaler skips non-finite steps itself and lowers its scale
        run.scaler.update()
    elif finite:
        run.optimizer.step()
    run.state.step += 1
    if not finite:
        run.state.skipped_steps += 1
        return None
    return loss.detach()


def validate(run: Run) -> dict:
    """One validation round: scores, a metrics.csv row, the schedule, and best.pt when it improved."""
    cfg, state = run.cfg, run.state
    if not run.data.val:
        return {}
    result = evaluate(
        run.model,
        run.data.val,
        run.data.norm,
        run.data.class_map.num_classes,
        run.device,
        run.dtype,
        cfg.val_batch_size,
        cfg.channels_last,
    )
    score = result["dice_fg"]
    run.schedule.observe(score)
    improved = not math.isnan(score) and score > state.best
    if improved:
        state.best, state.best_step = score, state.step
        save_atomic(checkpoint_dict(run, with_train_state=False), run.dir / "checkpoints" / "best.pt")
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
    return row | {"best": state.best, "improved": improved}


def save_last(run: Run, epoch_done: bool = False) -> None:
    ckpt = checkpoint_dict(run)
    save_atomic(ckpt, run.dir / "checkpoints" / "last.pt")
    if epoch_done and run.cfg.save_epochs:
        save_atomic(ckpt, run.dir / "checkpoints" / f"epoch_{run.state.epoch:03d}.pt")


def validation_points(steps: int, rounds: int) -> set[int]:
    """Batch indices after which to validate: ``rounds`` evenly spaced, always including the epoch's last."""
    rounds = min(rounds, steps)
    return {round((k + 1) * steps / rounds) - 1 for k in range(rounds)}


class StopTraining(Exception):
    """Raised inside the loop when a stopping rule fires; carries the reason."""


def check_limits(run: Run) -> None:
    """Stopping rules checked after every step."""
    cfg, state = run.cfg, run.state
    if cfg.max_steps and state.step >= cfg.max_steps:
        raise StopTraining(f"reached --max-steps {cfg.max_steps}")
    if cfg.time_budget and run.elapsed() >= parse_duration(cfg.time_budget):
        raise StopTraining(f"reached --time-budget {cfg.time_budget}")
    if run.state.skipped_steps and run.state.skipped_steps >= cfg.max_bad_steps:
        raise StopTraining(
            f"{state.skipped_steps} steps had a non-finite loss or gradient; try a lower "
            "-l/--learning-rate, --grad-clip 1, or --precision fp32"
        )


def train_one_epoch(run: Run) -> None:
    """Steps over one epoch (from the saved batch on a resume), with validation rounds at fixed points."""
    cfg, state, batches = run.cfg, run.state, run.batches
    points = validation_points(len(batches), cfg.val_rounds)
    run.model.train()
    bar = tqdm(
        total=len(batches) * batches.batch_size,
        initial=state.batch * batches.batch_size,
        desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
        unit="img",
        disable=cfg.quiet,
        leave=False,
    )
    loss_sum, loss_count, tick, tick_images = None, 0, time.monotonic(), 0
    for images, masks in batches.epoch(state.epoch, state.batch):
        loss = train_step(run, images, masks)
        state.batch += 1
        bar.update(len(images))
        tick_images += len(images)
        if loss is not None:
            loss_sum, loss_count = (loss if loss_sum is None else loss_sum + loss), loss_count + 1
        if state.batch % 10 == 0 or state.batch - 1 in points:  # read the loss only now: no sync per step
            rate = tick_images / max(time.monotonic() - tick, 1e-9)
            bar.set_postfix(
                loss=f"{(loss_sum / max(loss_count, 1)).item():.4f}" if loss_sum is not None else "nan",
                img_s=f"{rate:.1f}",
            )
        if state.batch - 1 in points:
            row = validate(run)
            if row:
                row |= {
                    "train_loss": (loss_sum / max(loss_count, 1)).item() if loss_sum is not None else math.nan,
                    "img_s": tick_images / max(time.monotonic() - tick, 1e-9),
                }
                report_round(run, row)
            loss_sum, loss_count, tick, tick_images = None, 0, time.monotonic(), 0
        if cfg.save_every and state.step % cfg.save_every == 0:
            save_last(run)
        check_limits(run)
    bar.close()


def report_round(run: Run, row: dict) -> None:
    """One console line per validation round, and its metrics.csv row."""
    improved = row.pop("improved")
    names = run.data.class_map.names
    per_class = " ".join(f"{n}={row.get(f'dice_{n}', math.nan):.4f}" for n in names[1:])
    run.log.info(
        f"step {row['step']:>6} epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
        f"val dice_fg {row['dice_fg']:.4f} ({per_class})  lr {row['lr']:.2e}  "
        f"{row['img_s']:.1f} img/s{'  *best' if improved else ''}"
    )
    run.log.metrics(row)


def summary(run: Run) -> None:
    """The start-up summary of the settings, like Pytorch-UNet's."""
    cfg, data = run.cfg, run.data
    freq = class_frequencies(data.train, data.class_map.num_classes)
    classes = ", ".join(
        f"{n} (value {v}, {100 * f:.1f}%)" for n, v, f in zip(data.class_map.names, data.class_map.values, freq)
    )
    params = sum(p.numel() for p in run.model.parameters())
    lines = [
        f"unetseg train -> {run.dir}",
        f"  data        {data.root}: {len(data.train)} train, {len(data.val)} validation images, "
        f"{data.channels} channel(s), scale {cfg.scale}",
        f"  classes     {classes}",
        f"  model       {cfg.model} width {cfg.width}{' bilinear' if cfg.bilinear else ''}, "
        f"{params / 1e6:.2f} M parameters, {run.model.outc.conv.out_channels} output channel(s)",
        f"  device      {run.device}, precision {str(run.dtype).replace('torch.', '')}"
        f"{', grad scaler' if run.scaler.is_enabled() else ''}",
        f"  training    {cfg.epochs} epochs x {len(run.batches)} steps, batch {run.batches.batch_size}, patch "
        f"{run.batches.patch[0]}x{run.batches.patch[1]}, {cfg.optimizer} lr {cfg.learning_rate:g} "
        f"({cfg.scheduler}, {cfg.warmup_steps} warm-up steps), loss {cfg.loss}, clip {cfg.grad_clip:g}, "
        f"augment {cfg.augment}",
        f"  validation  {cfg.val_rounds} round(s) per epoch, checkpoints every epoch"
        f"{f' and every {cfg.save_every} steps' if cfg.save_every else ''}",
    ]
    for note in data.notes:
        lines.append(f"  note        {note}")
    for line in lines:
        run.log.info(line)


def fit(cfg: TrainConfig, resume: dict | None = None) -> dict:
    """Train a model; returns the best score and the path of best.pt."""
    run = build_run(cfg, resume)
    summary(run)
    if not run.data.val:
        run.log.warn("no validation images (-v 0 and no --val-data): best.pt is the last epoch's weights")
    run.started, reason = time.monotonic(), "finished all epochs"
    try:
        while run.state.epoch < cfg.epochs:
            train_one_epoch(run)
            run.state.epoch, run.state.batch = run.state.epoch + 1, 0
            save_last(run, epoch_done=True)
            if not run.data.val:
                save_atomic(checkpoint_dict(run, with_train_state=False), run.dir / "checkpoints" / "best.pt")
    except StopTraining as stop:
        reason = str(stop)
        if run.state.batch and run.data.val and run.state.best_step != run.state.step:
            report_final_round(run)
        save_last(run)
    run.state.elapsed = run.elapsed()
    best = run.dir / "checkpoints" / "best.pt"
    run.log.info(
        f"done ({reason}): best validation dice_fg {run.state.best:.4f} at step {run.state.best_step}, "
        f"{run.state.elapsed:.0f} s"
    )
    run.log.info(f"  best model  {best}")
    run.log.info(f"  predict     unetseg predict -m {best} -i IMAGES -o OUT")
    run.log.close()
    return {
        "best_dice_fg": run.state.best,
        "best_step": run.state.best_step,
        "run_dir": str(run.dir),
        "best_checkpoint": str(best),
        "steps": run.state.step,
        "reason": reason,
    }


def report_final_round(run: Run) -> None:
    """A last validation when a stopping rule fired between rounds."""
    row = validate(run)
    if row:
        report_round(run, row | {"train_loss": math.nan, "img_s": math.nan})

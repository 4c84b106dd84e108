"""What a run is made of, and how it goes into and comes out of a checkpoint."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from unetseg.config import TrainConfig, to_dict
from unetseg.core.checkpoint import FORMAT, VERSION, CheckpointWriter, load_weights
from unetseg.core.distributed import DistInfo
from unetseg.data.augment import AugmentSpec
from unetseg.data.prepare import Dataset
from unetseg.data.sampler import TrainBatches
from unetseg.errors import UserError
from unetseg.evaluation.choice import choose_score
from unetseg.models import model_spec
from unetseg.tracking.runlog import RunLog
from unetseg.training.ema import EMA
from unetseg.training.optim import Schedule


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint so a resume continues exactly."""

    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken
    best: float = -math.inf  # best validation score (foreground Dice or mIoU: evaluation.choice)
    best_step: int = -1
    rounds_since_best: int = 0  # validation rounds without improvement (early stopping)
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient, in total
    bad_streak: int = 0  # consecutive skipped steps
    elapsed: float = 0.0  # training seconds spent before this process started


@dataclass
class Run:
    """Everything the loop works on."""

    cfg: TrainConfig
    dir: Path
    log: RunLog
    data: Dataset
    model: nn.Module  # the raw model (what checkpoints hold)
    net: nn.Module  # what the step calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    batches: TrainBatches
    device: torch.device
    dtype: torch.dtype
    dist: DistInfo
    ema: EMA | None = None
    state: TrainState = field(default_factory=TrainState)
    started: float = field(default_factory=time.monotonic)  # when this process began training
    val_cost: float = 0.0  # seconds the last validation round took (reserved inside a time budget)
    last_val_step: int = -1  # step of the last validation round
    augment: AugmentSpec | None = None  # the --augment preset
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    val_batches: list | None = None  # validation batches resident on the GPU (made at the first round)
    compile_pending: bool = False  # net is a torch.compile wrapper whose first step (the compile) is to come
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # checkpoints go to disk in the background

    def elapsed(self) -> float:
        """Training seconds across resumes."""
        return self.state.elapsed + time.monotonic() - self.started


def _detached(state: dict) -> dict:
    """Contiguous tensors outside autograd; the checkpoint writer copies them to host memory."""
    return {k: v.detach().contiguous() for k, v in state.items()}


def checkpoint_dict(run: Run, with_train_state: bool = True) -> dict:
    """The self-describing checkpoint (see DESIGN.md); weights are the EMA's when it is on."""
    model = _detached(run.model.state_dict()) if with_train_state or not run.ema else None
    weights = _detached(run.ema.shadow) if run.ema else model  # without EMA the same tensors: copied, stored once
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "source": "unetseg",
        "model": model_spec(run.model),
        "state_dict": weights,
        "channels": run.data.channels,
        "norm": run.data.norm,
        "class_map": run.data.class_map.to_dict(),
        "scale": run.cfg.scale,
        "config": to_dict(run.cfg),
        "score": choose_score(run.data.class_map, run.cfg.score).record(run.state.best, run.state.best_step),
    }
    if with_train_state:
        ckpt["train_state"] = {
            "model": model,
            "ema": run.ema.state_dict() if run.ema else None,
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


def restore(run: Run, ckpt: dict) -> None:
    """Load weights, optimizer, schedule, scaler, EMA, RNG and loop position from a checkpoint."""
    train = ckpt.get("train_state")
    if not train:
        raise UserError(
            "--resume: this checkpoint has no training state (a weights-only file such as best.pt); "
            "resume from the run's checkpoints/last.pt, or start a new run with -f/--load"
        )
    load_weights(run.model, train["model"], "resume checkpoint")
    run.optimizer.load_state_dict(train["optimizer"])
    run.schedule.load_state_dict(train["schedule"])
    run.scaler.load_state_dict(train["scaler"])
    if run.ema and train.get("ema"):
        run.ema.load_state_dict(train["ema"])
    run.state = TrainState(**train["state"])
    torch.set_rng_state(train["rng"]["torch"])
    if torch.cuda.is_available() and train["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(train["rng"]["cuda"])


def save(run: Run, *names: str, with_train_state: bool = True) -> None:
    """Write ``checkpoints/<name>`` for each name (one snapshot) atomically, in the background, on the main process."""
    if run.dist.is_main:
        folder = run.dir / "checkpoints"
        run.writer.write(checkpoint_dict(run, with_train_state), [folder / name for name in names])

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
from unetseg.core.checkpoint import CheckpointWriter, load_checkpoint, load_weights, make_checkpoint
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
from unetseg.training.rundir import RunLock


class StopTraining(Exception):
    """A stopping rule fired; carries the reason and the exit status."""

    def __init__(self, reason: str, exit_code: int = 0) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


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


class RunningStats:
    """BatchNorm's running statistics at the start of an accumulation group, put back when its step is skipped.

    A batch with a non-finite loss still updates running_mean/var in its forward (to NaN, for good) although the
    optimizer skips the step; this undoes that update too. Device-side, without a host sync: one ``cat`` to save,
    and ``cat``, ``where`` and one fused copy to restore, per optimizer step.
    """

    def __init__(self, model: nn.Module) -> None:
        self.tensors = [b for b in model.buffers() if b.is_floating_point()]
        self.saved: torch.Tensor | None = None

    def _flat(self) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in self.tensors])

    def save(self) -> None:
        if self.tensors:
            self.saved = self._flat()

    @torch.no_grad()
    def restore_if(self, bad: torch.Tensor) -> None:
        """Where ``bad`` (a device bool), put the saved statistics back; otherwise leave them, bit for bit."""
        if self.saved is None:
            return
        kept = torch.where(bad, self.saved, self._flat())
        torch._foreach_copy_(self.tensors, [v.view_as(t) for v, t in zip(kept.split(self.sizes), self.tensors)])

    @property
    def sizes(self) -> list[int]:
        return [t.numel() for t in self.tensors]


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
    pretrained: str | None = None  # the encoder's initial weights, when pretrained (--encoder-weights)
    compile_pending: bool = False  # net is a torch.compile wrapper whose first step (the compile) is to come
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # checkpoints go to disk in the background
    budget_s: float | None = None  # --time-budget in seconds (parsed once)
    lock: RunLock | None = None  # the run directory's lock (rank 0), released when the run ends
    notes: list[str] = field(default_factory=list)  # what setting up the run directory did, for the summary
    stats: RunningStats | None = None  # BatchNorm statistics guarded against skipped steps

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
    ckpt = make_checkpoint(
        model_spec(run.model),
        weights,
        run.data.channels,
        run.data.norm,
        run.data.class_map.to_dict(),
        run.cfg.scale,
        to_dict(run.cfg),
        score=choose_score(run.data.class_map, run.cfg.score).record(run.state.best, run.state.best_step),
    )
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


def load_resume(path: Path) -> dict:
    """The checkpoint ``--resume`` names; when it cannot be read, the advice says what does work."""
    try:
        return load_checkpoint(path)
    except UserError as err:
        if path.parent.name != "checkpoints":
            raise
        run_dir, best = path.parent.parent, path.parent / "best.pt"
        fresh = f"{run_dir}-restart"
        alternative = (
            f"start a new run from its best weights with: unetseg train --config {run_dir / 'config.yaml'} "
            f"-f {best} --out {fresh}"
            if best.is_file() and (run_dir / "config.yaml").is_file()
            else f"start a new run with -f/--load from another checkpoint, or --out {fresh}"
        )
        reason = str(err).split("; ")[0]  # without read_file's generic advice, which does not fit a resume
        raise UserError(f"--resume {path}: cannot resume: {reason}; {alternative}") from None


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


def weights_finite(run: Run) -> bool:
    """Whether every floating weight and buffer a checkpoint stores (the model's and the EMA's) is finite.

    One fused ``isfinite`` over the flattened tensors: one copy of the weights on the device and one host sync, paid
    at checkpoints and validation rounds only.
    """
    tensors = [v for v in run.model.state_dict().values() if v.is_floating_point()]
    if run.ema:
        tensors += [v for v in run.ema.shadow.values() if v.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.isfinite(torch.cat([t.detach().reshape(-1).float() for t in tensors])).all())


def diverged(run: Run, why: str) -> StopTraining:
    """The stop for a run whose numbers left the finite range; says truthfully what best.pt holds."""
    state = run.state
    if state.best_step >= 0:
        score = f" (dice_fg {state.best:.4f})" if math.isfinite(state.best) else ""
        kept = f"best.pt from step {state.best_step}{score} is intact"
    else:
        kept = "no best.pt was written: no validation round had finite weights"
    return StopTraining(
        f"training diverged: {why}; try a lower -l/--learning-rate, --grad-clip 1, or --precision fp32 ({kept})",
        exit_code=2,
    )


def save(run: Run, *names: str, with_train_state: bool = True) -> None:
    """Write ``checkpoints/<name>`` for each name (one snapshot) atomically, in the background, on the main process.

    Non-finite weights are never written (over a good file or at all): the run stops as diverged instead. Every
    process checks (the weights are the same on all of them), so that all stop together.
    """
    if not weights_finite(run):
        raise diverged(run, f"the weights became non-finite by step {run.state.step} (not saved)")
    if run.dist.is_main:
        folder = run.dir / "checkpoints"
        run.writer.write(checkpoint_dict(run, with_train_state), [folder / name for name in names])

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
from unetseg.evaluation.choice import ScoreChoice, choose_score
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
    # The highest score so far and its round's per-image counts. best.pt holds the latest round not measurably worse
    # than it (choice.as_good), so ``best`` may be below ``peak``; early stopping counts rounds since a new peak.
    peak: float = -math.inf
    peak_counts: torch.Tensor | None = None
    rounds_since_best: int = 0  # validation rounds without a new highest score (early stopping)
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
class Learner:
    """What training changes, and what a step changes it with."""

    model: nn.Module  # the raw model (what checkpoints hold)
    net: nn.Module  # what the step calls: the model, or its DDP and torch.compile wrappers
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    stats: RunningStats  # BatchNorm statistics guarded against skipped steps
    ema: EMA | None = None
    compile_pending: bool = False  # net is a torch.compile wrapper whose first step (the compile) is to come
    pretrained: str | None = None  # the encoder's initial weights, when pretrained (--encoder-weights)

    def weights_finite(self) -> bool:
        """Whether every floating weight and buffer a checkpoint stores (the model's and the EMA's) is finite.

        One fused ``isfinite`` over the flattened tensors: one copy of the weights on the device and one host
        sync, paid at checkpoints and validation rounds only.
        """
        tensors = [v for v in self.model.state_dict().values() if v.is_floating_point()]
        if self.ema:
            tensors += [v for v in self.ema.shadow.values() if v.is_floating_point()]
        if not tensors:
            return True
        return bool(torch.isfinite(torch.cat([t.detach().reshape(-1).float() for t in tensors])).all())


@dataclass
class Feed:
    """What the loop reads: the dataset, its training batches and augmentation."""

    data: Dataset
    batches: TrainBatches
    augment: AugmentSpec | None = None  # the --augment preset
    val_batches: list | None = None  # validation batches resident on the GPU (made at the first round)


@dataclass
class Hardware:
    """Where the run computes: the device, the autocast dtype, and the processes of a distributed run."""

    device: torch.device
    dtype: torch.dtype
    dist: DistInfo


@dataclass
class Clock:
    """Training time across resumes, the time budget, and the validation round it keeps room for."""

    budget_s: float | None = None  # --time-budget in seconds (parsed once)
    before: float = 0.0  # training seconds spent before this process started (from the resumed checkpoint)
    started: float = field(default_factory=time.monotonic)  # when this process began training
    val_cost: float = 0.0  # seconds the last validation round took (reserved inside a time budget)
    last_val_step: int = -1  # step of the last validation round

    def elapsed(self) -> float:
        """Training seconds across resumes."""
        return self.before + time.monotonic() - self.started

    def fraction(self) -> float:
        """The share of the time budget spent (0 without one): the schedule's clock."""
        return self.elapsed() / self.budget_s if self.budget_s else 0.0


@dataclass
class Output:
    """Where the run writes: its directory, log and checkpoint writer; the directory's lock."""

    dir: Path
    log: RunLog
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # checkpoints go to disk in the background
    lock: RunLock | None = None  # the run directory's lock (rank 0), released when the run ends
    notes: list[str] = field(default_factory=list)  # what setting up the run directory did, for the summary


@dataclass
class Run:
    """A run, by part: each helper takes the parts it reads (the loop's stages take the whole)."""

    cfg: TrainConfig
    learner: Learner
    feed: Feed
    hw: Hardware
    out: Output
    clock: Clock
    state: TrainState = field(default_factory=TrainState)

    @property
    def choice(self) -> ScoreChoice:
        """The validation score that ranks the rounds: foreground Dice, or mIoU when class 0 is a real class."""
        return choose_score(self.feed.data.class_map, self.cfg.score)


def _detached(state: dict) -> dict:
    """Contiguous tensors outside autograd; the checkpoint writer copies them to host memory."""
    return {k: v.detach().contiguous() for k, v in state.items()}


def checkpoint_dict(run: Run, with_train_state: bool = True) -> dict:
    """The self-describing checkpoint (see DESIGN.md); weights are the EMA's when it is on."""
    learner, data = run.learner, run.feed.data
    model = _detached(learner.model.state_dict()) if with_train_state or not learner.ema else None
    weights = _detached(learner.ema.shadow) if learner.ema else model  # without EMA the same tensors, stored once
    ckpt = make_checkpoint(
        model_spec(learner.model),
        weights,
        data.channels,
        data.norm,
        data.class_map.to_dict(),
        run.cfg.scale,
        to_dict(run.cfg),
        score=run.choice.record(run.state.best, run.state.best_step),
    )
    if with_train_state:
        ckpt["train_state"] = {
            "model": model,
            "ema": learner.ema.state_dict() if learner.ema else None,
            "optimizer": learner.optimizer.state_dict(),
            "schedule": learner.schedule.state_dict(),
            "scaler": learner.scaler.state_dict(),
            "state": asdict(run.state) | {"elapsed": run.clock.elapsed()},
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


def restore(learner: Learner, ckpt: dict) -> TrainState:
    """Load weights, optimizer, schedule, scaler, EMA and RNG from a checkpoint; return its loop position."""
    train = ckpt.get("train_state")
    if not train:
        raise UserError(
            "--resume: this checkpoint has no training state (a weights-only file such as best.pt); "
            "resume from the run's checkpoints/last.pt, or start a new run with -f/--load"
        )
    load_weights(learner.model, train["model"], "resume checkpoint")
    learner.optimizer.load_state_dict(train["optimizer"])
    learner.schedule.load_state_dict(train["schedule"])
    learner.scaler.load_state_dict(train["scaler"])
    if learner.ema and train.get("ema"):
        learner.ema.load_state_dict(train["ema"])
    torch.set_rng_state(train["rng"]["torch"])
    if torch.cuda.is_available() and train["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(train["rng"]["cuda"])
    state = TrainState(**train["state"])
    if "peak" not in train["state"]:  # a checkpoint from before the peak was kept: its best was the highest score
        state.peak = state.best
    return state


def diverged(state: TrainState, score: str, why: str) -> StopTraining:
    """The stop for a run whose numbers left the finite range; says truthfully what best.pt holds."""
    if state.best_step >= 0:
        shown = f" ({score} {state.best:.4f})" if math.isfinite(state.best) else ""
        kept = f"best.pt from step {state.best_step}{shown} is intact"
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
    if not run.learner.weights_finite():
        raise not_finite(run)
    if run.hw.dist.is_main:
        folder = run.out.dir / "checkpoints"
        run.out.writer.write(checkpoint_dict(run, with_train_state), [folder / name for name in names])


def not_finite(run: Run) -> StopTraining:
    """The stop for weights found non-finite (at a checkpoint or a validation round)."""
    return diverged(run.state, run.choice.name, f"the weights became non-finite by step {run.state.step} (not saved)")
